// Package crossnode judges a flow on both of its sides wherever they run.
// An agent judges only its own node's pods: the source pod's egress on the
// source's node, the destination's ingress on the destination's. From a
// workstation no agent socket is reachable, so crossnode reads the
// cluster's objects from the API server and compiles each side as the
// agent of that side's node does, with the agent's own compiler
// (daemon/policy) and explanation (daemon/inspect). What it cannot see is
// whether that agent has caught up with the objects; the agents' Leases
// (daemon/nodestatus) say when each last synced.
package crossnode

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/inspect"
	"github.com/palisade-cni/palisade/daemon/policy"
)

// Objects are the cluster's objects a judgment reads.
type Objects struct {
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	Nodes      []*corev1.Node
}

// Read lists the objects from the API server.
func Read(ctx context.Context, client kubernetes.Interface) (*Objects, error) {
	var o Objects
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	for i := range pods.Items {
		o.Pods = append(o.Pods, &pods.Items[i])
	}
	nss, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for i := range nss.Items {
		o.Namespaces = append(o.Namespaces, &nss.Items[i])
	}
	pols, err := client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list networkpolicies: %w", err)
	}
	for i := range pols.Items {
		o.Policies = append(o.Policies, &pols.Items[i])
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	for i := range nodes.Items {
		o.Nodes = append(o.Nodes, &nodes.Items[i])
	}
	return &o, nil
}

// Explain judges the flow req on both sides: one Explanation per port, with
// Egress judged as the source pod's node does and Ingress as the
// destination pod's node does. A side that is no pod (an address outside
// the cluster's pods) is not judged, as no agent judges it.
func (o *Objects) Explain(req agentapi.ExplainRequest) ([]agentapi.Explanation, error) {
	from, err := o.pod(req.From, "--from")
	if err != nil {
		return nil, err
	}
	to, err := o.pod(req.To, "--to")
	if err != nil {
		return nil, err
	}
	if from == nil && to == nil {
		return nil, fmt.Errorf("neither %s nor %s is a pod's: no agent judges this flow", req.From, req.To)
	}
	// Each side is judged by a View of its own node, holding that pod as
	// a local endpoint; the other side is then remote to it, unless both
	// run on the same node, which judges both at once.
	if from != nil && to != nil && from.Spec.NodeName == to.Spec.NodeName {
		return o.judgeOn(from.Spec.NodeName, req, from, to)
	}
	var src, dst []agentapi.Explanation
	if from != nil {
		if src, err = o.judgeOn(from.Spec.NodeName, req, from); err != nil {
			return nil, err
		}
	}
	if to != nil {
		if dst, err = o.judgeOn(to.Spec.NodeName, req, to); err != nil {
			return nil, err
		}
	}
	switch {
	case dst == nil:
		return src, nil
	case src == nil:
		return dst, nil
	}
	if len(src) != len(dst) {
		return nil, fmt.Errorf("the two sides explained %d and %d ports", len(src), len(dst))
	}
	out := make([]agentapi.Explanation, len(src))
	for i := range src {
		x := src[i]
		x.To, x.Ingress = dst[i].To, dst[i].Ingress
		x.From.Local, x.To.Local = true, true
		x.Allowed = (x.Egress == nil || x.Egress.Allowed) && (x.Ingress == nil || x.Ingress.Allowed)
		// Each side's notes, but not the ones that say the other side is
		// judged elsewhere: here it is.
		x.Notes = nil
		for _, n := range append(src[i].Notes, dst[i].Notes...) {
			if !strings.Contains(n, "is judged there") {
				x.Notes = append(x.Notes, n)
			}
		}
		x.Notes = append(x.Notes, fmt.Sprintf("judged from the API server's objects: egress as node %s's agent compiles them, ingress as node %s's",
			from.Spec.NodeName, to.Spec.NodeName))
		out[i] = x
	}
	return out, nil
}

// pod finds the pod that s (namespace/pod or an address) names; nil for an
// address no pod holds.
func (o *Objects) pod(s, flag string) (*corev1.Pod, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		for _, p := range o.Pods {
			if p.Spec.HostNetwork {
				continue
			}
			for _, ip := range p.Status.PodIPs {
				if pa, err := netip.ParseAddr(ip.IP); err == nil && pa == a.Unmap() {
					return p, nil
				}
			}
		}
		return nil, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("%s: %q is neither namespace/pod nor an IP address", flag, s)
	}
	for _, p := range o.Pods {
		if p.Namespace == ns && p.Name == name {
			if p.Spec.NodeName == "" {
				return nil, fmt.Errorf("%s: pod %s is not scheduled to a node yet", flag, s)
			}
			return p, nil
		}
	}
	return nil, fmt.Errorf("%s: pod %s not found", flag, s)
}

// judgeOn explains req on node, as that node's agent would with pods
// registered as its endpoints.
func (o *Objects) judgeOn(node string, req agentapi.ExplainRequest, pods ...*corev1.Pod) ([]agentapi.Explanation, error) {
	s := policy.State{Pods: o.Pods, Namespaces: o.Namespaces, Policies: o.Policies}
	var eps []agentapi.Endpoint
	for _, p := range pods {
		var ips []netip.Addr
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				ips = append(ips, a)
			}
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("pod %s/%s has no IP address yet", p.Namespace, p.Name)
		}
		id := "explain_" + string(p.UID)
		s.Endpoints = append(s.Endpoints, policy.Endpoint{ID: id, Pod: p, IPs: ips})
		eps = append(eps, agentapi.Endpoint{ID: id, PodNamespace: p.Namespace, PodName: p.Name, PodUID: string(p.UID), IPs: ips})
	}
	s.NodeIPs, s.RemoteNodeIPs = controller.NodeAddresses(o.Nodes, node)
	res := policy.Compile(s, identity.NewAllocator())
	xs, err := inspect.NewView(&res, o.Pods, o.Policies, eps, node).Explain(req)
	if err != nil {
		return nil, fmt.Errorf("judge on node %s: %w", node, err)
	}
	return xs, nil
}
