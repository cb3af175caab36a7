package bpf

import (
	"net/netip"
	"testing"

	"github.com/palisade-cni/palisade/tests/packet"
)

var (
	subject6 = netip.MustParseAddr("fd00:10:244:1::10")
	peer6    = netip.MustParseAddr("fd00:10:244:1::20")
	other6   = netip.MustParseAddr("fd00:10:244:1::30")
	vip6     = netip.MustParseAddr("fd00:10:96::10")
)

func TestPrivilegedIPv6(t *testing.T) {
	f := newFixture(t)
	for a, id := range map[netip.Addr]uint32{peer6: peerID, other6: otherID, subject6: 299} {
		if err := f.objs.UpsertIPCache(netip.PrefixFrom(a, 128), id); err != nil {
			t.Fatal(err)
		}
	}
	f.isolate(t, FlagIngressIsolated|FlagEgressIsolated, 1,
		allow(t, peerID, tcp, PortRange{80, 80}), allow(t, peerID, packet.UDP, PortRange{5353, 5353}))
	if err := f.objs.SetService(NewServiceKey(vip6, 53, udp), 9, 0, []Backend{{peer6, 5353}}, 0); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		dir  Direction
		p    packet.Packet
		want uint32
	}{
		{"an allowed peer connects over IPv6", ToPod, packet.Packet{Src: peer6, Dst: subject6, Proto: tcp, SrcPort: 1, DstPort: 80, TCPFlags: syn}, tcActOK},
		{"another peer does not", ToPod, packet.Packet{Src: other6, Dst: subject6, Proto: tcp, SrcPort: 1, DstPort: 80, TCPFlags: syn}, tcActShot},
		{"another port does not", ToPod, packet.Packet{Src: peer6, Dst: subject6, Proto: tcp, SrcPort: 1, DstPort: 81, TCPFlags: syn}, tcActShot},
		{"neighbour solicitation to a solicited-node group passes", FromPod, packet.Packet{Src: subject6, Dst: netip.MustParseAddr("ff02::1:ff00:30"), Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255}, tcActOK},
		{"a neighbour advertisement from the link passes", ToPod, packet.Packet{Src: other6, Dst: subject6, Proto: packet.ICMPv6, ICMPType: 136, HopLimit: 255}, tcActOK},
		{"an echo request to a peer no rule admits is dropped", FromPod, packet.Packet{Src: subject6, Dst: other6, Proto: packet.ICMPv6, ICMPType: 128, SrcPort: 5}, tcActShot},
		{"a multicast listener report behind a hop-by-hop header passes", FromPod, packet.Packet{Src: subject6, Dst: netip.MustParseAddr("ff02::16"), Proto: packet.ICMPv6, ICMPType: 143, HopByHop: true}, tcActOK},
		{"TCP behind a hop-by-hop header is judged on its ports: admitted", ToPod, packet.Packet{Src: peer6, Dst: subject6, Proto: tcp, SrcPort: 2, DstPort: 80, TCPFlags: syn, HopByHop: true}, tcActOK},
		{"TCP behind a hop-by-hop header is judged on its ports: denied", ToPod, packet.Packet{Src: peer6, Dst: subject6, Proto: tcp, SrcPort: 3, DstPort: 81, TCPFlags: syn, HopByHop: true}, tcActShot},
		{"the reply of an admitted connection comes back", FromPod, packet.Packet{Src: subject6, Dst: peer6, Proto: tcp, SrcPort: 80, DstPort: 1, TCPFlags: syn | ack}, tcActOK},
	}
	for _, s := range steps {
		if got := f.run(t, s.dir, s.p.Frame()); got != s.want {
			t.Errorf("%s: verdict %d, want %d", s.name, got, s.want)
		}
	}

	// A query to an IPv6 Service is translated, with a valid checksum, and
	// judged against the backend.
	q := packet.Packet{Src: subject6, Dst: vip6, Proto: udp, SrcPort: 40000, DstPort: 53}
	verdict, data := f.runOut(t, FromPod, q.Frame())
	got := packet.Decode(data)
	if verdict != tcActOK || got.Dst != peer6 || got.DstPort != 5353 || !got.ChecksumsOK {
		t.Errorf("IPv6 Service query: verdict %d, %+v", verdict, got)
	}
	r := packet.Packet{Src: peer6, Dst: subject6, Proto: udp, SrcPort: 5353, DstPort: 40000}
	verdict, data = f.runOut(t, ToPod, r.Frame())
	got = packet.Decode(data)
	if verdict != tcActOK || got.Src != vip6 || got.SrcPort != 53 || !got.ChecksumsOK {
		t.Errorf("IPv6 Service reply: verdict %d, %+v", verdict, got)
	}
}
