package testbed

import (
	"fmt"
	"net/netip"
)

// ClusterCIDR6 is the pods' IPv6 range in a dual-stack testbed; node N
// gets fd00:10:244:N::/64 (N in hex, as in any IPv6 address).
var ClusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/56")

// UnderlayPrefix6 is the node network's IPv6 half: a dual-stack node's eth0
// also has fd00:198:18::(10+N)/64, which flanneld's IPv6 VXLAN tunnels
// start from (flanneld takes its public-ipv6 from --iface).
var UnderlayPrefix6 = netip.MustParsePrefix("fd00:198:18::/64")

// WithDualStack gives pods an IPv6 address too on a bridge-chain node:
// host-local with two ranges, as a dual-stack Flannel node delegates to the
// bridge plugin. A DualStackNode gives every pod both families without it.
func WithDualStack() CNIOption { return func(o *cniOptions) { o.dualStack = true } }

// NodeOption shapes a node AddNetworkNode makes.
type NodeOption func(*Node)

// DualStackNode makes a dual-stack node, as a dual-stack cluster's nodes
// are: an IPv6 underlay address next to the IPv4 one, both pod CIDRs in
// spec.podCIDRs (IPv4 first), and both families forwarded. On Flannel,
// flanneld runs with EnableIPv6 and IPv6Network in net-conf.json, so its
// subnet.env carries FLANNEL_IPV6_SUBNET and kube-flannel's unmodified
// conflist gives every pod an address of each family (the flannel CNI
// plugin hands host-local one range per family). On the bridge chain every
// pod gets both families, as with WithDualStack, and the nodes route each
// other's IPv6 pod CIDR too.
func DualStackNode() NodeOption { return func(n *Node) { n.DualStack = true } }

// PodCIDR6 is the node's IPv6 pod range.
func (n *Node) PodCIDR6() netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", n.Index))
}

// nodeIP6 is node index's IPv6 underlay address, fd00:198:18::(10+index).
func nodeIP6(index int) netip.Addr {
	b := UnderlayPrefix6.Addr().As16()
	b[15] = byte(10 + index)
	return netip.AddrFrom16(b)
}

// IPv6 is the pod's IPv6 address, if the chain gave it one.
func (p *Pod) IPv6() (netip.Addr, bool) {
	if p.hostNetwork {
		return p.hostIPv6()
	}
	res := p.Result()
	if res == nil {
		return netip.Addr{}, false
	}
	for _, ipc := range res.IPs {
		// bridge lists its own gateway interface too; skip host-side ones.
		if i := ipc.Interface; i != nil && *i < len(res.Interfaces) && res.Interfaces[*i].Sandbox == "" {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Is6() && !a.Is4In6() {
			return a, true
		}
	}
	return netip.Addr{}, false
}
