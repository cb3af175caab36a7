package policy

import (
	"math/rand/v2"
	"testing"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// lookupChain is what the datapath does with an isolated direction's
// entries: the peer's probe, then the wildcard's, then deny.
func lookupChain(rules []Rule, peer uint32, proto uint8, port uint16) answer {
	for _, p := range []uint32{peer, identity.Any} {
		if r, ok := lookup(rules, p, proto, port); ok {
			return answer{deny: r.Deny, ref: r.Ref}
		}
	}
	return isolatedMiss
}

// TestTiersCompileAgreesWithJudge checks the folding of the tiers into
// entries on random tiers: for every peer, protocol and port probed, the
// longest-prefix lookup of the entries gives what the tiers' order gives.
func TestTiersCompileAgreesWithJudge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	peers := []uint32{identity.Any, 300, 301}
	protos := []uint8{ProtoAny, ProtoTCP, ProtoUDP, ProtoSCTP}
	actions := []string{ActionAccept, ActionDeny, ActionPass}
	randRule := func(ref uint32) Rule {
		r := Rule{Peer: peers[rng.IntN(len(peers))], Proto: protos[rng.IntN(len(protos))], Ref: ref}
		if r.Proto != ProtoAny && rng.IntN(3) > 0 {
			first := uint16(1 + rng.IntN(100))
			r.Ports = PortRange{first, first + uint16(rng.IntN(20))}
		}
		return r
	}
	randTier := func(base uint32) []tierRule {
		var out []tierRule
		for i := range rng.IntN(4) {
			tr := tierRule{action: actions[rng.IntN(3)]}
			for range 1 + rng.IntN(3) {
				tr.match = append(tr.match, randRule(base+uint32(i)))
			}
			out = append(out, tr)
		}
		return out
	}
	probePorts := []uint16{0, 1, 2, 50, 99, 100, 101, 119, 120, 121, 65535}
	for i := 1; i < 125; i++ {
		probePorts = append(probePorts, uint16(i))
	}
	for iter := range 2000 {
		tt := tiers{admin: randTier(1000), baseline: randTier(2000), npIsolated: rng.IntN(2) == 0}
		for range rng.IntN(3) {
			r := randRule(3000)
			tt.np = append(tt.np, r)
		}
		entries := tt.compile()
		for _, peer := range []uint32{300, 301, 302} {
			for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP, 1} {
				for _, port := range probePorts {
					want := tt.judge(peer, proto, max(port, 1))
					if proto == 1 {
						want = tt.judge(peer, protoOther, 0)
					}
					if got := lookupChain(entries, peer, proto, port); got != want {
						t.Fatalf("iteration %d: peer %d proto %d port %d: entries answer %+v, tiers %+v\ntiers %+v\nentries %+v",
							iter, peer, proto, port, got, want, tt, entries)
					}
				}
			}
		}
	}
}
