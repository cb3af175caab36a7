package service

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// NodeAddrs returns, sorted, the addresses by which a pod reaches a node:
// the ones NodePort entries apply to. They are every Node's status
// addresses (InternalIP, ExternalIP), the first two addresses of each
// node's pod CIDRs, and own, this node's interface addresses. The pod
// CIDR's network address is Flannel's VTEP (flannel.1) and the next one the
// cni0 bridge's gateway: both are a node's own, routed to it from every pod,
// and kube-proxy's iptables mode accepts NodePorts on every local address.
// An address a pod holds is left out, whatever the convention says: pod to
// pod traffic must never be taken for a NodePort.
func NodeAddrs(nodes []*corev1.Node, pods []*corev1.Pod, own []netip.Addr) []netip.Addr {
	var out []netip.Addr
	add := func(a netip.Addr) {
		a = a.Unmap()
		if a.IsValid() && !a.IsUnspecified() && !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	for _, a := range own {
		add(a)
	}
	for _, n := range nodes {
		for _, na := range n.Status.Addresses {
			if a, err := netip.ParseAddr(na.Address); err == nil {
				add(a)
			}
		}
		for _, c := range podCIDRs(n) {
			add(c.Masked().Addr())
			add(c.Masked().Addr().Next())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	// The candidates are a few per node and the pods many: look each pod
	// address up among the candidates rather than building a set of every
	// pod address at every sync (~1 MB of garbage at 10 000 pods).
	var held []netip.Addr
	for _, p := range pods {
		if p.Spec.HostNetwork {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				if _, found := slices.BinarySearchFunc(out, a.Unmap(), netip.Addr.Compare); found {
					held = append(held, a.Unmap())
				}
			}
		}
	}
	return slices.DeleteFunc(out, func(a netip.Addr) bool { return slices.Contains(held, a) })
}

// podCIDRs parses a Node's pod CIDRs (spec.podCIDRs, or the older
// spec.podCIDR alone).
func podCIDRs(n *corev1.Node) []netip.Prefix {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range cidrs {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}
