package bpf

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/tests/kernel"
	"github.com/palisade-cni/palisade/tests/packet"
)

var (
	liveDuration = flag.Duration("live-duration", 2*time.Second, "traffic per BenchmarkPrivilegedLive case")
	liveRules    = flag.String("live-rules", "0,1000,10000", "BenchmarkPrivilegedLive's rule counts, in the order run")
	liveCTTCP    = flag.Uint("live-ct-tcp", 0, "entries of the TCP conntrack table of BenchmarkPrivilegedLive and -Connect (0: the default)")
)

// liveNet is two pods behind a node: a namespace routing between two veths
// with the programs attached to their node ends, as on a real node, and one
// namespace per pod holding the other end. Pods reach each other through
// the node (a link-local gateway address on every node end), so each packet crosses
// pal_from_pod on the sender's veth and pal_to_pod on the receiver's.
type liveNet struct {
	objs       *Objects
	node       ns.NetNS
	pods       [2]ns.NetNS
	veths      [2]int
	addrs      [2]netip.Addr
	serviceIP  netip.Addr
	fromPod    *ebpf.Program
	toPod      *ebpf.Program
	identities [2]uint32
	udpNext    int // udpNewFlows' next flow
}

func newLiveNet(tb testing.TB) *liveNet {
	tb.Helper()
	node, veths := kernel.NetNSWithVeths(tb, 2)
	l := &liveNet{
		node:       node,
		veths:      [2]int{veths[0], veths[1]},
		addrs:      [2]netip.Addr{netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.1.20")},
		serviceIP:  netip.MustParseAddr("10.96.0.10"),
		identities: [2]uint32{400, 401},
	}
	root := fmt.Sprintf("/sys/fs/bpf/palisade-test-%08x", rand.Uint32())
	objs, err := Load(LoadOptions{Root: root, Rejudge: true, ConntrackTCP: uint32(*liveCTTCP)})
	if err != nil {
		tb.Fatalf("load: %v", err)
	}
	tb.Cleanup(func() {
		objs.Close()
		if err := Unpin(root); err != nil {
			tb.Error(err)
		}
	})
	l.objs = objs
	l.fromPod, l.toPod = objs.program(FromPod), objs.program(ToPod)
	for i := range l.pods {
		pod, err := testutils.NewNS()
		if err != nil {
			tb.Fatalf("create pod netns: %v", err)
		}
		tb.Cleanup(func() {
			pod.Close()
			_ = testutils.UnmountNS(pod)
		})
		l.pods[i] = pod
		if err := objs.UpsertIPCache(netip.PrefixFrom(l.addrs[i], 32), l.identities[i]); err != nil {
			tb.Fatal(err)
		}
		ep := EndpointInfo{Revision: 1, Identity: l.identities[i], RuleSet: uint32(100 + i)}
		if err := ep.SetAddrs([]netip.Addr{l.addrs[i]}); err != nil {
			tb.Fatal(err)
		}
		if err := objs.SetEndpoint(l.veths[i], ep); err != nil {
			tb.Fatal(err)
		}
		if err := l.plumb(i); err != nil {
			tb.Fatalf("plumb pod %d: %v", i, err)
		}
	}
	return l
}

// plumb moves pod i's veth end into its namespace, addresses and routes
// both ends, and attaches the programs to the node's end.
func (l *liveNet) plumb(i int) error {
	gw := net.IPv4(169, 254, 1, 1)
	podName := fmt.Sprintf("pal-pod%d", i)
	err := l.node.Do(func(ns.NetNS) error {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			return err
		}
		host, err := netlink.LinkByIndex(l.veths[i])
		if err != nil {
			return err
		}
		// The pods' gateway, on every node end as Calico does: the node
		// answers ARP for it itself.
		if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}); err != nil {
			return fmt.Errorf("gateway address: %w", err)
		}
		if err := netlink.LinkSetUp(host); err != nil {
			return err
		}
		route := &netlink.Route{LinkIndex: l.veths[i], Dst: &net.IPNet{IP: l.addrs[i].AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(route); err != nil {
			return fmt.Errorf("route to pod: %w", err)
		}
		if _, err := Attach(l.objs.Root(), l.veths[i], fmt.Sprintf("live%d", i), AttachTCX); err != nil {
			return err
		}
		pod, err := netlink.LinkByName(podName)
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(pod, int(l.pods[i].Fd()))
	})
	if err != nil {
		return err
	}
	return l.pods[i].Do(func(ns.NetNS) error {
		pod, err := netlink.LinkByName(podName)
		if err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.addrs[i].AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrAdd(pod, addr); err != nil {
			return err
		}
		for _, name := range []string{"lo", podName} {
			lk, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(lk); err != nil {
				return err
			}
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: pod.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("gateway route: %w", err)
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: pod.Attrs().Index, Gw: gw})
	})
}

// isolate gives pod 1 an ingress policy of n filler rules (peers and
// ports no traffic here uses) plus the rules admitting pod 0 on TCP port
// 8080 and UDP ports 8080 to 8080+udpPorts-1.
func (l *liveNet) isolate(tb testing.TB, n int) {
	tb.Helper()
	var entries []PolicyEntry
	for i := range n {
		keys, _ := PolicyKeys(1000+uint32(i), packet.TCP, PortRange{uint16(1000 + i%5000), uint16(1000 + i%5000)})
		entries = append(entries, PolicyEntry{Key: keys[0], Value: PolicyValue{Rule: 1}})
	}
	keys, _ := PolicyKeys(l.identities[0], packet.TCP, PortRange{8080, 8080})
	entries = append(entries, PolicyEntry{Key: keys[0], Value: PolicyValue{Rule: 2}})
	keys, _ = PolicyKeys(l.identities[0], packet.UDP, PortRange{8080, 8080 + udpPorts - 1})
	for _, k := range keys {
		entries = append(entries, PolicyEntry{Key: k, Value: PolicyValue{Rule: 2}})
	}
	if err := l.objs.SetPolicy(101, ToPod, entries); err != nil {
		tb.Fatal(err)
	}
	ep, err := l.objs.Endpoint(l.veths[1])
	if err != nil {
		tb.Fatal(err)
	}
	ep.Flags = FlagIngressIsolated
	ep.Revision++
	if err := l.objs.SetEndpoint(l.veths[1], ep); err != nil {
		tb.Fatal(err)
	}
}

// stats returns the run counters of both programs.
func (l *liveNet) stats() (from, to ebpf.ProgramStats, err error) {
	f, err := l.fromPod.Stats()
	if err != nil {
		return from, to, fmt.Errorf("read run counters of pal_from_pod: %w", err)
	}
	t, err := l.toPod.Stats()
	if err != nil {
		return from, to, fmt.Errorf("read run counters of pal_to_pod: %w", err)
	}
	return *f, *t, nil
}

// admitted is how many flows pal_to_pod admitted by policy so far.
func (l *liveNet) admitted(tb testing.TB) uint64 {
	tb.Helper()
	counts, err := l.objs.Verdicts()
	if err != nil {
		tb.Fatal(err)
	}
	for _, c := range counts {
		if c.Direction == ToPod && c.Reason == ReasonAllowed {
			return c.Count
		}
	}
	tb.Fatal("no counter of flows admitted by pal_to_pod")
	return 0
}

// in runs fn with the calling goroutine in pod i's namespace: sockets fn
// opens belong to the pod.
func (l *liveNet) in(i int, fn func() error) error {
	return l.pods[i].Do(func(ns.NetNS) error { return fn() })
}

// echoServer serves TCP echo on pod 1's 8080, and takes UDP datagrams on
// its ports 8080 to 8080+udpPorts-1, until the test ends.
func (l *liveNet) echoServer(tb testing.TB) {
	tb.Helper()
	var ln net.Listener
	var pcs []net.PacketConn
	err := l.in(1, func() error {
		var err error
		if ln, err = net.Listen("tcp4", ":8080"); err != nil {
			return err
		}
		for port := 8080; port < 8080+udpPorts; port++ {
			pc, err := net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			pcs = append(pcs, pc)
		}
		return nil
	})
	tb.Cleanup(func() {
		if ln != nil {
			ln.Close()
		}
		for _, pc := range pcs {
			pc.Close()
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	for _, pc := range pcs {
		go func() {
			buf := make([]byte, 2048)
			for {
				// One-way: each datagram is a flow of its own.
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
	}
}

// rrEstablished exchanges 1-byte requests and responses over one TCP
// connection to dst for d: after the handshake, every packet belongs to an
// established flow.
func (l *liveNet) rrEstablished(dst netip.AddrPort, d time.Duration) error {
	var c net.Conn
	if err := l.in(0, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", dst.String(), 2*time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("connect to %s: %w", dst, err)
	}
	defer c.Close()
	buf := []byte{1}
	for end := time.Now().Add(d); time.Now().Before(end); {
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
	}
	return nil
}

// udpPorts is how many UDP ports pod 1 takes datagrams on: with the
// source ports udpNewFlows cycles through, enough 5-tuples that no flow
// repeats within a case.
const udpPorts = 8

// udpNewFlows sends datagrams to dst's address for d, each from a socket of
// its own bound to the next of l.udpNext's (source port, destination port)
// pairs: every packet is the first of a flow and is judged by policy. The
// kernel's ephemeral ports would not do: its 28 232 ports come round again
// within a second at this rate, and a repeated tuple finds its entry.
func (l *liveNet) udpNewFlows(dst netip.AddrPort, d time.Duration) error {
	src := net.UDPAddr{IP: l.addrs[0].AsSlice()}
	to := net.UDPAddr{IP: dst.Addr().AsSlice()}
	return l.in(0, func() error {
		for end := time.Now().Add(d); time.Now().Before(end); {
			n := l.udpNext
			l.udpNext++
			src.Port = udpFirstSrcPort + n%(65536-udpFirstSrcPort)
			to.Port = int(dst.Port()) + n/(65536-udpFirstSrcPort)%udpPorts
			c, err := net.DialUDP("udp4", &src, &to)
			if errors.Is(err, unix.EADDRINUSE) {
				continue // a port some other socket holds
			}
			if err != nil {
				return err
			}
			_, err = c.Write([]byte{1})
			c.Close()
			if err != nil && !errors.Is(err, unix.ECONNREFUSED) {
				return err
			}
		}
		return nil
	})
}

// udpFirstSrcPort is the first source port udpNewFlows uses.
const udpFirstSrcPort = 1024

// BenchmarkPrivilegedLive measures what the kernel's run statistics say
// each program costs per packet under live traffic: two pods in their own
// namespaces exchange packets through a routing namespace whose veths carry
// both programs, with the receiver isolated by 0 to 10 000 rules. Unlike
// BenchmarkPrivilegedPacket, packets come from real sockets through the
// stack, with its caches as cold as traffic leaves them. Run:
//
//	go test -run '^$' -bench PrivilegedLive -benchtime=1x ./bpf
//
// Each case reports ns per run of pal_from_pod (sender's veth) and of
// pal_to_pod (receiver's), and the packets per second the pair carried.
// -live-rules sets the rule counts and their order: runs in both orders
// tell a cost of the rules from a drift over the run.
func BenchmarkPrivilegedLive(b *testing.B) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run statistics: %v", err)
	}
	b.Cleanup(func() { stats.Close() })
	var counts []int
	for _, f := range strings.Split(*liveRules, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			b.Fatalf("-live-rules: %v", err)
		}
		counts = append(counts, n)
	}
	for _, rules := range counts {
		l := newLiveNet(b)
		l.echoServer(b)
		l.isolate(b, rules)
		if err := l.objs.SetService(NewServiceKey(l.serviceIP, 80, packet.TCP), 1, 0, []Backend{{Addr: l.addrs[1], Port: 8080}}, 0); err != nil {
			b.Fatal(err)
		}
		direct := netip.AddrPortFrom(l.addrs[1], 8080)
		service := netip.AddrPortFrom(l.serviceIP, 80)
		cases := []struct {
			name string
			run  func(time.Duration) error
		}{
			{"established TCP", func(d time.Duration) error { return l.rrEstablished(direct, d) }},
			{"established TCP via Service", func(d time.Duration) error { return l.rrEstablished(service, d) }},
			{"new UDP flows", func(d time.Duration) error { return l.udpNewFlows(direct, d) }},
		}
		for _, c := range cases {
			b.Run(fmt.Sprintf("%s/%d rules", c.name, rules), func(b *testing.B) {
				if err := c.run(100 * time.Millisecond); err != nil { // warm-up
					b.Fatal(err)
				}
				var from, to, judged float64
				var ns0, ns1 time.Duration
				start := time.Now()
				for b.Loop() {
					a0 := l.admitted(b)
					f0, t0, err := l.stats()
					if err != nil {
						b.Fatal(err)
					}
					if err := c.run(*liveDuration); err != nil {
						b.Fatal(err)
					}
					f1, t1, err := l.stats()
					if err != nil {
						b.Fatal(err)
					}
					judged += float64(l.admitted(b) - a0)
					from += float64(f1.RunCount - f0.RunCount)
					to += float64(t1.RunCount - t0.RunCount)
					ns0 += f1.Runtime - f0.Runtime
					ns1 += t1.Runtime - t0.Runtime
				}
				if from == 0 || to == 0 {
					b.Fatal("the programs did not run: are they attached?")
				}
				elapsed := time.Since(start).Seconds()
				b.ReportMetric(float64(ns0)/from, "ns/run-from-pod")
				b.ReportMetric(float64(ns1)/to, "ns/run-to-pod")
				b.ReportMetric(float64(ns0+ns1)/(from+to), "ns/run")
				b.ReportMetric((from+to)/2/elapsed, "packets/s")
				// What share of the receiver's runs judged a new flow:
				// ~1 for new flows, ~0 for established ones.
				b.ReportMetric(judged/to, "new-flows/run-to-pod")
			})
		}
	}
}
