package testbed

import (
	"fmt"
	"net/netip"
)

// ClusterCIDR6 is the pods' IPv6 range in a dual-stack testbed; node N
// gets fd00:10:244:N::/64.
var ClusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/56")

// WithDualStack gives pods an IPv6 address too: host-local with two ranges,
// as a dual-stack Flannel node delegates to the bridge plugin.
func WithDualStack() CNIOption { return func(o *cniOptions) { o.dualStack = true } }

// PodCIDR6 is the node's IPv6 pod range.
func (n *Node) PodCIDR6() netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", n.Index))
}

// IPv6 is the pod's IPv6 address, if the chain gave it one.
func (p *Pod) IPv6() (netip.Addr, bool) {
	res := p.Result()
	if res == nil {
		return netip.Addr{}, false
	}
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Is6() && !a.Is4In6() {
			return a, true
		}
	}
	return netip.Addr{}, false
}
