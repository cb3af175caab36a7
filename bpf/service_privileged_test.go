package bpf

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/palisade-cni/palisade/tests/packet"
)

var (
	vip  = netip.MustParseAddr("10.96.0.10")
	vip2 = netip.MustParseAddr("10.96.0.11")
)

func TestPrivilegedServiceTranslation(t *testing.T) {
	f := newFixture(t)
	if err := f.objs.SetService(NewServiceKey(vip, 80, tcp), 1, 0, []Backend{{peerIP, 8080}}, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.SetService(NewServiceKey(vip, 53, udp), 2, 0, []Backend{{peerIP, 5353}}, 0); err != nil {
		t.Fatal(err)
	}
	// The subject may reach the peer's pod port only: not the Service
	// address as such.
	egress := append(allow(t, peerID, tcp, PortRange{8080, 8080}), allow(t, peerID, udp, PortRange{5353, 5353})...)
	f.isolate(t, FlagEgressIsolated|FlagIngressIsolated, 1, nil, egress)

	for _, proto := range []uint8{tcp, udp} {
		port, backendPort := uint16(80), uint16(8080)
		if proto == udp {
			port, backendPort = 53, 5353
		}
		out := pkt{Src: subjectIP, Dst: vip, Proto: proto, SrcPort: 40000, DstPort: port, TCPFlags: syn}
		verdict, data := f.runOut(t, FromPod, out.Frame())
		if verdict != tcActOK {
			t.Fatalf("proto %d: packet to the Service dropped", proto)
		}
		got := packet.Decode(data)
		if got.Dst != peerIP || got.DstPort != backendPort || got.Src != subjectIP || got.SrcPort != 40000 {
			t.Errorf("proto %d: translated to %+v, want destination %s:%d", proto, got, peerIP, backendPort)
		}
		if !got.ChecksumsOK {
			t.Errorf("proto %d: checksums wrong after translation", proto)
		}

		reply := pkt{Src: peerIP, Dst: subjectIP, Proto: proto, SrcPort: backendPort, DstPort: 40000, TCPFlags: syn | ack}
		verdict, data = f.runOut(t, ToPod, reply.Frame())
		if verdict != tcActOK {
			t.Fatalf("proto %d: reply from the backend dropped", proto)
		}
		got = packet.Decode(data)
		if got.Src != vip || got.SrcPort != port || got.Dst != subjectIP {
			t.Errorf("proto %d: reply rewritten to %+v, want source %s:%d", proto, got, vip, port)
		}
		if !got.ChecksumsOK {
			t.Errorf("proto %d: checksums wrong after reverse translation", proto)
		}

		// Later packets of the flow keep their backend.
		next := out
		next.TCPFlags = ack
		verdict, data = f.runOut(t, FromPod, next.Frame())
		if got := packet.Decode(data); verdict != tcActOK || got.Dst != peerIP {
			t.Errorf("proto %d: second packet verdict %d to %s", proto, verdict, got.Dst)
		}
	}
}

func TestPrivilegedServiceEgressJudgedOnBackend(t *testing.T) {
	tests := []struct {
		name   string
		egress func(t *testing.T) []PolicyEntry
		want   uint32
	}{
		{"a rule for another pod does not admit the Service's backend", func(t *testing.T) []PolicyEntry {
			return allow(t, otherID, tcp, PortRange{8080, 8080})
		}, tcActShot},
		{"a rule for the Service port instead of the pod port does not admit it", func(t *testing.T) []PolicyEntry {
			return allow(t, peerID, tcp, PortRange{80, 80})
		}, tcActShot},
		{"a rule for the backend and its target port admits it", func(t *testing.T) []PolicyEntry {
			return allow(t, peerID, tcp, PortRange{8080, 8080})
		}, tcActOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if err := f.objs.SetService(NewServiceKey(vip, 80, tcp), 1, 0, []Backend{{peerIP, 8080}}, 0); err != nil {
				t.Fatal(err)
			}
			f.isolate(t, FlagEgressIsolated, 1, nil, tt.egress(t))
			p := pkt{Src: subjectIP, Dst: vip, Proto: tcp, SrcPort: 40001, DstPort: 80, TCPFlags: syn}
			if got := f.run(t, FromPod, p.Frame()); got != tt.want {
				t.Errorf("verdict %d, want %d", got, tt.want)
			}
		})
	}
}

func TestPrivilegedServiceEdgeCases(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, FlagEgressIsolated, 1, nil, allow(t, peerID, tcp, PortRange{8080, 8080}))
	// A Service whose only backend is the subject itself is left to
	// kube-proxy untouched, and a pod's traffic with itself passes.
	if err := f.objs.SetService(NewServiceKey(vip2, 80, tcp), 3, 0, []Backend{{subjectIP, 80}}, 0); err != nil {
		t.Fatal(err)
	}
	self := pkt{Src: subjectIP, Dst: vip2, Proto: tcp, SrcPort: 40002, DstPort: 80, TCPFlags: syn}
	verdict, data := f.runOut(t, FromPod, self.Frame())
	if got := packet.Decode(data); verdict != tcActOK || got.Dst != vip2 {
		t.Errorf("hairpin to itself: verdict %d, destination %s; want pass, untouched", verdict, got.Dst)
	}
	// kube-proxy's reply comes back from the Service address: it passes
	// as a reply even though the pod is isolated for ingress.
	f.isolate(t, FlagEgressIsolated|FlagIngressIsolated, 2, nil, allow(t, peerID, tcp, PortRange{8080, 8080}))
	self.SrcPort = 40003
	if got := f.run(t, FromPod, self.Frame()); got != tcActOK {
		t.Errorf("hairpin to itself under default deny: verdict %d, want pass", got)
	}
	reply := pkt{Src: vip2, Dst: subjectIP, Proto: tcp, SrcPort: 80, DstPort: 40003, TCPFlags: syn | ack}
	if got := f.run(t, ToPod, reply.Frame()); got != tcActOK {
		t.Errorf("the hairpin flow's reply from the Service address: verdict %d, want pass", got)
	}
	unsolicited := reply
	unsolicited.DstPort = 40004
	if got := f.run(t, ToPod, unsolicited.Frame()); got != tcActShot {
		t.Errorf("a packet from the Service address that replies to nothing: verdict %d, want drop", got)
	}
	// With other backends, the subject is not chosen.
	if err := f.objs.SetService(NewServiceKey(vip2, 80, tcp), 3, 0, []Backend{{subjectIP, 80}, {peerIP, 8080}}, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		p := pkt{Src: subjectIP, Dst: vip2, Proto: tcp, SrcPort: uint16(41000 + i), DstPort: 80, TCPFlags: syn}
		_, data := f.runOut(t, FromPod, p.Frame())
		if got := packet.Decode(data); got.Dst != peerIP {
			t.Fatalf("flow %d went to %s, want the other backend %s", i, got.Dst, peerIP)
		}
	}
	// A Service without backends is an address like any other: here, one
	// the egress rules do not admit.
	if err := f.objs.DeleteService(NewServiceKey(vip2, 80, tcp), 3, 2); err != nil {
		t.Fatal(err)
	}
	p := pkt{Src: subjectIP, Dst: vip2, Proto: tcp, SrcPort: 42000, DstPort: 80, TCPFlags: syn}
	if got := f.run(t, FromPod, p.Frame()); got != tcActShot {
		t.Errorf("packet to a Service with no backends: verdict %d, want drop", got)
	}
}

func TestPrivilegedServiceAffinityKeepsTheBackend(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, 0, 1, nil, nil)
	backends := []Backend{{peerIP, 8080}, {otherIP, 8080}}
	if err := f.objs.SetService(NewServiceKey(vip, 80, tcp), 4, 3600, backends, 0); err != nil {
		t.Fatal(err)
	}
	var first netip.Addr
	for i := range 16 {
		p := pkt{Src: subjectIP, Dst: vip, Proto: tcp, SrcPort: uint16(43000 + i), DstPort: 80, TCPFlags: syn}
		_, data := f.runOut(t, FromPod, p.Frame())
		got := packet.Decode(data).Dst
		if i == 0 {
			first = got
		} else if got != first {
			t.Fatalf("flow %d went to %s, flow 0 to %s: ClientIP affinity broken", i, got, first)
		}
	}
}

// TestPrivilegedServiceNodePort sends to node addresses on a NodePort: the
// flow is translated like one to the ClusterIP and judged against the
// backend, instead of against the node, which is always admitted.
func TestPrivilegedServiceNodePort(t *testing.T) {
	node6 := netip.MustParseAddr("fd00:198:18::12")
	remoteNode := netip.MustParseAddr("198.18.0.12")
	const nodePort, sctpPort = 30080, 30132
	type step struct {
		name string
		p    pkt
		want uint32
		// dst and dstPort are where the packet must be sent, when passed.
		dst     netip.Addr
		dstPort uint16
	}
	tests := []struct {
		name   string
		egress func(t *testing.T) []PolicyEntry
		steps  []step
	}{
		{"egress that admits the backend's target port admits the NodePort on every node address",
			func(t *testing.T) []PolicyEntry {
				return append(allow(t, peerID, tcp, PortRange{8080, 8080}), allow(t, peerID, udp, PortRange{5353, 5353})...)
			},
			[]step{
				{"own node, TCP", pkt{Src: subjectIP, Dst: nodeIP, Proto: tcp, SrcPort: 40000, DstPort: nodePort, TCPFlags: syn}, tcActOK, peerIP, 8080},
				{"another node, TCP", pkt{Src: subjectIP, Dst: remoteNode, Proto: tcp, SrcPort: 40001, DstPort: nodePort, TCPFlags: syn}, tcActOK, peerIP, 8080},
				{"own node, UDP", pkt{Src: subjectIP, Dst: nodeIP, Proto: udp, SrcPort: 40002, DstPort: nodePort}, tcActOK, peerIP, 5353},
				{"IPv6 node address", pkt{Src: subject6, Dst: node6, Proto: tcp, SrcPort: 40003, DstPort: nodePort, TCPFlags: syn}, tcActOK, peer6, 8080},
			}},
		{"egress that admits another pod only cuts the NodePort, though the node is admitted",
			func(t *testing.T) []PolicyEntry {
				return append(allow(t, otherID, tcp, PortRange{8080, 8080}), allow(t, IdentityHost, 0, PortRange{})...)
			},
			[]step{
				{"own node", pkt{Src: subjectIP, Dst: nodeIP, Proto: tcp, SrcPort: 40010, DstPort: nodePort, TCPFlags: syn}, tcActShot, netip.Addr{}, 0},
				{"another node", pkt{Src: subjectIP, Dst: remoteNode, Proto: tcp, SrcPort: 40011, DstPort: nodePort, TCPFlags: syn}, tcActShot, netip.Addr{}, 0},
				{"IPv6 node address", pkt{Src: subject6, Dst: node6, Proto: tcp, SrcPort: 40012, DstPort: nodePort, TCPFlags: syn}, tcActShot, netip.Addr{}, 0},
				{"the own node on a port that is no NodePort is the node, admitted and untouched",
					pkt{Src: subjectIP, Dst: nodeIP, Proto: tcp, SrcPort: 40013, DstPort: 10250, TCPFlags: syn}, tcActOK, nodeIP, 10250},
				{"an address that is no node's is not translated on the NodePort",
					pkt{Src: subjectIP, Dst: worldIP, Proto: tcp, SrcPort: 40014, DstPort: nodePort, TCPFlags: syn}, tcActShot, netip.Addr{}, 0},
				{"SCTP to a NodePort that cannot be translated is dropped, not left to kube-proxy's masquerade",
					pkt{Src: subjectIP, Dst: nodeIP, Proto: packet.SCTP, SrcPort: 40015, DstPort: sctpPort}, tcActShot, netip.Addr{}, 0},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			for a, id := range map[netip.Addr]uint32{peer6: peerID, subject6: 299} {
				if err := f.objs.UpsertIPCache(netip.PrefixFrom(a, 128), id); err != nil {
					t.Fatal(err)
				}
			}
			for _, a := range []netip.Addr{nodeIP, remoteNode, node6} {
				if err := f.objs.AddNodeAddr(a); err != nil {
					t.Fatal(err)
				}
			}
			any4, any6 := netip.IPv4Unspecified(), netip.IPv6Unspecified()
			services := []struct {
				key      ServiceKey
				backends []Backend
			}{
				{NewServiceKey(any4, nodePort, tcp), []Backend{{peerIP, 8080}}},
				{NewServiceKey(any4, nodePort, udp), []Backend{{peerIP, 5353}}},
				{NewServiceKey(any6, nodePort, tcp), []Backend{{peer6, 8080}}},
				{NewServiceKey(any4, sctpPort, packet.SCTP), []Backend{{peerIP, 132}}},
			}
			for i, s := range services {
				if err := f.objs.SetService(s.key, uint32(i+1), 0, s.backends, 0); err != nil {
					t.Fatal(err)
				}
			}
			f.isolate(t, FlagEgressIsolated, 1, nil, tt.egress(t))
			for _, s := range tt.steps {
				verdict, data := f.runOut(t, FromPod, s.p.Frame())
				if verdict != s.want {
					t.Errorf("%s: verdict %d, want %d", s.name, verdict, s.want)
					continue
				}
				if verdict != tcActOK {
					continue
				}
				got := packet.Decode(data)
				if got.Dst != s.dst || got.DstPort != s.dstPort || !got.ChecksumsOK {
					t.Errorf("%s: sent to %s:%d (checksums ok %v), want %s:%d", s.name, got.Dst, got.DstPort, got.ChecksumsOK, s.dst, s.dstPort)
				}
				if got.Dst == s.p.Dst {
					continue
				}
				// The reply comes back from the node address the pod used.
				reply := pkt{Src: got.Dst, Dst: s.p.Src, Proto: s.p.Proto, SrcPort: got.DstPort, DstPort: s.p.SrcPort, TCPFlags: syn | ack}
				verdict, data = f.runOut(t, ToPod, reply.Frame())
				back := packet.Decode(data)
				if verdict != tcActOK || back.Src != s.p.Dst || back.SrcPort != s.p.DstPort || !back.ChecksumsOK {
					t.Errorf("%s: reply verdict %d from %s:%d, want pass from %s:%d", s.name, verdict, back.Src, back.SrcPort, s.p.Dst, s.p.DstPort)
				}
			}
		})
	}
}

// TestPrivilegedNodeAddrs writes, lists and deletes node addresses.
func TestPrivilegedNodeAddrs(t *testing.T) {
	f := newFixture(t)
	want := []netip.Addr{netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("fd00::11")}
	for _, a := range want {
		if err := f.objs.AddNodeAddr(a); err != nil {
			t.Fatal(err)
		}
	}
	got, err := f.objs.NodeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Fatalf("node addresses %v, want %v", got, want)
	}
	if err := f.objs.DeleteNodeAddr(want[0]); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.DeleteNodeAddr(want[0]); err != nil {
		t.Errorf("deleting an absent address: %v", err)
	}
	if got, _ := f.objs.NodeAddrs(); !slices.Equal(got, want[1:]) {
		t.Errorf("after delete: %v, want %v", got, want[1:])
	}
}

// TestPrivilegedServiceFlowKeptInConntrack checks what keeping a Service
// flow's translation in conntrack (so that its packets skip the Service
// tables) must not change: a policy change still reaches the flow, and a
// flow keeps its backend, as before, until its entry expires.
func TestPrivilegedServiceFlowKeptInConntrack(t *testing.T) {
	tests := []struct {
		name string
		// change is applied between the flow's first packets and the next.
		change func(t *testing.T, f *fixture)
		want   uint32
	}{
		{"a new revision without the rule cuts the flow", func(t *testing.T, f *fixture) {
			f.isolate(t, FlagEgressIsolated, 2, nil, nil)
		}, tcActShot},
		{"a new revision that still admits the backend keeps the flow", func(t *testing.T, f *fixture) {
			f.isolate(t, FlagEgressIsolated, 2, nil, allow(t, peerID, tcp, PortRange{8080, 8080}))
		}, tcActOK},
		{"a Service deleted keeps its established flows on their backend", func(t *testing.T, f *fixture) {
			if err := f.objs.DeleteService(NewServiceKey(vip, 80, tcp), 1, 1); err != nil {
				t.Fatal(err)
			}
		}, tcActOK},
		{"a Service given another backend keeps its established flows on theirs", func(t *testing.T, f *fixture) {
			if err := f.objs.SetService(NewServiceKey(vip, 80, tcp), 1, 0, []Backend{{otherIP, 8080}}, 1); err != nil {
				t.Fatal(err)
			}
		}, tcActOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if err := f.objs.SetService(NewServiceKey(vip, 80, tcp), 1, 0, []Backend{{peerIP, 8080}}, 0); err != nil {
				t.Fatal(err)
			}
			f.isolate(t, FlagEgressIsolated, 1, nil, allow(t, peerID, tcp, PortRange{8080, 8080}))
			out := pkt{Src: subjectIP, Dst: vip, Proto: tcp, SrcPort: 40100, DstPort: 80, TCPFlags: syn}
			reply := pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 8080, DstPort: 40100, TCPFlags: syn | ack}
			next := out
			next.TCPFlags = ack
			for i, step := range []struct {
				d   Direction
				p   pkt
				dst netip.Addr
			}{{FromPod, out, peerIP}, {ToPod, reply, subjectIP}, {FromPod, next, peerIP}} {
				verdict, data := f.runOut(t, step.d, step.p.Frame())
				if got := packet.Decode(data); verdict != tcActOK || got.Dst != step.dst {
					t.Fatalf("packet %d of the flow: verdict %d to %s, want pass to %s", i, verdict, got.Dst, step.dst)
				}
			}
			tt.change(t, f)
			verdict, data := f.runOut(t, FromPod, next.Frame())
			if verdict != tt.want {
				t.Fatalf("packet after the change: verdict %d, want %d", verdict, tt.want)
			}
			if verdict != tcActOK {
				return
			}
			if got := packet.Decode(data); got.Dst != peerIP || got.DstPort != 8080 || !got.ChecksumsOK {
				t.Errorf("packet after the change translated to %s:%d (checksums ok: %v), want %s:8080", got.Dst, got.DstPort, got.ChecksumsOK, peerIP)
			}
			verdict, data = f.runOut(t, ToPod, reply.Frame())
			if got := packet.Decode(data); verdict != tcActOK || got.Src != vip || got.SrcPort != 80 {
				t.Errorf("reply after the change: verdict %d from %s:%d, want pass from %s:80", verdict, got.Src, got.SrcPort, vip)
			}
		})
	}
}
