package testbed

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
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
	spec.Spec.HostNetwork = true
	created := n.createPod(tb, spec)
	// A closed port of the pod is a closed port of the node.
	noICMPRateLimit(tb, n.NetNS, n.DualStack)
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
	return p.Node.IP6, p.Node.IP6.IsValid()
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
