// Package endpoint keeps the registry of the node's local endpoints (one
// pod interface each), persisted in the agent's state directory so that a
// restarted agent knows every pod it protected.
package endpoint

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/statefile"
)

// Registry is the set of local endpoints. It is safe for concurrent use.
type Registry struct {
	mu   sync.Mutex
	path string
	eps  map[string]agentapi.Endpoint
}

// Open reads the registry persisted at path; a missing file is empty.
func Open(path string) (*Registry, error) {
	r := &Registry{path: path, eps: map[string]agentapi.Endpoint{}}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read endpoint registry: %w", err)
	}
	var eps []agentapi.Endpoint
	if err := json.Unmarshal(data, &eps); err != nil {
		return nil, fmt.Errorf("decode endpoint registry %s (move it away to start afresh; running pods are then adopted again only after their next CNI ADD): %w", path, err)
	}
	for _, ep := range eps {
		r.eps[ep.ID] = ep
	}
	return r, nil
}

// Put adds or replaces an endpoint and persists the registry.
func (r *Registry) Put(ep agentapi.Endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, had := r.eps[ep.ID]
	r.eps[ep.ID] = ep
	if err := r.saveLocked(); err != nil {
		if had {
			r.eps[ep.ID] = old
		} else {
			delete(r.eps, ep.ID)
		}
		return err
	}
	return nil
}

// Delete removes an endpoint and persists the registry. ok is false when it
// was not there.
func (r *Registry) Delete(id string) (ep agentapi.Endpoint, ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok = r.eps[id]
	if !ok {
		return ep, false, nil
	}
	delete(r.eps, id)
	if err := r.saveLocked(); err != nil {
		r.eps[id] = ep
		return ep, true, err
	}
	return ep, true, nil
}

// Get returns one endpoint.
func (r *Registry) Get(id string) (agentapi.Endpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok := r.eps[id]
	return ep, ok
}

// List returns every endpoint, sorted by ID.
func (r *Registry) List() []agentapi.Endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]agentapi.Endpoint, 0, len(r.eps))
	for _, ep := range r.eps {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (r *Registry) saveLocked() error {
	eps := make([]agentapi.Endpoint, 0, len(r.eps))
	for _, ep := range r.eps {
		eps = append(eps, ep)
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].ID < eps[j].ID })
	data, err := json.MarshalIndent(eps, "", "  ")
	if err != nil {
		return fmt.Errorf("encode endpoint registry: %w", err)
	}
	if err := statefile.Write(r.path, data); err != nil {
		return fmt.Errorf("persist endpoint registry: %w", err)
	}
	return nil
}
