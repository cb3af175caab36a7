package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/palisade-cni/palisade/tests/kernel"
	"github.com/palisade-cni/palisade/tests/packet"
)

// BenchmarkPrivilegedPacket measures the per-packet cost of the programs in
// the kernel (BPF_PROG_TEST_RUN, so no NIC or stack in the way) and reports
// it as a ratio to a pass-all tc program measured in the same run: the
// cost of the test harness itself, the closest thing to "no policy" a
// program-level benchmark has. Run: go test -run '^$' -bench Packet ./bpf
func BenchmarkPrivilegedPacket(b *testing.B) {
	netns, _ := kernel.NetNSWithVeths(b, 0)
	root := fmt.Sprintf("/sys/fs/bpf/palisade-bench-%08x", rand.Uint32())
	objs, err := Load(LoadOptions{Root: root, Rejudge: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		objs.Close()
		_ = Unpin(root)
	})
	passAll, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { passAll.Close() })

	// The test run's skb belongs to loopback (ifindex 1) of the namespace.
	const lo = 1
	subject, peer := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.2.20")
	for a, id := range map[netip.Addr]uint32{subject: 300, peer: 301} {
		if err := objs.UpsertIPCache(netip.PrefixFrom(a, 32), id); err != nil {
			b.Fatal(err)
		}
	}
	// rules returns n rules for peers other than the measured one, plus one
	// admitting it on TCP 80 when admit is set.
	rules := func(n int, admit bool) []PolicyEntry {
		var out []PolicyEntry
		for i := range n {
			keys, _ := PolicyKeys(1000+uint32(i), packet.TCP, PortRange{uint16(1000 + i%5000), uint16(1000 + i%5000)})
			out = append(out, PolicyEntry{Key: keys[0], Value: PolicyValue{Rule: 1}})
		}
		if admit {
			keys, _ := PolicyKeys(301, packet.TCP, PortRange{80, 80})
			out = append(out, PolicyEntry{Key: keys[0], Value: PolicyValue{Rule: 2}})
		}
		return out
	}
	setup := func(b *testing.B, flags uint32, ingress []PolicyEntry) {
		b.Helper()
		if err := objs.SetPolicy(1, ToPod, ingress); err != nil {
			b.Fatal(err)
		}
		if err := objs.SetEndpoint(lo, EndpointInfo{Revision: 1, Identity: 300, Flags: flags, RuleSet: 1}); err != nil {
			b.Fatal(err)
		}
	}
	syn := packet.Packet{Src: peer, Dst: subject, Proto: packet.TCP, SrcPort: 40000, DstPort: 80, TCPFlags: packet.SYN}
	est := syn
	est.TCPFlags = packet.ACK
	fresh := syn // a flow no case opens
	fresh.SrcPort = 50000
	// What the subject sends in the flow syn opened: it also looks up the
	// Service table and, on a miss, the node-address set.
	sent := packet.Packet{Src: subject, Dst: peer, Proto: packet.TCP, SrcPort: 80, DstPort: 40000, TCPFlags: packet.ACK}
	for i := range 100 {
		if err := objs.AddNodeAddr(netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(1 + i%250)})); err != nil {
			b.Fatal(err)
		}
	}

	cases := []struct {
		name  string
		flags uint32
		rules []PolicyEntry
		warm  *packet.Packet // sent once first, to open the flow
		pkt   packet.Packet
		want  uint32
		sends bool // the subject sends pkt (FromPod), rather than receives it
	}{
		{"no policy selects the pod", 0, nil, &syn, est, VerdictPass, false},
		{"established flow, 1000 rules", FlagIngressIsolated, rules(1000, true), &syn, est, VerdictPass, false},
		{"established flow, 10000 rules", FlagIngressIsolated, rules(10000, true), &syn, est, VerdictPass, false},
		{"new flow dropped, 100 rules", FlagIngressIsolated, rules(100, false), nil, fresh, VerdictDrop, false},
		{"new flow dropped, 1000 rules", FlagIngressIsolated, rules(1000, false), nil, fresh, VerdictDrop, false},
		{"new flow dropped, 10000 rules", FlagIngressIsolated, rules(10000, false), nil, fresh, VerdictDrop, false},
		{"established flow, sent by the pod, 100 node addresses", FlagIngressIsolated, rules(1000, true), &syn, sent, VerdictPass, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			setup(b, c.flags, c.rules)
			var base, ours time.Duration
			var verdict uint32
			err := netns.Do(func(ns.NetNS) error {
				if c.warm != nil {
					if _, _, err := objs.program(ToPod).Benchmark(c.warm.Frame(), 1, nil); err != nil {
						return err
					}
				}
				var err error
				b.ResetTimer()
				if _, base, err = passAll.Benchmark(c.pkt.Frame(), b.N, b.ResetTimer); err != nil {
					return err
				}
				dir := ToPod
				if c.sends {
					dir = FromPod
				}
				verdict, ours, err = objs.program(dir).Benchmark(c.pkt.Frame(), b.N, b.ResetTimer)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			if verdict != c.want {
				b.Fatalf("verdict %d, want %d: the benchmark measures the wrong path", verdict, c.want)
			}
			b.ReportMetric(float64(ours.Nanoseconds()), "ns/packet")
			b.ReportMetric(float64(base.Nanoseconds()), "baseline-ns/packet")
			b.ReportMetric(float64(ours)/float64(base), "x-baseline")
		})
	}
}

// BenchmarkPrivilegedAttach is the programs' share of a CNI ADD: attaching
// both to a fresh host veth, per hook kind. A TCX attach swaps the
// device's program array and waits for an RCU grace period to retire the
// old one; a tc filter does not wait.
func BenchmarkPrivilegedAttach(b *testing.B) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		b.Run(string(mode), func(b *testing.B) {
			f := newFixture(b)
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("bench_%d", i)
				if _, err := Attach(f.objs.Root(), f.ifindex, id, mode); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := Detach(f.objs.Root(), f.ifindex, id); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
