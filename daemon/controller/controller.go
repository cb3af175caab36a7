// Package controller joins the cluster view, the endpoint registry, the
// policy compiler and the datapath writer: one level-triggered, coalescing
// sync loop that recomputes the desired state and writes what changed.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/k8s"
	"github.com/palisade-cni/palisade/daemon/policy"
	"github.com/palisade-cni/palisade/daemon/service"
)

// resyncInterval bounds how long a missed signal can leave the maps stale.
const resyncInterval = time.Minute

// retryInterval is how soon a failed sync is tried again; it doubles with
// each failure in a row, up to maxRetryInterval, so that a sync that keeps
// panicking or failing does not spin.
const (
	retryInterval    = time.Second
	maxRetryInterval = 30 * time.Second
)

// Datapath is what the controller writes to.
type Datapath interface {
	Apply(res *policy.Result, revision uint64) error
	ApplyEndpoint(ep policy.EndpointPolicy, ipcache map[netip.Prefix]uint32, revision uint64) error
	Remove(ifindex int) error
	Prune(keep map[int]bool) error
	ApplyServices(entries []service.Entry) error
	ApplyNodeAddrs(addrs []netip.Addr) error
}

// Controller keeps the datapath equal to what the cluster asks for.
type Controller struct {
	log      *slog.Logger
	node     string
	cluster  *k8s.Cluster
	registry *endpoint.Registry
	dp       Datapath
	alloc    *identity.Allocator
	// nodeIPs lists this node's own addresses.
	nodeIPs func() ([]netip.Addr, error)
	// persist saves the identity table after a sync.
	persist func(*identity.Allocator) error
	onSync  func(SyncTimings)
	// cnpStatus writes the Programmed condition of cluster policies.
	cnpStatus func(context.Context, *cnpv1.ClusterNetworkPolicy, []string) error
	onFail    func(error)

	trigger chan struct{}

	// writeMu serializes the datapath's writers: syncs, ProgramNew and
	// Forget. A sync writes only a compilation that no ProgramNew or
	// Forget came between (writes), so an endpoint registered meanwhile is
	// either in that sync's state or programmed after it.
	writeMu sync.Mutex
	// writes counts ProgramNew's and Forget's writes, so that a sync can
	// tell whether its compilation, made without writeMu, is still whole.
	writes atomic.Uint64

	mu         sync.Mutex
	wanted     uint64 // generation last asked for
	synced     uint64 // generation last programmed
	revision   uint64 // datapath revision, bumped when the maps change
	programmed map[string]uint64
	last       *policy.Result
	services   []service.Entry
	nodeAddrs  []netip.Addr
	// servicesFrom is what the last complete Services' sync read.
	servicesFrom serviceInputs
	changed      chan struct{} // closed and replaced after every sync
	// running is set once Run starts; lastDone is when the last sync
	// completed (or Run started); failing is the last sync's error.
	running  bool
	lastDone time.Time
	failing  error
}

// Config wires a Controller.
type Config struct {
	Log      *slog.Logger
	NodeName string
	Cluster  *k8s.Cluster
	Registry *endpoint.Registry
	Datapath Datapath
	Alloc    *identity.Allocator
	NodeIPs  func() ([]netip.Addr, error)
	Persist  func(*identity.Allocator) error
	// OnSync, when set, is told how long each sync's steps took (metrics).
	OnSync func(SyncTimings)
	// ClusterPolicyStatus, when set, records on each ClusterNetworkPolicy
	// whether it was programmed whole (problems empty).
	ClusterPolicyStatus func(ctx context.Context, p *cnpv1.ClusterNetworkPolicy, problems []string) error
	// OnFailure, when set, learns every failed or panicked sync.
	OnFailure func(error)
}

// SyncTimings are the durations of one sync.
type SyncTimings struct {
	// Compile is the policy compilation.
	Compile time.Duration
	// Apply is the write of policy and ipcache to the maps; zero when
	// nothing changed.
	Apply   time.Duration
	Changed bool
	// Services is set when the Services' sync ran, that is when its
	// inputs changed or it was due anyway.
	Services bool
}

// New returns a controller; call Run to start it.
func New(cfg Config) *Controller {
	return &Controller{
		log: cfg.Log, node: cfg.NodeName, cluster: cfg.Cluster, registry: cfg.Registry,
		dp: cfg.Datapath, alloc: cfg.Alloc, nodeIPs: cfg.NodeIPs, persist: cfg.Persist, onSync: cfg.OnSync, onFail: cfg.OnFailure,
		cnpStatus:  cfg.ClusterPolicyStatus,
		trigger:    make(chan struct{}, 1),
		programmed: map[string]uint64{},
		changed:    make(chan struct{}),
	}
}

// Trigger asks for a sync and returns the generation that will include
// everything known now.
func (c *Controller) Trigger() uint64 {
	c.mu.Lock()
	c.wanted++
	g := c.wanted
	c.mu.Unlock()
	select {
	case c.trigger <- struct{}{}:
	default:
	}
	return g
}

// Run syncs on every trigger, after failures and every resyncInterval,
// until ctx ends. A sync that panics is recovered and counted like a
// failed one: the maps keep the last revision meanwhile.
func (c *Controller) Run(ctx context.Context) {
	c.mu.Lock()
	c.running, c.lastDone = true, time.Now()
	c.mu.Unlock()
	timer := time.NewTimer(0)
	defer timer.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-c.trigger:
		}
		next := resyncInterval
		err := c.safeSync()
		c.mu.Lock()
		c.failing = err
		if err == nil {
			c.lastDone = time.Now()
		}
		c.mu.Unlock()
		if err != nil {
			failures++
			next = min(retryInterval<<min(failures-1, 10), maxRetryInterval)
			c.log.Warn("Sync failed; retrying", "error", err, "failures", failures, "retryIn", next)
			if c.onFail != nil {
				c.onFail(err)
			}
		} else {
			failures = 0
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// safeSync is sync with its panics turned into errors.
func (c *Controller) safeSync() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sync panicked: %v", r)
			c.log.Error("Sync panicked; recovered", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	return c.sync()
}

// Progress tells liveness checks whether the sync loop has work it has
// not done (a change not yet programmed, or a failing sync) and when it
// last completed a sync. Before Run, nothing is pending.
func (c *Controller) Progress() (pending bool, lastDone time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running && (c.wanted > c.synced || c.failing != nil), c.lastDone
}

// Synced reports whether a first sync has completed.
func (c *Controller) Synced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last != nil
}

// Revision is the datapath revision in the maps.
func (c *Controller) Revision() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revision
}

func (c *Controller) sync() error {
	start := time.Now()
	// Compile without the writers' lock, so that a starting pod
	// (ProgramNew) waits at most for a map write, not for a compile too.
	// An endpoint programmed or forgotten meanwhile makes the result
	// stale; it is then compiled again under the lock.
	writes := c.writes.Load()
	gen, res, took, err := c.compile()
	if err != nil {
		return err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writes.Load() != writes {
		if gen, res, took, err = c.compile(); err != nil {
			return err
		}
	}
	timings := SyncTimings{Compile: took}
	for _, p := range res.Problems {
		c.log.Error("Policy part matches nothing", "error", p)
	}

	c.mu.Lock()
	changed := c.last == nil || !maps.Equal(c.last.IPCache, res.IPCache) || !reflect.DeepEqual(c.last.Endpoints, res.Endpoints)
	rev := c.revision
	if changed {
		rev++
	}
	c.mu.Unlock()

	if changed {
		applyStart := time.Now()
		if err := c.dp.Apply(&res, rev); err != nil {
			return fmt.Errorf("write datapath revision %d: %w", rev, err)
		}
		keep := map[int]bool{}
		for _, ep := range res.Endpoints {
			keep[ep.Ifindex] = true
		}
		if err := c.dp.Prune(keep); err != nil {
			return fmt.Errorf("prune endpoints: %w", err)
		}
		if err := c.persist(c.alloc); err != nil {
			return err
		}
		timings.Apply, timings.Changed = time.Since(applyStart), true
		c.log.Info("Policy revision programmed", "revision", rev, "endpoints", len(res.Endpoints),
			"unknownPods", len(res.Unknown), "duration", time.Since(start))
	}

	ran, err := c.syncServices()
	if err != nil {
		return err
	}
	timings.Services = ran
	// Statuses after the maps: Programmed means enforced.
	if c.cnpStatus != nil {
		for _, p := range res.ClusterPolicyObjects() {
			if err := c.cnpStatus(context.Background(), p, res.ClusterProblems[p.Name]); err != nil {
				c.log.Warn("ClusterNetworkPolicy status not written", "policy", p.Name, "error", err)
			}
		}
	}

	c.mu.Lock()
	c.revision = rev
	c.last = &res
	if gen > c.synced {
		c.synced = gen
	}
	for id := range res.Endpoints {
		c.programmed[id] = rev
	}
	for id := range c.programmed {
		if _, ok := res.Endpoints[id]; !ok {
			delete(c.programmed, id)
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if c.onSync != nil {
		c.onSync(timings)
	}
	return nil
}

// compile reads the cluster and the endpoints and compiles them, with the
// generation of changes that includes.
func (c *Controller) compile() (uint64, policy.Result, time.Duration, error) {
	c.mu.Lock()
	gen, last := c.wanted, c.last
	c.mu.Unlock()
	state, err := c.state()
	if err != nil {
		return 0, policy.Result{}, 0, err
	}
	// Pods alike whose namespace's policies did not change keep the
	// rules the last sync compiled for them.
	state.Previous = last
	start := time.Now()
	res := policy.Compile(state, c.alloc)
	return gen, res, time.Since(start), nil
}

// Last returns the policy compiled by the last successful sync, nil before
// the first. It is what the maps hold: callers must not modify it.
func (c *Controller) Last() *policy.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Cluster is the controller's view of the API server, read-only.
func (c *Controller) Cluster() *k8s.Cluster { return c.cluster }

// serviceInputs is what the Services' sync reads: the counts of changes to
// Services, EndpointSlices, Nodes and pod addresses, this node's own
// addresses, and when it read them.
type serviceInputs struct {
	counts k8s.ChangeCounts
	own    []netip.Addr
	at     time.Time
}

// servicesUnchanged reports whether the Services' sync would read what
// the last one did, so that it can be skipped: listing and walking every
// pod for the node addresses was a tenth of a sync's CPU at 10 000 pods.
// Without counts (no informers) nothing is known unchanged; at least
// every resyncInterval the sync runs anyway, should a count ever miss a
// change.
func (c *Controller) servicesUnchanged(in serviceInputs) bool {
	c.mu.Lock()
	last := c.servicesFrom
	c.mu.Unlock()
	return c.cluster.Changes != nil && !last.at.IsZero() && in.at.Sub(last.at) < resyncInterval &&
		in.counts == last.counts && slices.Equal(in.own, last.own)
}

// syncServices mirrors Services and EndpointSlices into the translation
// maps, and the nodes' addresses into the set NodePorts apply to, when they
// changed. The addresses go first, so that a new NodePort entry finds them.
// It reports whether it ran, rather than finding its inputs unchanged.
func (c *Controller) syncServices() (bool, error) {
	// The counts before the lists: a change counted after this is seen
	// by the next sync.
	var in serviceInputs
	if c.cluster.Changes != nil {
		in.counts = c.cluster.Changes.Snapshot()
	}
	own, err := c.nodeIPs()
	if err != nil {
		return false, fmt.Errorf("list node addresses: %w", err)
	}
	in.own, in.at = own, time.Now()
	if c.servicesUnchanged(in) {
		return false, nil
	}
	if err := c.writeServices(own); err != nil {
		return true, err
	}
	c.mu.Lock()
	c.servicesFrom = in
	c.mu.Unlock()
	return true, nil
}

// writeServices compiles the Services and node addresses and writes what
// differs from the last write.
func (c *Controller) writeServices(own []netip.Addr) error {
	svcs, err := c.cluster.Services.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	eps, err := c.cluster.EndpointSlices.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list endpointslices: %w", err)
	}
	addrs, err := c.listNodeAddrs(own)
	if err != nil {
		return err
	}
	entries := service.Compile(svcs, eps, c.node)
	c.mu.Lock()
	sameAddrs := c.nodeAddrs != nil && reflect.DeepEqual(c.nodeAddrs, addrs)
	same := c.services != nil && reflect.DeepEqual(c.services, entries)
	c.mu.Unlock()
	if !sameAddrs {
		if err := c.dp.ApplyNodeAddrs(addrs); err != nil {
			return fmt.Errorf("write node addresses: %w", err)
		}
		c.mu.Lock()
		c.nodeAddrs = append([]netip.Addr{}, addrs...)
		c.mu.Unlock()
		c.log.Info("Node addresses programmed", "addresses", len(addrs))
	}
	if same {
		return nil
	}
	if err := c.dp.ApplyServices(entries); err != nil {
		return fmt.Errorf("write services: %w", err)
	}
	c.mu.Lock()
	c.services = entries
	if c.services == nil {
		c.services = []service.Entry{}
	}
	c.mu.Unlock()
	c.log.Info("Services programmed", "entries", len(entries))
	return nil
}

// listNodeAddrs lists the addresses by which pods reach a node; own are
// this node's.
func (c *Controller) listNodeAddrs(own []netip.Addr) ([]netip.Addr, error) {
	nodes, err := c.cluster.Nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	pods, err := c.cluster.Pods.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	return service.NodeAddrs(nodes, pods, own), nil
}

// state gathers the compiler's input from the caches and the registry.
func (c *Controller) state() (policy.State, error) {
	var s policy.State
	var err error
	if s.Pods, err = c.cluster.Pods.List(labels.Everything()); err != nil {
		return s, fmt.Errorf("list pods: %w", err)
	}
	if s.Namespaces, err = c.cluster.Namespaces.List(labels.Everything()); err != nil {
		return s, fmt.Errorf("list namespaces: %w", err)
	}
	if s.Policies, err = c.cluster.Policies.List(labels.Everything()); err != nil {
		return s, fmt.Errorf("list networkpolicies: %w", err)
	}
	if c.cluster.ClusterPolicies != nil {
		if s.ClusterPolicies, err = c.cluster.ClusterPolicies.List(labels.Everything()); err != nil {
			return s, fmt.Errorf("list clusternetworkpolicies: %w", err)
		}
	}
	nodes, err := c.cluster.Nodes.List(labels.Everything())
	if err != nil {
		return s, fmt.Errorf("list nodes: %w", err)
	}
	s.NodeIPs, s.RemoteNodeIPs = nodeAddresses(nodes, c.node)
	s.NodeLabels = nodeLabels(nodes, c.node)
	for _, n := range nodes {
		if n.Name == c.node {
			s.LocalNodeLabels = n.Labels
		}
	}
	own, err := c.nodeIPs()
	if err != nil {
		return s, fmt.Errorf("list node addresses: %w", err)
	}
	s.NodeIPs = append(s.NodeIPs, own...)
	for _, ep := range c.registry.List() {
		s.Endpoints = append(s.Endpoints, policy.Endpoint{
			ID: ep.ID, Ifindex: ep.HostIfIndex, IPs: ep.IPs, Pod: c.podOf(ep),
		})
	}
	return s, nil
}

// podOf finds the endpoint's Pod; a Pod of the same name but another UID is
// a different pod and does not count.
func (c *Controller) podOf(ep agentapi.Endpoint) *corev1.Pod {
	pod, err := c.cluster.Pods.Pods(ep.PodNamespace).Get(ep.PodName)
	if err != nil || (ep.PodUID != "" && string(pod.UID) != ep.PodUID) {
		return nil
	}
	return pod
}

// ErrPodUnknown means the endpoint's Pod never showed up in the cache.
var ErrPodUnknown = errors.New("pod not known to the agent")

// WaitProgrammed blocks until a sync of generation gen or later has run and
// has programmed endpoint id, or ctx ends.
func (c *Controller) WaitProgrammed(ctx context.Context, gen uint64, id string) (uint64, error) {
	for {
		c.mu.Lock()
		rev, ok := c.programmed[id]
		done := c.synced >= gen
		ch := c.changed
		c.mu.Unlock()
		if done && ok {
			return rev, nil
		}
		select {
		case <-ctx.Done():
			if done {
				return 0, ErrPodUnknown
			}
			return 0, ctx.Err()
		case <-ch:
		}
	}
}

// Status describes endpoint id: the revision programmed for it and whether
// that is the current one.
func (c *Controller) Status(id string) (rev uint64, current bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rev, ok := c.programmed[id]
	return rev, ok && rev == c.revision
}

// Forget removes an endpoint's datapath entries at once, ahead of the sync
// that will also drop its address from the ipcache.
func (c *Controller) Forget(ifindex int, id string) error {
	c.writeMu.Lock()
	c.writes.Add(1)
	c.mu.Lock()
	delete(c.programmed, id)
	c.mu.Unlock()
	err := c.dp.Remove(ifindex)
	c.writeMu.Unlock()
	c.Trigger()
	return err
}

// ProgramNew programs a newly registered endpoint on its own, from the last
// sync's compilation, so that a starting pod waits for its own rules rather
// than for a whole sync; then it asks for that sync, which also updates the
// endpoints that have rules about the new pod. It reports false, having
// written nothing, when it cannot: before the first sync, or while the pod
// or its namespace is not in the last sync's view. The caller then waits
// for a sync (WaitProgrammed).
func (c *Controller) ProgramNew(ep agentapi.Endpoint) (uint64, bool, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.mu.Lock()
	last, rev := c.last, c.revision
	c.mu.Unlock()
	pod := c.podOf(ep)
	if last == nil || pod == nil {
		return 0, false, nil
	}
	pe, ipcache, err := last.CompileEndpoint(policy.Endpoint{ID: ep.ID, Ifindex: ep.HostIfIndex, Pod: pod, IPs: ep.IPs})
	if err != nil {
		c.log.Debug("Endpoint waits for a whole sync", "endpoint", ep.ID, "reason", err)
		return 0, false, nil
	}
	c.writes.Add(1)
	if err := c.dp.ApplyEndpoint(pe, ipcache, rev); err != nil {
		return 0, false, fmt.Errorf("write policy of endpoint %s: %w", ep.ID, err)
	}
	c.mu.Lock()
	c.programmed[ep.ID] = rev
	c.mu.Unlock()
	c.Trigger()
	return rev, true, nil
}
