package bpf

import (
	"net/netip"
	"testing"
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
		out := pkt{src: subjectIP, dst: vip, proto: proto, sport: 40000, dpt: port, tcpFlags: syn}
		verdict, data := f.runOut(t, FromPod, out.bytes())
		if verdict != tcActOK {
			t.Fatalf("proto %d: packet to the Service dropped", proto)
		}
		got := decode(t, data)
		if got.dst != peerIP || got.dpt != backendPort || got.src != subjectIP || got.sport != 40000 {
			t.Errorf("proto %d: translated to %+v, want destination %s:%d", proto, got, peerIP, backendPort)
		}
		if !got.checksOK {
			t.Errorf("proto %d: checksums wrong after translation", proto)
		}

		reply := pkt{src: peerIP, dst: subjectIP, proto: proto, sport: backendPort, dpt: 40000, tcpFlags: syn | ack}
		verdict, data = f.runOut(t, ToPod, reply.bytes())
		if verdict != tcActOK {
			t.Fatalf("proto %d: reply from the backend dropped", proto)
		}
		got = decode(t, data)
		if got.src != vip || got.sport != port || got.dst != subjectIP {
			t.Errorf("proto %d: reply rewritten to %+v, want source %s:%d", proto, got, vip, port)
		}
		if !got.checksOK {
			t.Errorf("proto %d: checksums wrong after reverse translation", proto)
		}

		// Later packets of the flow keep their backend.
		next := out
		next.tcpFlags = ack
		verdict, data = f.runOut(t, FromPod, next.bytes())
		if got := decode(t, data); verdict != tcActOK || got.dst != peerIP {
			t.Errorf("proto %d: second packet verdict %d to %s", proto, verdict, got.dst)
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
			p := pkt{src: subjectIP, dst: vip, proto: tcp, sport: 40001, dpt: 80, tcpFlags: syn}
			if got := f.run(t, FromPod, p.bytes()); got != tt.want {
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
	self := pkt{src: subjectIP, dst: vip2, proto: tcp, sport: 40002, dpt: 80, tcpFlags: syn}
	verdict, data := f.runOut(t, FromPod, self.bytes())
	if got := decode(t, data); verdict != tcActOK || got.dst != vip2 {
		t.Errorf("hairpin to itself: verdict %d, destination %s; want pass, untouched", verdict, got.dst)
	}
	// With other backends, the subject is not chosen.
	if err := f.objs.SetService(NewServiceKey(vip2, 80, tcp), 3, 0, []Backend{{subjectIP, 80}, {peerIP, 8080}}, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		p := pkt{src: subjectIP, dst: vip2, proto: tcp, sport: uint16(41000 + i), dpt: 80, tcpFlags: syn}
		_, data := f.runOut(t, FromPod, p.bytes())
		if got := decode(t, data); got.dst != peerIP {
			t.Fatalf("flow %d went to %s, want the other backend %s", i, got.dst, peerIP)
		}
	}
	// A Service without backends is an address like any other: here, one
	// the egress rules do not admit.
	if err := f.objs.DeleteService(NewServiceKey(vip2, 80, tcp), 3, 2); err != nil {
		t.Fatal(err)
	}
	p := pkt{src: subjectIP, dst: vip2, proto: tcp, sport: 42000, dpt: 80, tcpFlags: syn}
	if got := f.run(t, FromPod, p.bytes()); got != tcActShot {
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
		p := pkt{src: subjectIP, dst: vip, proto: tcp, sport: uint16(43000 + i), dpt: 80, tcpFlags: syn}
		_, data := f.runOut(t, FromPod, p.bytes())
		got := decode(t, data).dst
		if i == 0 {
			first = got
		} else if got != first {
			t.Fatalf("flow %d went to %s, flow 0 to %s: ClientIP affinity broken", i, got, first)
		}
	}
}
