// Package controllertest gives tests of the controller and of its callers
// a cluster fed through informer stores and a datapath that records its
// writes, in order, instead of making them.
package controllertest

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-cni/palisade/daemon/k8s"
	"github.com/palisade-cni/palisade/daemon/policy"
	"github.com/palisade-cni/palisade/daemon/service"
)

// Stores are the informer stores behind a Cluster: add, update and delete
// objects there as the API server's watch would.
type Stores struct {
	Pods, Namespaces, Policies, Nodes, Services, EndpointSlices cache.Indexer
}

// NewCluster returns a Cluster over empty stores. Its Changes move with
// every change to the stores of the kinds they count (for pods, any
// change), as the informers' handlers move them.
func NewCluster() (*k8s.Cluster, *Stores) {
	idx := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	changes := &k8s.Changes{}
	counted := func(n *atomic.Uint64) cache.Indexer { return countingStore{idx(), n} }
	s := &Stores{Pods: counted(&changes.PodAddrs), Namespaces: idx(), Policies: idx(), Nodes: counted(&changes.Nodes),
		Services: counted(&changes.Services), EndpointSlices: counted(&changes.EndpointSlices)}
	return &k8s.Cluster{
		Pods: corelisters.NewPodLister(s.Pods), Namespaces: corelisters.NewNamespaceLister(s.Namespaces),
		Policies: netlisters.NewNetworkPolicyLister(s.Policies), Nodes: corelisters.NewNodeLister(s.Nodes),
		Services: corelisters.NewServiceLister(s.Services), EndpointSlices: discoverylisters.NewEndpointSliceLister(s.EndpointSlices),
		Changes: changes,
	}, s
}

// countingStore moves a count after each change, as an informer's handler
// does once the cache holds the change.
type countingStore struct {
	cache.Indexer
	n *atomic.Uint64
}

func (s countingStore) Add(obj any) error    { return s.count(s.Indexer.Add(obj)) }
func (s countingStore) Update(obj any) error { return s.count(s.Indexer.Update(obj)) }
func (s countingStore) Delete(obj any) error { return s.count(s.Indexer.Delete(obj)) }
func (s countingStore) Replace(list []any, rv string) error {
	return s.count(s.Indexer.Replace(list, rv))
}

func (s countingStore) count(err error) error {
	s.n.Add(1)
	return err
}

// Datapath records writes as strings:
//
//	apply REV [IDS]           a whole revision, its endpoints' IDs sorted
//	apply-endpoint REV ID     one endpoint's policy, ahead of a sync
//	remove IFINDEX            an endpoint's entries removed
//	detach IFINDEX ID         (Attacher) an endpoint's programs removed
//
// It also keeps the last Result each endpoint was written with.
type Datapath struct {
	mu    sync.Mutex
	calls []string
	// Last is the last whole Result applied.
	last *policy.Result
	// Endpoint is each endpoint's policy as last written.
	endpoint  map[string]policy.EndpointPolicy
	services  []service.Entry
	nodeAddrs []netip.Addr
	// PanicOnApply, when positive, makes that many next Apply calls panic.
	PanicOnApply int
}

func (d *Datapath) add(format string, args ...any) {
	d.calls = append(d.calls, fmt.Sprintf(format, args...))
}

// Calls returns the writes so far.
func (d *Datapath) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// Endpoint returns endpoint id's policy as last written.
func (d *Datapath) Endpoint(id string) (policy.EndpointPolicy, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.endpoint[id]
	return ep, ok
}

// IPCache returns the last whole ipcache written.
func (d *Datapath) IPCache() map[netip.Prefix]uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		return nil
	}
	return maps.Clone(d.last.IPCache)
}

func (d *Datapath) Apply(res *policy.Result, rev uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.PanicOnApply > 0 {
		d.PanicOnApply--
		panic("controllertest: Apply panics as asked")
	}
	d.add("apply %d %v", rev, slices.Sorted(maps.Keys(res.Endpoints)))
	d.last = res
	if d.endpoint == nil {
		d.endpoint = map[string]policy.EndpointPolicy{}
	}
	maps.Copy(d.endpoint, res.Endpoints)
	return nil
}

func (d *Datapath) ApplyEndpoint(ep policy.EndpointPolicy, _ map[netip.Prefix]uint32, rev uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.add("apply-endpoint %d %s", rev, ep.ID)
	if d.endpoint == nil {
		d.endpoint = map[string]policy.EndpointPolicy{}
	}
	d.endpoint[ep.ID] = ep
	return nil
}

func (d *Datapath) Remove(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.add("remove %d", ifindex)
	return nil
}

func (d *Datapath) Prune(map[int]bool) error { return nil }

// ApplyServices and ApplyNodeAddrs keep what they were given apart from
// Calls, which tests compare whole: Services and NodeAddrs return it.
func (d *Datapath) ApplyServices(entries []service.Entry) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.services = slices.Clone(entries)
	return nil
}

func (d *Datapath) ApplyNodeAddrs(addrs []netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nodeAddrs = slices.Clone(addrs)
	return nil
}

// Services returns the Service entries last written.
func (d *Datapath) Services() []service.Entry {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.services)
}

// NodeAddrs returns the node addresses last written.
func (d *Datapath) NodeAddrs() []netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.nodeAddrs)
}

// Attach and Detach make the Datapath an endpoint.Attacher too, so that
// the programs' removal is ordered among the map writes.
func (d *Datapath) Attach(ifindex int, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.add("attach %d %s", ifindex, id)
	return nil
}

func (d *Datapath) Detach(ifindex int, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.add("detach %d %s", ifindex, id)
	return nil
}
