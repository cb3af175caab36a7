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
	ok, _ := r.Verdict(id, d, peer, proto, port)
	return ok
}

// Verdict is Allows with the rule that decided (a key of Refs), 0 when no
// rule did: no isolation, the node itself (allowed by NetworkPolicy), or an
// isolated direction no entry matches.
func (r *Result) Verdict(id string, d Direction, peer netip.Addr, proto uint8, port uint16) (bool, uint32) {
	ep, ok := r.Endpoints[id]
	if !ok {
		return false, 0 // no endpoint entry: the datapath drops
	}
	rules, isolated, tiered := ep.Ingress, ep.IngressIsolated, ep.IngressTiered
	if d == Egress {
		rules, isolated, tiered = ep.Egress, ep.EgressIsolated, ep.EgressTiered
	}
	if !isolated {
		return true, 0
	}
	pid := r.IdentityOf(peer)
	// The node's entry (HostEntries) where NetworkPolicy alone judges;
	// the tiers' rules carry their own answer for it.
	if pid == identity.Host && !tiered {
		return true, 0
	}
	// The peer's own entries first, then the wildcard's: two probes of
	// the LPM trie, each taking the longest match.
	for _, p := range []uint32{pid, identity.Any} {
		if rule, ok := lookup(rules, p, proto, port); ok {
			return !rule.Deny, rule.Ref
		}
	}
	return false, 0
}

// lookup is one probe of the LPM trie: among the rules of peer that match,
// one for a port range beats one for the whole protocol, which beats one
// for every protocol. Rules that overlap at the same level all allow.
func lookup(rules []Rule, peer uint32, proto uint8, port uint16) (Rule, bool) {
	best, level := Rule{}, -1
	for _, r := range rules {
		if r.Peer != peer {
			continue
		}
		l := 0
		switch {
		case r.Proto == ProtoAny:
		case r.Proto != proto:
			continue
		case r.Ports == (PortRange{}):
			l = 1
		case port >= r.Ports.First && port <= r.Ports.Last:
			l = 2
		default:
			continue
		}
		if l > level {
			best, level = r, l
		}
	}
	return best, level >= 0
}
