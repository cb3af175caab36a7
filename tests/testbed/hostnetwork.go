package testbed

import (
	"context"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// AddHostNetworkPod does what a kubelet does for a hostNetwork pod bound
// to the node: no sandbox and no CNI, the pod's addresses are the node's,
// and its ports are served in the node's own network namespace. No
// Palisade program sees what it receives (it has no veth), and what it
// sends leaves from the node, which is what node peers of a
// ClusterNetworkPolicy and a NetworkPolicy's ipBlock of node addresses
// are about. Cleanup stops the responders and deletes the Pod object.
func (n *Node) AddHostNetworkPod(tb TB, pod *corev1.Pod) *Pod {
	tb.Helper()
	spec := pod.DeepCopy()
	spec.Spec.NodeName = n.Name
	spec.Spec.HostNetwork = true
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[UnmanagedAnnotation] = "true"
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	pods := n.cp.Client.CoreV1().Pods(spec.Namespace)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	created, err := pods.Create(ctx, spec, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create hostNetwork pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		zero := int64(0)
		if err := pods.Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			tb.Errorf("delete pod %s/%s: %v", created.Namespace, created.Name, err)
		}
	})
	// A closed port of the pod is a closed port of the node: Refused every
	// time, as for a pod (PreparePod).
	limits := []string{"net/ipv4/icmp_ratelimit"}
	if n.DualStack {
		limits = append(limits, "net/ipv6/icmp/ratelimit")
	}
	for _, key := range limits {
		if err := n.NetNS.Sysctl(key, "0"); err != nil {
			tb.Fatalf("node %s: %v", n.Name, err)
		}
	}
	p := &Pod{
		Name:        created.Name,
		Namespace:   created.Namespace,
		UID:         string(created.UID),
		NetNS:       n.NetNS,
		Node:        n,
		spec:        created,
		ip:          n.IP,
		hostNetwork: true,
	}
	p.Serve(tb)
	return p
}

// HostNetwork says whether p shares its node's network namespace.
func (p *Pod) HostNetwork() bool { return p.hostNetwork }

// hostIPv6 is a hostNetwork pod's IPv6 address: its node's, on a
// dual-stack node.
func (p *Pod) hostIPv6() (netip.Addr, bool) {
	return p.Node.IP6, p.Node.DualStack && p.Node.IP6.IsValid()
}

// udpAddrs are the addresses a pod's UDP responders bind: every one for a
// pod with a netns of its own; a hostNetwork pod's own, as agnhost netexec
// binds them (--udp-listen-addresses), because a wildcard socket in the
// node would answer a pod from the bridge's address, which the pod's
// connected socket does not accept.
func (p *Pod) udpAddrs() []netip.Addr {
	if !p.hostNetwork {
		return nil
	}
	addrs := []netip.Addr{p.IP()}
	if ip6, ok := p.IPv6(); ok {
		addrs = append(addrs, ip6)
	}
	return addrs
}
