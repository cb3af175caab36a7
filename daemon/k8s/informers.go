// Package k8s builds the agent's view of the cluster: informers on Pods,
// Namespaces, NetworkPolicies, Nodes, Services and EndpointSlices, with managedFields stripped, whose
// every change only signals the controller.
package k8s

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	cnpinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"
	cnplisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1beta1"
)

// Cluster holds the listers the controller reads.
type Cluster struct {
	Pods       corelisters.PodLister
	Namespaces corelisters.NamespaceLister
	Policies   netlisters.NetworkPolicyLister
	Nodes      corelisters.NodeLister
	// Services and EndpointSlices feed the translation of ClusterIPs.
	Services       corelisters.ServiceLister
	EndpointSlices discoverylisters.EndpointSliceLister
	// ClusterPolicies lists ClusterNetworkPolicies (v1beta1); nil when the
	// cluster does not serve them.
	ClusterPolicies cnplisters.ClusterNetworkPolicyLister

	// Changes counts what the informers delivered, per kind, for work
	// that reads a few kinds only; nil when no informer feeds the Cluster.
	Changes *Changes

	factory    informers.SharedInformerFactory
	cnpFactory cnpinformers.SharedInformerFactory
	synced     []cache.InformerSynced
}

// Changes counts the changes to the objects some of the agent's work
// reads, so that the work can be skipped while its counts stay the same.
// A count moves after the cache holds the change and before the sync it
// triggers starts: read before listing, an unchanged count means an
// unchanged list.
type Changes struct {
	Services, EndpointSlices, Nodes atomic.Uint64
	// PodAddrs moves when a pod is added or deleted, or its addresses or
	// host networking change; not for a label or phase change.
	PodAddrs atomic.Uint64
}

// ChangeCounts is a snapshot of Changes; equal snapshots mean no change.
type ChangeCounts struct {
	Services, EndpointSlices, Nodes, PodAddrs uint64
}

// Snapshot reads the counts.
func (c *Changes) Snapshot() ChangeCounts {
	return ChangeCounts{Services: c.Services.Load(), EndpointSlices: c.EndpointSlices.Load(),
		Nodes: c.Nodes.Load(), PodAddrs: c.PodAddrs.Load()}
}

// New creates the informers; onChange is called (and must only enqueue) for
// every add, update and delete. cnp, when not nil, adds ClusterNetworkPolicy.
func New(client kubernetes.Interface, cnp cnpclient.Interface, onChange func()) (*Cluster, error) {
	// No periodic replay of the caches: it would only deliver objects
	// SameButVersion drops. The controller resyncs every minute on its own.
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(Slim))
	c := &Cluster{factory: f, Changes: &Changes{}}
	pods := f.Core().V1().Pods()
	nss := f.Core().V1().Namespaces()
	pols := f.Networking().V1().NetworkPolicies()
	nodes := f.Core().V1().Nodes()
	svcs := f.Core().V1().Services()
	eps := f.Discovery().V1().EndpointSlices()
	for _, h := range []struct {
		inf     cache.SharedIndexInformer
		counter *atomic.Uint64
		moves   func(old, cur any) bool
	}{
		{pods.Informer(), &c.Changes.PodAddrs, PodAddrsDiffer},
		{nss.Informer(), nil, nil},
		{pols.Informer(), nil, nil},
		{nodes.Informer(), &c.Changes.Nodes, nil},
		{svcs.Informer(), &c.Changes.Services, nil},
		{eps.Informer(), &c.Changes.EndpointSlices, nil},
	} {
		if _, err := h.inf.AddEventHandler(handler(onChange, h.counter, h.moves)); err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
		c.synced = append(c.synced, h.inf.HasSynced)
	}
	if cnp != nil {
		c.cnpFactory = cnpinformers.NewSharedInformerFactoryWithOptions(cnp, 0, cnpinformers.WithTransform(Slim))
		cnps := c.cnpFactory.Policy().V1beta1().ClusterNetworkPolicies()
		if _, err := cnps.Informer().AddEventHandler(handler(onChange, nil, nil)); err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
		c.synced = append(c.synced, cnps.Informer().HasSynced)
		c.ClusterPolicies = cnps.Lister()
	}
	c.Pods, c.Namespaces, c.Policies, c.Nodes = pods.Lister(), nss.Lister(), pols.Lister(), nodes.Lister()
	c.Services, c.EndpointSlices = svcs.Lister(), eps.Lister()
	return c, nil
}

// handler signals onChange for every change but one in nothing but the
// resourceVersion. It moves counter first, if set (for an update, only
// where moves says so, if set), so that the sync onChange triggers sees it.
func handler(onChange func(), counter *atomic.Uint64, moves func(old, cur any) bool) cache.ResourceEventHandlerFuncs {
	count := func() {
		if counter != nil {
			counter.Add(1)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { count(); onChange() },
		UpdateFunc: func(old, cur any) {
			if SameButVersion(old, cur) {
				return
			}
			if moves == nil || moves(old, cur) {
				count()
			}
			onChange()
		},
		DeleteFunc: func(any) { count(); onChange() },
	}
}

// PodAddrsDiffer reports whether two versions of a Pod differ in what
// makes its addresses a peer's: the status addresses and host networking.
// Anything but two Pods differs.
func PodAddrsDiffer(old, cur any) bool {
	o, ok1 := old.(*corev1.Pod)
	n, ok2 := cur.(*corev1.Pod)
	if !ok1 || !ok2 {
		return true
	}
	return o.Spec.HostNetwork != n.Spec.HostNetwork || !slices.Equal(o.Status.PodIPs, n.Status.PodIPs)
}

// SameButVersion reports whether two versions of an object, as slimmed
// for the cache, differ in nothing but their resourceVersion: a pod's
// condition or a node's heartbeat changes nothing policy reads, and must not
// cost a sync.
func SameButVersion(old, cur any) bool {
	o, ok := old.(runtime.Object)
	if !ok {
		return false
	}
	n, ok := cur.(runtime.Object)
	if !ok {
		return false
	}
	o = o.DeepCopyObject()
	om, err := meta.Accessor(o)
	if err != nil {
		return false
	}
	nm, err := meta.Accessor(n)
	if err != nil {
		return false
	}
	om.SetResourceVersion(nm.GetResourceVersion())
	return equality.Semantic.DeepEqual(o, n)
}

// Start runs the informers until ctx ends.
func (c *Cluster) Start(ctx context.Context) {
	c.factory.Start(ctx.Done())
	if c.cnpFactory != nil {
		c.cnpFactory.Start(ctx.Done())
	}
}

// WaitForSync blocks until every cache has synced or ctx ends.
func (c *Cluster) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), c.synced...)
}

// Shutdown stops the informers and waits for them.
func (c *Cluster) Shutdown() {
	c.factory.Shutdown()
	if c.cnpFactory != nil {
		c.cnpFactory.Shutdown()
	}
}
