// Package k8s builds the agent's view of the cluster: informers on Pods,
// Namespaces, NetworkPolicies, Nodes, Services and EndpointSlices, with managedFields stripped, whose
// every change only signals the controller.
package k8s

import (
	"context"
	"fmt"

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

	factory    informers.SharedInformerFactory
	cnpFactory cnpinformers.SharedInformerFactory
	synced     []cache.InformerSynced
}

// New creates the informers; onChange is called (and must only enqueue) for
// every add, update and delete. cnp, when not nil, adds ClusterNetworkPolicy.
func New(client kubernetes.Interface, cnp cnpclient.Interface, onChange func()) (*Cluster, error) {
	// No periodic replay of the caches: it would only deliver objects
	// SameButVersion drops. The controller resyncs every minute on its own.
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(Slim))
	c := &Cluster{factory: f}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { onChange() },
		UpdateFunc: func(old, cur any) {
			if !SameButVersion(old, cur) {
				onChange()
			}
		},
		DeleteFunc: func(any) { onChange() },
	}
	pods := f.Core().V1().Pods()
	nss := f.Core().V1().Namespaces()
	pols := f.Networking().V1().NetworkPolicies()
	nodes := f.Core().V1().Nodes()
	svcs := f.Core().V1().Services()
	eps := f.Discovery().V1().EndpointSlices()
	for _, inf := range []cache.SharedIndexInformer{pods.Informer(), nss.Informer(), pols.Informer(), nodes.Informer(), svcs.Informer(), eps.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
		c.synced = append(c.synced, inf.HasSynced)
	}
	if cnp != nil {
		c.cnpFactory = cnpinformers.NewSharedInformerFactoryWithOptions(cnp, 0, cnpinformers.WithTransform(Slim))
		cnps := c.cnpFactory.Policy().V1beta1().ClusterNetworkPolicies()
		if _, err := cnps.Informer().AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("add event handler: %w", err)
		}
		c.synced = append(c.synced, cnps.Informer().HasSynced)
		c.ClusterPolicies = cnps.Lister()
	}
	c.Pods, c.Namespaces, c.Policies, c.Nodes = pods.Lister(), nss.Lister(), pols.Lister(), nodes.Lister()
	c.Services, c.EndpointSlices = svcs.Lister(), eps.Lister()
	return c, nil
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
