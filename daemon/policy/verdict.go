package policy

import (
	"net/netip"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// Direction is a direction of traffic from the endpoint's point of view.
type Direction int

const (
	Ingress Direction = iota
	Egress
)

// IdentityOf returns the identity the datapath gives address a: the
// longest ipcache prefix holding it, or World.
func (r *Result) IdentityOf(a netip.Addr) uint32 {
	for bits := a.BitLen(); bits >= 0; bits-- {
		p, _ := a.Prefix(bits)
		if id, ok := r.IPCache[p]; ok {
			return id
		}
	}
	return identity.World
}

// Allows answers what the datapath answers for the first packet of a flow
// between endpoint id and peer, with proto and the flow's destination port,
// in direction d. It walks the compiled rules the same way the programs walk
// their maps, so explanations and tests judge what is enforced.
func (r *Result) Allows(id string, d Direction, peer netip.Addr, proto uint8, port uint16) bool {
	ep, ok := r.Endpoints[id]
	if !ok {
		return false // no endpoint entry: the datapath drops
	}
	rules, isolated := ep.Ingress, ep.IngressIsolated
	if d == Egress {
		rules, isolated = ep.Egress, ep.EgressIsolated
	}
	if !isolated {
		return true
	}
	pid := r.IdentityOf(peer)
	if pid == identity.Host {
		return true
	}
	for _, rule := range rules {
		if rule.Peer != pid && rule.Peer != identity.Any {
			continue
		}
		if rule.Proto != ProtoAny && rule.Proto != proto {
			continue
		}
		if rule.Ports == (PortRange{}) || (port >= rule.Ports.First && port <= rule.Ports.Last) {
			return true
		}
	}
	return false
}
