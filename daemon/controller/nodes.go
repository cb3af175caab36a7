package controller

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// nodeAddresses splits the cluster's node addresses into this node's (self)
// and the others'. A node is known by every address in its status and by
// the first address of each of its pod CIDRs: Flannel's VXLAN backend gives
// that address to the node's flannel.1 device (10.244.N.0/32 for pod CIDR
// 10.244.N.0/24), and a node reaching a pod on another node through the
// overlay sends from it, not from its InternalIP. No pod ever gets it:
// host-local hands out addresses from the first after it.
func nodeAddresses(nodes []*corev1.Node, self string) (own, remote []netip.Addr) {
	for _, n := range nodes {
		var addrs []netip.Addr
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				addrs = append(addrs, ip)
			}
		}
		for _, cidr := range podCIDRs(n) {
			if p, err := netip.ParsePrefix(cidr); err == nil {
				addrs = append(addrs, p.Masked().Addr())
			}
		}
		if n.Name == self {
			own = append(own, addrs...)
		} else {
			remote = append(remote, addrs...)
		}
	}
	return own, remote
}

// nodeLabels maps the addresses of the other nodes (nodeAddresses' remote)
// to their node's labels, which cluster policies' nodes peers select.
func nodeLabels(nodes []*corev1.Node, self string) map[netip.Addr]map[string]string {
	out := map[netip.Addr]map[string]string{}
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		_, remote := nodeAddresses([]*corev1.Node{n}, self)
		for _, a := range remote {
			out[a] = n.Labels
		}
	}
	return out
}

// podCIDRs are the node's pod ranges; spec.podCIDR alone on objects written
// before podCIDRs existed.
func podCIDRs(n *corev1.Node) []string {
	if len(n.Spec.PodCIDRs) > 0 {
		return n.Spec.PodCIDRs
	}
	if n.Spec.PodCIDR != "" {
		return []string{n.Spec.PodCIDR}
	}
	return nil
}

// NodeAddresses is what the agent of node self counts as its own node's
// addresses and the other nodes', from the Node objects alone: palisadectl
// explain --all-nodes judges a flow as that agent would.
func NodeAddresses(nodes []*corev1.Node, self string) (own, remote []netip.Addr) {
	return nodeAddresses(nodes, self)
}
