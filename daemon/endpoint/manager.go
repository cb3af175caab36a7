package endpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// Programmer is the policy controller as the manager sees it: it writes an
// endpoint's policy into the maps and takes it out again.
type Programmer interface {
	// ProgramNew programs a registered endpoint on its own; done is false
	// when it cannot, and the caller waits for a sync instead.
	ProgramNew(ep agentapi.Endpoint) (rev uint64, done bool, err error)
	// Trigger asks for a sync and returns its generation.
	Trigger() uint64
	// WaitProgrammed waits for a sync of generation gen or later that has
	// programmed endpoint id.
	WaitProgrammed(ctx context.Context, gen uint64, id string) (uint64, error)
	// Forget removes an endpoint's entries from the maps.
	Forget(ifindex int, id string) error
}

// Attacher puts the datapath's programs on a pod's host veth and takes them
// off. The plugin attaches on ADD; the agent does for adopted pods and on
// restart (an upgrade's new programs).
type Attacher interface {
	Attach(ifindex int, id string) error
	// Detach takes endpoint id's programs off ifindex (0: the interface is
	// gone, only its pins remain).
	Detach(ifindex int, id string) error
}

// LinkAlive reports whether the host interface of an endpoint still
// exists: index names a link called name. An error means it cannot tell.
type LinkAlive func(index int, name string) (bool, error)

// Manager owns every local endpoint's life: registration, programming,
// attachment, removal, garbage collection and the reconciliation against
// the node's pods and interfaces. Nothing else writes the registry.
type Manager struct {
	Log      *slog.Logger
	NodeName string
	Registry *Registry
	Program  Programmer
	Attach   Attacher
	// Pods is the informer's view of the cluster's pods.
	Pods corelisters.PodLister
	// Alive checks host interfaces.
	Alive LinkAlive

	// mu serializes the decisions that remove an endpoint with the
	// registrations, so that a reconcile that read an old copy of an
	// endpoint never removes the one an ADD registered since.
	mu sync.Mutex
}

// ErrRollback wraps the error of an ADD whose endpoint was registered but
// not programmed, and that was removed again.
var ErrRollback = errors.New("endpoint removed after a failed ADD")

// Add registers a pod interface and returns once its policy is in the maps:
// on its own when the last sync's view already has the pod, else after a
// whole sync. It does not attach (the plugin does, once Add returns). On
// failure it leaves nothing behind, so that the runtime's retry starts
// afresh. how is "own" or "sync".
func (m *Manager) Add(ctx context.Context, ep agentapi.Endpoint) (out agentapi.Endpoint, how string, err error) {
	m.mu.Lock()
	err = m.Registry.Put(ep)
	m.mu.Unlock()
	if err != nil {
		return ep, "", fmt.Errorf("register endpoint %s: %w", ep.ID, err)
	}
	how = "own"
	rev, done, err := m.Program.ProgramNew(ep)
	if err != nil {
		m.Log.Warn("Endpoint not programmed on its own; waiting for a sync", "endpoint", ep.ID, "error", err)
	}
	if !done {
		how = "sync"
		rev, err = m.Program.WaitProgrammed(ctx, m.Program.Trigger(), ep.ID)
	}
	if err != nil {
		if rerr := m.Remove(ep.ID); rerr != nil {
			return ep, how, errors.Join(err, fmt.Errorf("%w, incompletely: %w", ErrRollback, rerr))
		}
		return ep, how, err
	}
	ep.Revision, ep.Current = rev, true
	return ep, how, nil
}

// Remove forgets endpoint id: registry, maps, then the attached programs.
// An endpoint it does not know is already removed.
func (m *Manager) Remove(id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep, ok := m.Registry.Get(id)
	if !ok {
		return nil
	}
	return m.removeLocked(ep)
}

// removeIf removes ep only if the registry still holds it with the same
// interface: a decision taken on an old copy must not hit a new ADD.
func (m *Manager) removeIf(ep agentapi.Endpoint) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.Registry.Get(ep.ID)
	if !ok || cur.HostIfIndex != ep.HostIfIndex || cur.HostIfName != ep.HostIfName {
		return false, nil
	}
	return true, m.removeLocked(cur)
}

func (m *Manager) removeLocked(ep agentapi.Endpoint) error {
	var errs []error
	if _, _, err := m.Registry.Delete(ep.ID); err != nil {
		errs = append(errs, fmt.Errorf("unregister endpoint %s: %w", ep.ID, err))
	}
	if err := m.Program.Forget(ep.HostIfIndex, ep.ID); err != nil {
		errs = append(errs, fmt.Errorf("remove maps of endpoint %s: %w", ep.ID, err))
	}
	if err := m.Attach.Detach(ep.HostIfIndex, ep.ID); err != nil {
		errs = append(errs, fmt.Errorf("detach programs of endpoint %s: %w", ep.ID, err))
	}
	return errors.Join(errs...)
}

// Get returns one endpoint.
func (m *Manager) Get(id string) (agentapi.Endpoint, bool) { return m.Registry.Get(id) }

// List returns every endpoint, sorted by ID.
func (m *Manager) List() []agentapi.Endpoint { return m.Registry.List() }

// Adopt registers endpoints of pods that run without palisade, waits until
// their policy is in the maps, and only then attaches the programs: once
// attached, a pod is judged by its own policy from the first packet. An
// endpoint that fails is removed again; the others are returned.
func (m *Manager) Adopt(ctx context.Context, eps []agentapi.Endpoint) ([]agentapi.Endpoint, error) {
	var registered []agentapi.Endpoint
	var errs []error
	for _, ep := range eps {
		m.mu.Lock()
		err := m.Registry.Put(ep)
		m.mu.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("register adopted endpoint %s: %w", ep.ID, err))
			continue
		}
		registered = append(registered, ep)
	}
	if len(registered) == 0 {
		return nil, errors.Join(errs...)
	}
	gen := m.Program.Trigger()
	var adopted []agentapi.Endpoint
	for _, ep := range registered {
		log := m.Log.With("endpoint", ep.ID, "pod", ep.PodNamespace+"/"+ep.PodName, "ifname", ep.HostIfName)
		rev, err := m.Program.WaitProgrammed(ctx, gen, ep.ID)
		if err == nil {
			err = m.Attach.Attach(ep.HostIfIndex, ep.ID)
		}
		if err != nil {
			log.Error("Pod not adopted; it stays unprotected until its next sandbox", "error", err)
			if rerr := m.Remove(ep.ID); rerr != nil {
				errs = append(errs, rerr)
			}
			continue
		}
		log.Info("Pod adopted", "revision", rev, "ips", ep.IPs)
		ep.Revision = rev
		adopted = append(adopted, ep)
	}
	return adopted, errors.Join(errs...)
}

// Restore forgets, at start and before the first sync, the endpoints whose
// interface went away while the agent was not running (the runtime's DEL
// found no agent to tell). The others keep their programs until Reattach.
func (m *Manager) Restore() error {
	var errs []error
	for _, ep := range m.Registry.List() {
		alive, err := m.Alive(ep.HostIfIndex, ep.HostIfName)
		if err != nil || alive {
			continue
		}
		m.Log.Info("Endpoint interface gone; forgetting it", "endpoint", ep.ID, "ifname", ep.HostIfName)
		m.mu.Lock()
		if _, _, err := m.Registry.Delete(ep.ID); err != nil {
			errs = append(errs, fmt.Errorf("forget endpoint %s: %w", ep.ID, err))
		}
		m.mu.Unlock()
		// Its links' pins outlive the interface; no maps exist yet.
		if err := m.Attach.Detach(0, ep.ID); err != nil {
			errs = append(errs, fmt.Errorf("remove pins of endpoint %s: %w", ep.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Reattach puts the current programs on every endpoint that survived an
// agent restart, once the maps hold their policy: this is how an upgrade
// replaces the programs. An endpoint that fails keeps its old programs.
func (m *Manager) Reattach() error {
	var errs []error
	for _, ep := range m.Registry.List() {
		if err := m.Attach.Attach(ep.HostIfIndex, ep.ID); err != nil {
			errs = append(errs, fmt.Errorf("re-attach programs of endpoint %s (the old ones keep enforcing): %w", ep.ID, err))
		}
	}
	return errors.Join(errs...)
}

// GC forgets every endpoint the runtime no longer lists in valid (CNI GC),
// except those it can see may still be in use: their host veth exists and
// their Pod is not finished nor bound elsewhere (a Pod the cache does not
// show yet counts as in use: GC may race an ADD). A runtime's list can be
// partial, and removing a live pod's endpoint would strip its policy; such
// an endpoint is kept, for DEL or Reconcile to remove once its interface
// or its pod is gone. It returns the removed and the kept IDs.
func (m *Manager) GC(valid map[string]bool) (removed, kept []string, err error) {
	removed, kept = []string{}, []string{}
	var errs []error
	for _, ep := range m.Registry.List() {
		if valid[ep.ID] {
			continue
		}
		if m.inUse(ep) {
			kept = append(kept, ep.ID)
			continue
		}
		did, err := m.removeIf(ep)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if did {
			removed = append(removed, ep.ID)
		}
	}
	return removed, kept, errors.Join(errs...)
}

// inUse reports whether ep's interface exists and its Pod may run on it.
func (m *Manager) inUse(ep agentapi.Endpoint) bool {
	alive, err := m.Alive(ep.HostIfIndex, ep.HostIfName)
	if err != nil {
		// Cannot tell: keeping a dead endpoint costs a map slot, removing a
		// live one costs a pod its policy.
		return true
	}
	if !alive {
		return false
	}
	_, state := m.podState(ep)
	return state == podRunning || state == podUnknown
}

type podPhase int

const (
	// podUnknown: the cache has no pod of the endpoint's name and UID, or
	// it cannot be read.
	podUnknown podPhase = iota
	podRunning
	// podFinished: Succeeded or Failed; its containers never run again
	// and its address goes back to the pool.
	podFinished
	// podElsewhere: the pod is bound to another node.
	podElsewhere
)

func (m *Manager) podState(ep agentapi.Endpoint) (*corev1.Pod, podPhase) {
	pod, err := m.Pods.Pods(ep.PodNamespace).Get(ep.PodName)
	if err != nil || (ep.PodUID != "" && string(pod.UID) != ep.PodUID) {
		if err != nil && !apierrors.IsNotFound(err) {
			m.Log.Warn("Pod of endpoint not read", "endpoint", ep.ID, "error", err)
		}
		return nil, podUnknown
	}
	switch {
	case pod.Spec.NodeName != "" && pod.Spec.NodeName != m.NodeName:
		return pod, podElsewhere
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return pod, podFinished
	}
	return pod, podRunning
}

// ReconcileResult says what one Reconcile did.
type ReconcileResult struct {
	// Removed are endpoints whose interface vanished or whose Pod
	// finished.
	Removed []string
	// ByReason counts them by reason ("interface gone", "pod finished").
	ByReason map[string]int
}

// Reconcile removes the endpoints nothing else will: those whose host
// veth vanished (a DEL while the agent was down, or one that never came)
// and those of Succeeded or Failed pods, whose address host-local hands
// to the next pod. An endpoint whose Pod the cache does not show is kept
// while its interface lives: the pod may be starting (the informer lags
// behind an ADD) and DEL will come for it.
func (m *Manager) Reconcile() (ReconcileResult, error) {
	var res ReconcileResult
	var errs []error
	for _, ep := range m.Registry.List() {
		alive, err := m.Alive(ep.HostIfIndex, ep.HostIfName)
		if err != nil {
			errs = append(errs, fmt.Errorf("check interface of endpoint %s: %w", ep.ID, err))
			continue
		}
		reason := ""
		if !alive {
			reason = "interface gone"
		} else if _, st := m.podState(ep); st == podFinished {
			reason = "pod finished"
		}
		if reason == "" {
			continue
		}
		did, err := m.removeIf(ep)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if did {
			m.Log.Info("Endpoint reclaimed", "endpoint", ep.ID, "pod", ep.PodNamespace+"/"+ep.PodName,
				"ifname", ep.HostIfName, "reason", reason)
			res.Removed = append(res.Removed, ep.ID)
			if res.ByReason == nil {
				res.ByReason = map[string]int{}
			}
			res.ByReason[reason]++
		}
	}
	return res, errors.Join(errs...)
}

// Run reconciles every interval until ctx ends; onDone, if set, learns
// each pass's outcome.
func (m *Manager) Run(ctx context.Context, every time.Duration, onDone func(ReconcileResult, error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		res, err := m.Reconcile()
		if err != nil {
			m.Log.Warn("Endpoint reconcile incomplete", "error", err)
		}
		if onDone != nil {
			onDone(res, err)
		}
	}
}
