package policy

import (
	"slices"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// The datapath judges a new flow with one rule lookup (two LPM probes: the
// peer's identity, then the wildcard), and only an allow or a deny can come
// back. The tiers therefore never reach it: for an endpoint some cluster
// policy selects, the compiler folds Admin, NetworkPolicy and Baseline into
// one answer per peer, protocol and port range, and writes the entries that
// make the longest-prefix lookup give exactly that answer.

// answer is the verdict on one (peer, protocol, port) and the rule behind it.
type answer struct {
	deny bool
	ref  uint32
}

// isolatedMiss is what the datapath answers when no entry matches and the
// direction is isolated: deny, naming no rule.
var isolatedMiss = answer{deny: true}

// tiers is everything that judges one direction of one endpoint.
type tiers struct {
	admin, baseline []tierRule
	// npIsolated is whether a NetworkPolicy isolates the direction; np are
	// its allow rules.
	npIsolated bool
	np         []Rule
}

// protoOther stands for every protocol that is not TCP, UDP or SCTP: only
// rules for all protocols match it.
const protoOther uint8 = 255

func ruleMatches(r *Rule, peer uint32, proto uint8, port uint16) bool {
	if r.Peer != peer && r.Peer != identity.Any {
		return false
	}
	if r.Proto != ProtoAny && r.Proto != proto {
		return false
	}
	return r.Ports == (PortRange{}) || (port >= r.Ports.First && port <= r.Ports.Last)
}

func firstMatch(rules []Rule, peer uint32, proto uint8, port uint16) (*Rule, bool) {
	for i := range rules {
		if ruleMatches(&rules[i], peer, proto, port) {
			return &rules[i], true
		}
	}
	return nil, false
}

// judge is the API's order: the Admin tier by precedence (Pass leaves it),
// then NetworkPolicy, which decides for every pod it isolates, then the
// Baseline tier, then "all pods can communicate".
func (t *tiers) judge(peer uint32, proto uint8, port uint16) answer {
	if a, ok := decide(t.admin, peer, proto, port); ok {
		return a
	}
	if t.npIsolated {
		// NetworkPolicy always allows the pod's own node; the admin
		// tier, above, may deny it.
		if peer == identity.Host {
			return answer{}
		}
		if r, ok := firstMatch(t.np, peer, proto, port); ok {
			return answer{ref: r.Ref}
		}
		return isolatedMiss
	}
	if a, ok := decide(t.baseline, peer, proto, port); ok {
		return a
	}
	return answer{}
}

// decide is one tier's answer: its first matching rule's Accept or Deny, in
// precedence order. A Pass, or no match, leaves the decision to the next.
func decide(tier []tierRule, peer uint32, proto uint8, port uint16) (answer, bool) {
	for _, tr := range tier {
		r, ok := firstMatch(tr.match, peer, proto, port)
		if !ok {
			continue
		}
		if tr.action == ActionPass {
			return answer{}, false
		}
		return answer{deny: tr.action == ActionDeny, ref: r.Ref}, true
	}
	return answer{}, false
}

// rules returns every triple, in no particular order.
func (t *tiers) rules() []Rule {
	var out []Rule
	for _, tr := range t.admin {
		out = append(out, tr.match...)
	}
	out = append(out, t.np...)
	for _, tr := range t.baseline {
		out = append(out, tr.match...)
	}
	return out
}

// compile turns the tiers into the entries of one isolated direction.
// Wildcard entries make a peer no entry names get judge(Any, ...); each
// named peer gets entries where its answer differs from that. An entry
// whose Ports are a range wins over one for its whole protocol, which wins
// over one for the whole peer, as in the LPM trie.
func (t *tiers) compile() []Rule {
	all := t.rules()
	peers := map[uint32][]Rule{}
	for _, r := range all {
		if r.Peer != identity.Any {
			peers[r.Peer] = nil
		}
	}
	if t.npIsolated {
		peers[identity.Host] = nil
	}
	var wild []Rule
	for _, r := range all {
		if r.Peer == identity.Any {
			wild = append(wild, r)
		}
	}
	for _, r := range all {
		if r.Peer != identity.Any {
			peers[r.Peer] = append(peers[r.Peer], r)
		}
	}
	miss := func(uint8, uint16) answer { return isolatedMiss }
	anyAnswer := func(proto uint8, port uint16) answer { return t.judge(identity.Any, proto, port) }
	out := emit(identity.Any, wild, anyAnswer, miss)
	ids := make([]uint32, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rel := append(slices.Clone(wild), peers[id]...)
		f := func(proto uint8, port uint16) answer { return t.judge(id, proto, port) }
		out = append(out, emit(id, rel, f, anyAnswer)...)
	}
	return out
}

// emit writes the entries of peer that make the lookup answer f where,
// without them, it would answer base. rel are the triples f depends on
// besides the peer: the ports where answers can change are their bounds.
func emit(peer uint32, rel []Rule, f, base func(uint8, uint16) answer) []Rule {
	var out []Rule
	if o := f(protoOther, 0); o != base(protoOther, 0) {
		out = append(out, Rule{Peer: peer, Proto: ProtoAny, Deny: o.deny, Ref: o.ref})
		base = func(uint8, uint16) answer { return o }
	}
	for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP} {
		starts := []int{0}
		for _, r := range rel {
			if r.Proto != proto || r.Ports == (PortRange{}) {
				continue
			}
			// Port 0 is no port a flow has: it is judged with port 1, so
			// that a range from 0 does not read as every port.
			if r.Ports.First > 1 {
				starts = append(starts, int(r.Ports.First))
			}
			if r.Ports.Last < 65535 {
				starts = append(starts, int(r.Ports.Last)+1)
			}
		}
		slices.Sort(starts)
		starts = slices.Compact(starts)
		// Runs of intervals with the same answer become one range.
		cur := -1 // the entry a run extends
		for i, s := range starts {
			end := 65535
			if i+1 < len(starts) {
				end = starts[i+1] - 1
			}
			probe := uint16(max(s, 1))
			a, b := f(proto, probe), base(proto, probe)
			if a == b {
				cur = -1
				continue
			}
			if cur >= 0 && out[cur].Deny == a.deny && out[cur].Ref == a.ref {
				out[cur].Ports.Last = uint16(end)
				continue
			}
			out = append(out, Rule{Peer: peer, Proto: proto, Ports: PortRange{uint16(s), uint16(end)}, Deny: a.deny, Ref: a.ref})
			cur = len(out) - 1
		}
	}
	for i := range out {
		if out[i].Proto != ProtoAny && out[i].Ports == (PortRange{0, 65535}) {
			out[i].Ports = PortRange{} // the whole protocol: one entry
		}
	}
	return out
}
