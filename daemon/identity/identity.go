// Package identity allocates the numeric identities the datapath matches
// peers by. An identity names a set of addresses that every policy treats
// alike: pods with the same namespace, namespace labels, pod labels and
// ipBlock membership; one ipBlock prefix; a node. Identities are local to a
// node's agent: packets never carry them.
//
// It imports no Kubernetes informers and no bpf: it is pure.
package identity

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/palisade-cni/palisade/daemon/statefile"
)

// Reserved identities; they equal the datapath's ID_* constants.
const (
	Any          uint32 = 0 // a wildcard peer in a rule
	Host         uint32 = 1 // the node the pod runs on
	World        uint32 = 2 // an address nobody described
	RemoteNode   uint32 = 3 // another node of the cluster
	FirstDynamic uint32 = 256
)

// Allocator hands out a stable number per key. It is safe for concurrent use
// and can be persisted, so that an agent restart keeps the numbers the
// datapath already holds.
type Allocator struct {
	mu   sync.Mutex
	ids  map[string]uint32
	next uint32
	// dirty is set when the table changed since it was last saved or
	// loaded, so that Save writes (and syncs) only what is new.
	dirty bool
	// forgets counts the Retain calls that forgot a key.
	forgets uint64
}

// NewAllocator returns an empty allocator.
func NewAllocator() *Allocator {
	return &Allocator{ids: map[string]uint32{}, next: FirstDynamic}
}

// ID returns the identity of key, allocating one the first time.
func (a *Allocator) ID(key string) uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.ids[key]; ok {
		return id
	}
	id := a.next
	a.next++
	a.ids[key] = id
	a.dirty = true
	return id
}

// Retain forgets every key in none of the keep sets, so that the table
// does not grow with every label set the cluster ever had. Numbers are
// never reused.
func (a *Allocator) Retain(keep ...map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	forgot := false
	for k := range a.ids {
		if !slices.ContainsFunc(keep, func(m map[string]bool) bool { return m[k] }) {
			delete(a.ids, k)
			forgot = true
		}
	}
	if forgot {
		a.dirty = true
		a.forgets++
	}
}

// Forgets counts the Retain calls that forgot a key. While it stays the
// same, every key the allocator held still has its number: a caller that
// kept keys with their numbers need not look them up again.
func (a *Allocator) Forgets() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.forgets
}

type persisted struct {
	Next uint32            `json:"next"`
	IDs  map[string]uint32 `json:"ids"`
}

// Save writes the table to path atomically, unless it is unchanged since
// the last Save or Load.
func (a *Allocator) Save(path string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.dirty {
		return nil
	}
	data, err := json.Marshal(persisted{Next: a.next, IDs: a.ids})
	if err != nil {
		return fmt.Errorf("encode identities: %w", err)
	}
	if err := statefile.Write(path, data); err != nil {
		return err
	}
	a.dirty = false
	return nil
}

// Load reads a table Save wrote; a missing file yields an empty allocator.
func Load(path string) (*Allocator, error) {
	a := NewAllocator()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read identities: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("decode identities in %s (delete the file to start afresh): %w", path, err)
	}
	if p.IDs != nil {
		a.ids = p.IDs
	}
	if p.Next > a.next {
		a.next = p.Next
	}
	return a, nil
}
