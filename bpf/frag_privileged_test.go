package bpf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/palisade-cni/palisade/tests/packet"
)

// family is one address family's cast of the fixture.
type family struct {
	name                 string
	subject, peer, other netip.Addr
	vip                  netip.Addr
}

var families = []family{
	{"IPv4", subjectIP, peerIP, otherIP, vip},
	{"IPv6", subject6, peer6, other6, vip6},
}

// datagram is a 4 000-byte UDP datagram in fragments of at most 1 480 bytes
// of payload, as a pod with a 1 500-byte MTU sends it: three fragments.
func datagram(src, dst netip.Addr, sport, dport uint16, id uint32) [][]byte {
	p := pkt{Src: src, Dst: dst, Proto: udp, SrcPort: sport, DstPort: dport, Payload: make([]byte, 4000)}
	return p.Fragments(1480, id)
}

func TestPrivilegedFragmentsFollowTheirFirst(t *testing.T) {
	type send struct {
		from  string // "peer" or "other"
		port  uint16
		id    uint32
		which []int // fragment indexes sent, in order
		want  uint32
	}
	tests := []struct {
		name      string
		sends     []send
		fragDrops uint64 // drops counted as fragment
	}{{
		name:  "every fragment of an allowed datagram passes",
		sends: []send{{"peer", 5353, 1, []int{0, 1, 2}, tcActOK}},
	}, {
		name:      "every fragment of a denied datagram is dropped",
		sends:     []send{{"other", 5353, 2, []int{0}, tcActShot}, {"other", 5353, 2, []int{1, 2}, tcActShot}},
		fragDrops: 2,
	}, {
		name:      "fragments whose first was never seen are dropped",
		sends:     []send{{"peer", 5353, 3, []int{1, 2}, tcActShot}},
		fragDrops: 2,
	}, {
		name: "a denied datagram reusing an allowed one's identification does not inherit its verdict",
		sends: []send{
			{"peer", 5353, 4, []int{0}, tcActOK},
			{"peer", 9999, 4, []int{0}, tcActShot},
			{"peer", 9999, 4, []int{1, 2}, tcActShot},
		},
		fragDrops: 2,
	}, {
		name: "interleaved datagrams each follow their own first",
		sends: []send{
			{"peer", 5353, 5, []int{0}, tcActOK},
			{"other", 5353, 6, []int{0}, tcActShot},
			{"other", 5353, 6, []int{1}, tcActShot},
			{"peer", 5353, 5, []int{1}, tcActOK},
			{"other", 5353, 6, []int{2}, tcActShot},
			{"peer", 5353, 5, []int{2}, tcActOK},
		},
		fragDrops: 2,
	}, {
		name: "the datagram is forgotten once its last fragment passed",
		sends: []send{
			{"peer", 5353, 7, []int{0, 1, 2}, tcActOK},
			{"peer", 5353, 7, []int{1}, tcActShot},
		},
		fragDrops: 1,
	}}
	for _, fam := range families {
		for _, tt := range tests {
			t.Run(fam.name+"/"+tt.name, func(t *testing.T) {
				f := newFixture(t)
				f.addIPv6(t)
				f.isolate(t, FlagIngressIsolated, 1, allow(t, peerID, udp, PortRange{5353, 5353}), nil)
				for i, s := range tt.sends {
					src := fam.peer
					if s.from == "other" {
						src = fam.other
					}
					frags := datagram(src, fam.subject, 40000, s.port, s.id)
					for _, n := range s.which {
						if got := f.run(t, ToPod, frags[n]); got != s.want {
							t.Errorf("send %d, fragment %d of datagram %d from %s: verdict %d, want %d", i, n, s.id, s.from, got, s.want)
						}
					}
				}
				drops, err := f.objs.Drops()
				if err != nil {
					t.Fatal(err)
				}
				if drops[ReasonFragment] != tt.fragDrops {
					t.Errorf("fragment drops = %d, want %d", drops[ReasonFragment], tt.fragDrops)
				}
			})
		}
	}
}

// Every fragment of a datagram to a Service goes to the backend its first
// fragment was given, and every fragment of the reply appears to come from
// the Service; reassembled, both datagrams have valid checksums.
func TestPrivilegedFragmentsThroughAService(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			f := newFixture(t)
			f.addIPv6(t)
			if err := f.objs.SetService(NewServiceKey(fam.vip, 53, udp), 1, 0, []Backend{{fam.peer, 5353}}, 0); err != nil {
				t.Fatal(err)
			}
			f.isolate(t, FlagEgressIsolated|FlagIngressIsolated, 1, nil, allow(t, peerID, udp, PortRange{5353, 5353}))

			out := f.runAll(t, FromPod, datagram(fam.subject, fam.vip, 40000, 53, 11))
			for i, fr := range out {
				if got := packet.Addrs(fr); got.Dst != fam.peer || !packet.IPv4HeaderOK(fr) {
					t.Errorf("query fragment %d: destination %s (header ok %v), want %s", i, got.Dst, packet.IPv4HeaderOK(fr), fam.peer)
				}
			}
			checkWhole(t, "query", out, fam.subject, 40000, fam.peer, 5353)

			back := f.runAll(t, ToPod, datagram(fam.peer, fam.subject, 5353, 40000, 12))
			for i, fr := range back {
				if got := packet.Addrs(fr); got.Src != fam.vip || !packet.IPv4HeaderOK(fr) {
					t.Errorf("reply fragment %d: source %s (header ok %v), want %s", i, got.Src, packet.IPv4HeaderOK(fr), fam.vip)
				}
			}
			checkWhole(t, "reply", back, fam.vip, 53, fam.subject, 40000)
		})
	}
}

// runAll runs the program for d on each fragment, which must all pass, and
// returns them as the program left them.
func (f *fixture) runAll(t *testing.T, d Direction, frags [][]byte) [][]byte {
	t.Helper()
	var out [][]byte
	for i, fr := range frags {
		verdict, data := f.runOut(t, d, fr)
		if verdict != tcActOK {
			t.Fatalf("%s fragment %d: verdict %d, want pass", d, i, verdict)
		}
		out = append(out, data[:len(fr)])
	}
	return out
}

// checkWhole reassembles frags and checks the datagram's tuple and
// checksums.
func checkWhole(t *testing.T, what string, frags [][]byte, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) {
	t.Helper()
	whole, err := packet.Reassemble(frags)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	got := packet.Decode(whole)
	want := packet.Decoded{Src: src, Dst: dst, SrcPort: sport, DstPort: dport, ChecksumsOK: true}
	if got != want {
		t.Errorf("%s reassembled: %s, want %s", what, decoded(got), decoded(want))
	}
}

func decoded(d packet.Decoded) string {
	return fmt.Sprintf("%s:%d -> %s:%d (checksums ok: %v)", d.Src, d.SrcPort, d.Dst, d.DstPort, d.ChecksumsOK)
}
