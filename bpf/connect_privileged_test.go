package bpf

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

var (
	connectRounds   = flag.Int("connect-rounds", 10, "BenchmarkPrivilegedConnect's rounds, each hook variant once per round")
	connectDuration = flag.Duration("connect-duration", time.Second, "BenchmarkPrivilegedConnect's connect/close loop per variant per round")
	connectVariants = flag.String("connect-variants", "none,pass,palisade", "BenchmarkPrivilegedConnect's hook variants")
	connectRules    = flag.Int("connect-rules", 10000, "BenchmarkPrivilegedConnect's filler rules on the receiver")
	connectPorts    = flag.Int("connect-ports", 0, "BenchmarkPrivilegedConnect: the client's ephemeral ports (0: the kernel's range), which sets how many conntrack entries the loop cycles through")
	connectStats    = flag.Bool("connect-stats", false, "BenchmarkPrivilegedConnect: enable the kernel's run statistics (which cost each run two clock reads) and report the programs' ns per connection")
)

// hookVariant is what the two node-side veths carry while connections are
// measured: nothing (the baseline), a program that only returns TC_ACT_OK
// on both TCX hooks (what the hook itself costs), or Palisade's programs.
type hookVariant string

const (
	hookNone     hookVariant = "none"
	hookPass     hookVariant = "pass"
	hookPalisade hookVariant = "palisade"
)

// passAllProgram returns a tc program that lets every packet through.
func passAllProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("load pass-all program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// setHooks makes both node-side veths carry variant v, detaching whatever
// the previous variant attached (links, closed, detach themselves).
func (l *liveNet) setHooks(tb testing.TB, v hookVariant, pass *ebpf.Program, held *[]link.Link) {
	tb.Helper()
	for _, lk := range *held {
		lk.Close()
	}
	*held = nil
	// In the node's namespace: Detach looks the ifindex up for tc filters.
	err := l.node.Do(func(ns.NetNS) error {
		for i, ifindex := range l.veths {
			if err := Detach(l.objs.Root(), ifindex, fmt.Sprintf("live%d", i)); err != nil {
				return err
			}
			switch v {
			case hookNone:
			case hookPalisade:
				if _, err := Attach(l.objs.Root(), ifindex, fmt.Sprintf("live%d", i), AttachTCX); err != nil {
					return err
				}
			case hookPass:
				for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
					lk, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: pass, Attach: at, Anchor: link.Tail()})
					if err != nil {
						return fmt.Errorf("attach pass-all program: %w", err)
					}
					*held = append(*held, lk)
				}
			default:
				return fmt.Errorf("unknown hook variant %q", v)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// connectClose opens and closes TCP connections to dst for d, one after
// another, as the testbed's connect/close generator does (tests/bench CRR:
// kernel-chosen source ports, closed with a RST), and returns how many.
func (l *liveNet) connectClose(dst netip.AddrPort, d time.Duration) (int, error) {
	n := 0
	err := l.in(0, func() error {
		for end := time.Now().Add(d); time.Now().Before(end); n++ {
			c, err := net.DialTimeout("tcp4", dst.String(), 2*time.Second)
			if err != nil {
				return fmt.Errorf("connect to %s after %d connections: %w", dst, n, err)
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		return nil
	})
	return n, err
}

// BenchmarkPrivilegedConnect is the per-hook view of the testbed's conn/s:
// the connect/close loop between two pods of liveNet, the receiver
// isolated by -connect-rules rules, with the node's veths carrying nothing,
// a pass-all program on both TCX hooks, or Palisade's programs. Rounds
// visit the variants in a shuffled order, back to back, so that what the
// machine does falls on all of them alike. Run it on one CPU, as the
// testbed's measurement does:
//
//	GOMAXPROCS=1 taskset -c 1 ./bpf.test -test.run '^$' -test.bench PrivilegedConnect -test.benchtime=1x
//
// It reports each variant's median conn/s and CPU time per connection, and
// their ratios to "none"; with -connect-stats, the programs' runs and run
// time per connection, and how many connections policy judged (the rest
// found the entry an earlier connection with the same ports left). With
// -connect-variants=palisade alone it suits a profiler.
func BenchmarkPrivilegedConnect(b *testing.B) {
	var variants []hookVariant
	for _, v := range strings.Split(*connectVariants, ",") {
		variants = append(variants, hookVariant(strings.TrimSpace(v)))
	}
	l := newLiveNet(b)
	l.echoServer(b)
	l.isolate(b, *connectRules)
	pass := passAllProgram(b)
	var held []link.Link
	b.Cleanup(func() {
		for _, lk := range held {
			lk.Close()
		}
	})
	if *connectStats {
		stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
		if err != nil {
			b.Fatalf("enable BPF run statistics: %v", err)
		}
		b.Cleanup(func() { stats.Close() })
	}
	if *connectPorts > 0 {
		l.limitPorts(b, *connectPorts)
	}
	direct := netip.AddrPortFrom(l.addrs[1], 8080)
	got := map[hookVariant][]connectSample{}
	for b.Loop() {
		for range *connectRounds {
			order := slices.Clone(variants)
			rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			for _, v := range order {
				l.setHooks(b, v, pass, &held)
				got[v] = append(got[v], l.measureConnect(b, direct))
			}
		}
	}
	for _, v := range variants {
		reportConnect(b, v, got[v], got[hookNone])
	}
	tables, misses, err := l.objs.Conntrack()
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("conntrack: %+v, TCP packets without SYN that found no entry: %d", tables, misses)
}

// limitPorts gives pod 0's connections n ephemeral ports: a connection's
// conntrack entries are those of the connection n (or, with the kernel's
// preference for even ports, n/2) connections before it.
func (l *liveNet) limitPorts(tb testing.TB, n int) {
	tb.Helper()
	err := l.in(0, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(fmt.Sprintf("20000 %d", 20000+n-1)), 0o644)
	})
	if err != nil {
		tb.Fatalf("set the client's port range: %v", err)
	}
}

// connectSample is one variant's connect/close loop in one round.
type connectSample struct {
	conns    int
	rate     float64 // conn/s
	cpu      float64 // the process's CPU ns per connection
	runs     uint64  // both programs' runs
	runNS    uint64  // and their run time (with -connect-stats)
	admitted uint64  // connections pal_to_pod judged and admitted
}

// measureConnect runs the connect/close loop for -connect-duration after a
// short warm-up. Its CPU time is the process's, which includes the veths'
// softirqs (they run in the sending thread's context): other processes'
// load moves it less than it moves conn/s.
func (l *liveNet) measureConnect(b *testing.B, dst netip.AddrPort) connectSample {
	b.Helper()
	if _, err := l.connectClose(dst, 100*time.Millisecond); err != nil {
		b.Fatal(err)
	}
	a0 := l.admitted(b)
	f0, t0, err := l.stats()
	if err != nil {
		b.Fatal(err)
	}
	start, cpu0 := time.Now(), processCPU(b)
	n, err := l.connectClose(dst, *connectDuration)
	if err != nil {
		b.Fatal(err)
	}
	s := connectSample{conns: n, rate: float64(n) / time.Since(start).Seconds(), cpu: float64(processCPU(b)-cpu0) / float64(n)}
	f1, t1, err := l.stats()
	if err != nil {
		b.Fatal(err)
	}
	s.runs = f1.RunCount - f0.RunCount + t1.RunCount - t0.RunCount
	s.runNS = uint64(f1.Runtime - f0.Runtime + t1.Runtime - t0.Runtime)
	s.admitted = l.admitted(b) - a0
	return s
}

// reportConnect reports variant v's medians, and its ratios to the
// baseline's when there is one.
func reportConnect(b *testing.B, v hookVariant, got, base []connectSample) {
	b.Helper()
	rate := func(s connectSample) float64 { return s.rate }
	cpu := func(s connectSample) float64 { return s.cpu }
	r, c := medianOf(got, rate), medianOf(got, cpu)
	b.ReportMetric(r, "conn/s-"+string(v))
	b.ReportMetric(c, "cpu-ns/conn-"+string(v))
	b.Logf("%s: %d rounds, conn/s median %.0f [%.0f-%.0f], CPU ns per connection median %.0f [%.0f-%.0f]",
		v, len(got), r, minOf(got, rate), maxOf(got, rate), c, minOf(got, cpu), maxOf(got, cpu))
	if len(base) > 0 && v != hookNone {
		b.ReportMetric(r/medianOf(base, rate), "x-none-"+string(v))
		b.ReportMetric(c/medianOf(base, cpu), "cpu-x-none-"+string(v))
	}
	var runs, runNS, admitted, conns float64
	for _, s := range got {
		runs, runNS = runs+float64(s.runs), runNS+float64(s.runNS)
		admitted, conns = admitted+float64(s.admitted), conns+float64(s.conns)
	}
	if v == hookPalisade && *connectStats && runs > 0 {
		b.ReportMetric(runNS/runs, "ns/run")
		b.ReportMetric(runs/conns, "runs/conn")
		b.ReportMetric(runNS/conns, "prog-ns/conn")
		b.ReportMetric(admitted/conns, "judged/conn")
	}
}

func medianOf(xs []connectSample, f func(connectSample) float64) float64 {
	s := make([]float64, len(xs))
	for i, x := range xs {
		s[i] = f(x)
	}
	return median(s)
}

func minOf(xs []connectSample, f func(connectSample) float64) float64 {
	m := f(xs[0])
	for _, x := range xs[1:] {
		m = min(m, f(x))
	}
	return m
}

func maxOf(xs []connectSample, f func(connectSample) float64) float64 {
	m := f(xs[0])
	for _, x := range xs[1:] {
		m = max(m, f(x))
	}
	return m
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(tb testing.TB) time.Duration {
	tb.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
