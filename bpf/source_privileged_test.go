package bpf

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/tests/packet"
)

// Link-scoped addresses of the source tests.
var (
	node6         = netip.MustParseAddr("fd00:10:244:1::1")
	subjectLL     = netip.MustParseAddr("fe80::10")
	routerLL      = netip.MustParseAddr("fe80::1")
	unspecified6  = netip.IPv6Unspecified()
	allNodes      = netip.MustParseAddr("ff02::1")
	allRouters    = netip.MustParseAddr("ff02::2")
	mldv2Routers  = netip.MustParseAddr("ff02::16")
	solicitedNode = netip.MustParseAddr("ff02::1:ff00:10") // of subject6, for DAD
	subjectMAC    = [6]byte{0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x0a}
)

// ICMPv6 types of neighbour and multicast listener discovery.
const (
	mldQuery    = 130
	mldReport   = 131
	mldv2Report = 143
	ndRS        = 133
	ndRA        = 134
	ndNS        = 135
	ndNA        = 136
	ndRedirect  = 137
)

// nd is an ND or MLD message from src to dst; target is the NS/NA target.
func nd(typ uint8, src, dst netip.Addr, hopLimit uint8, target netip.Addr) []byte {
	p := packet.Packet{Src: src, Dst: dst, Proto: packet.ICMPv6, ICMPType: typ, HopLimit: hopLimit}
	if target.IsValid() {
		t := target.As16()
		p.Payload = t[:]
	}
	if typ == mldReport || typ == mldv2Report {
		p.HopByHop = true
	}
	return p.Frame()
}

// TestPrivilegedWhoseSource runs what a pod sends through pal_from_pod: its
// own addresses pass; another pod's, the node's, or a link-scoped message
// that leaves its link is dropped as spoofed, before any policy (the pod
// here is isolated by none). What the pod receives is not judged by source;
// only ND that crossed a router is dropped.
func TestPrivilegedWhoseSource(t *testing.T) {
	f := newFixture(t)
	for a, id := range map[netip.Addr]uint32{peer6: peerID, node6: IdentityHost, subject6: 299} {
		if err := f.objs.UpsertIPCache(netip.PrefixFrom(a, 128), id); err != nil {
			t.Fatal(err)
		}
	}
	f.isolate(t, 0, 1, nil, nil)
	udp4 := func(src, dst netip.Addr) []byte {
		return pkt{Src: src, Dst: dst, Proto: udp, SrcPort: 40000, DstPort: 5432}.Frame()
	}
	tcp4 := func(src, dst netip.Addr) []byte {
		return pkt{Src: src, Dst: dst, Proto: tcp, SrcPort: 40001, DstPort: 5432, TCPFlags: syn}.Frame()
	}
	none := netip.Addr{}
	tests := []struct {
		name string
		dir  Direction
		pkt  []byte
		want int // reason: ReasonAllowed passes
	}{
		{"UDP from the pod's own IPv4 address", FromPod, udp4(subjectIP, peerIP), ReasonAllowed},
		{"TCP from the pod's own IPv4 address", FromPod, tcp4(subjectIP, peerIP), ReasonAllowed},
		{"UDP from the pod's own IPv6 address", FromPod, udp4(subject6, peer6), ReasonAllowed},
		{"UDP from another pod's IPv4 address", FromPod, udp4(peerIP, otherIP), ReasonSpoofed},
		{"TCP from another pod's IPv4 address", FromPod, tcp4(peerIP, otherIP), ReasonSpoofed},
		{"UDP from another pod's IPv6 address", FromPod, udp4(peer6, other6), ReasonSpoofed},
		{"UDP from the node's IPv4 address", FromPod, udp4(nodeIP, peerIP), ReasonSpoofed},
		{"UDP from the node's IPv6 address", FromPod, udp4(node6, peer6), ReasonSpoofed},
		{"UDP from an address outside the cluster", FromPod, udp4(worldIP, peerIP), ReasonSpoofed},
		{"UDP from 0.0.0.0", FromPod, udp4(netip.IPv4Unspecified(), peerIP), ReasonSpoofed},
		{"UDP from a link-local address: only ND and MLD may", FromPod, udp4(subjectLL, routerLL), ReasonSpoofed},
		{"UDP from :: to a multicast group: only ND and MLD may", FromPod, udp4(unspecified6, allNodes), ReasonSpoofed},
		{"ICMP echo from another pod's address", FromPod, pkt{Src: peerIP, Dst: otherIP, Proto: icmp, ICMPType: 8, SrcPort: 9}.Frame(), ReasonSpoofed},

		{"ARP request for the pod's own address", FromPod, packet.ARP(packet.ARPRequest, subjectMAC, subjectIP, nodeIP), ReasonAllowed},
		{"ARP reply for the pod's own address", FromPod, packet.ARP(packet.ARPReply, subjectMAC, subjectIP, peerIP), ReasonAllowed},
		{"ARP probe from 0.0.0.0", FromPod, packet.ARP(packet.ARPRequest, subjectMAC, netip.IPv4Unspecified(), subjectIP), ReasonAllowed},
		{"ARP reply claiming another pod's address", FromPod, packet.ARP(packet.ARPReply, subjectMAC, peerIP, otherIP), ReasonSpoofed},
		{"gratuitous ARP claiming the node's address", FromPod, packet.ARP(packet.ARPRequest, subjectMAC, nodeIP, nodeIP), ReasonSpoofed},

		{"NS from the own link-local address to a solicited-node group", FromPod, nd(ndNS, subjectLL, netip.MustParseAddr("ff02::1:ff00:1"), 255, node6), ReasonAllowed},
		{"NS from :: for duplicate address detection", FromPod, nd(ndNS, unspecified6, solicitedNode, 255, subject6), ReasonAllowed},
		{"NS from the own address to the gateway's link-local address", FromPod, nd(ndNS, subject6, routerLL, 255, routerLL), ReasonAllowed},
		{"NS probing the gateway's global address, the node's", FromPod, nd(ndNS, subject6, node6, 255, node6), ReasonAllowed},
		{"RS to all routers", FromPod, nd(ndRS, subjectLL, allRouters, 255, none), ReasonAllowed},
		{"NA for the pod's own address", FromPod, nd(ndNA, subjectLL, allNodes, 255, subject6), ReasonAllowed},
		{"NA for the pod's own link-local address", FromPod, nd(ndNA, subjectLL, routerLL, 255, subjectLL), ReasonAllowed},
		{"MLDv2 report from the link-local address", FromPod, nd(mldv2Report, subjectLL, mldv2Routers, 1, none), ReasonAllowed},
		{"MLDv2 report from ::", FromPod, nd(mldv2Report, unspecified6, mldv2Routers, 1, none), ReasonAllowed},
		{"NS probing a neighbour pod at its global address", FromPod, nd(ndNS, subject6, peer6, 255, peer6), ReasonAllowed},
		{"solicited NA to the soliciting neighbour's global address", FromPod, nd(ndNA, subject6, peer6, 255, subject6), ReasonAllowed},
		{"NS to a pod of another node's subnet", FromPod, nd(ndNS, subject6, netip.MustParseAddr("fd00:10:244:2::5"), 255, none), ReasonSpoofed},
		{"NS to an address outside the cluster", FromPod, nd(ndNS, subject6, netip.MustParseAddr("2001:db8::9"), 255, none), ReasonSpoofed},
		{"NA to an address outside the cluster", FromPod, nd(ndNA, subject6, netip.MustParseAddr("2001:db8::9"), 255, subject6), ReasonSpoofed},
		{"NS to the IPv4-mapped form of the pod's own IPv4 network", FromPod, nd(ndNS, subject6, netip.MustParseAddr("::ffff:10.244.1.20"), 255, none), ReasonSpoofed},
		{"NS with hop limit 64", FromPod, nd(ndNS, subjectLL, solicitedNode, 64, subject6), ReasonSpoofed},
		{"NS from another pod's address", FromPod, nd(ndNS, peer6, solicitedNode, 255, subject6), ReasonSpoofed},
		{"NA claiming another pod's address", FromPod, nd(ndNA, subjectLL, allNodes, 255, peer6), ReasonSpoofed},
		{"NA claiming the node's address", FromPod, nd(ndNA, subjectLL, allNodes, 255, node6), ReasonSpoofed},
		{"router advertisement", FromPod, nd(ndRA, subjectLL, allNodes, 255, none), ReasonSpoofed},
		{"redirect", FromPod, nd(ndRedirect, subjectLL, routerLL, 255, routerLL), ReasonSpoofed},
		{"MLD report to a unicast address", FromPod, nd(mldReport, subjectLL, peer6, 1, none), ReasonSpoofed},
		{"MLDv2 report to a link-local unicast address", FromPod, nd(mldv2Report, subjectLL, routerLL, 1, none), ReasonSpoofed},

		{"what the pod receives is not judged by its source", ToPod, udp4(worldIP, subjectIP), ReasonAllowed},
		{"ARP the pod receives passes", ToPod, packet.ARP(packet.ARPReply, subjectMAC, peerIP, subjectIP), ReasonAllowed},
		{"ND the pod receives from its link passes", ToPod, nd(ndNA, routerLL, allNodes, 255, node6), ReasonAllowed},
		{"NS the pod receives after a router (hop limit 254)", ToPod, nd(ndNS, other6, subject6, 254, subject6), ReasonSpoofed},
		{"NA the pod receives after a router (hop limit 254)", ToPod, nd(ndNA, netip.MustParseAddr("2001:db8::9"), subject6, 254, none), ReasonSpoofed},
		{"MLD query the pod receives with hop limit 1", ToPod, nd(mldQuery, routerLL, allNodes, 1, none), ReasonAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := verdictCount(t, f, tt.dir, ReasonSpoofed)
			got := f.runPinned(t, tt.dir, tt.pkt)[0]
			want := tcActOK
			if tt.want != ReasonAllowed {
				want = tcActShot
			}
			if got != want {
				t.Errorf("verdict %d, want %d", got, want)
			}
			wantSpoofed := uint64(0)
			if tt.want == ReasonSpoofed {
				wantSpoofed = 1
			}
			if n := verdictCount(t, f, tt.dir, ReasonSpoofed) - before; n != wantSpoofed {
				t.Errorf("spoofed drops counted %d, want %d", n, wantSpoofed)
			}
		})
	}
}

// TestPrivilegedSpoofedEmitsEvent checks that a spoofed packet is counted
// in pal_drops and reported with the address it claimed.
func TestPrivilegedSpoofedEmitsEvent(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, 0, 1, nil, nil)
	f.runPinned(t, FromPod, pkt{Src: peerIP, Dst: otherIP, Proto: udp, SrcPort: 40000, DstPort: 53}.Frame(),
		packet.ARP(packet.ARPReply, subjectMAC, nodeIP, otherIP))
	want := []eventView{
		{Src: peerIP.String(), Dst: otherIP.String(), SrcPort: 40000, DstPort: 53, Proto: udp, Reason: ReasonSpoofed, Ifindex: uint32(f.ifindex)},
		{Src: nodeIP.String(), Dst: otherIP.String(), Reason: ReasonSpoofed, Ifindex: uint32(f.ifindex)},
	}
	var got []eventView
	for _, ev := range readEvents(t, f) {
		got = append(got, view(ev))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	drops, err := f.objs.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops[ReasonSpoofed] != 2 {
		t.Errorf("spoofed drops = %d, want 2", drops[ReasonSpoofed])
	}
}

// TestPrivilegedEndpointWithoutAddressesSendsNothing: an entry written
// without addresses (an agent bug) fails closed.
func TestPrivilegedEndpointWithoutAddressesSendsNothing(t *testing.T) {
	f := newFixture(t)
	if err := f.objs.SetEndpoint(f.ifindex, EndpointInfo{Revision: 1, Identity: 299, RuleSet: f.set()}); err != nil {
		t.Fatal(err)
	}
	if got := f.run(t, FromPod, pkt{Src: subjectIP, Dst: peerIP, Proto: udp, SrcPort: 1, DstPort: 2}.Frame()); got != tcActShot {
		t.Errorf("verdict %d, want drop", got)
	}
}
