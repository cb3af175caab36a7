package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// A pod flooding the node with new UDP flows fills the table of non-TCP
// flows only: another pod's established TCP connection, whose replies
// need its conntrack entry, keeps working, and keeps being judged when
// the policy changes. The LRU's reclaims are counted.
func TestPrivilegedConntrackFloodSparesEstablishedTCP(t *testing.T) {
	// Four times the default table of other flows, and more than the
	// single table of every flow older versions had.
	const flows = 1 << 20
	f := newFixturePods(t, LoadOptions{Rejudge: true}, 2)
	flooder := f.others[0]
	// The victim accepts nothing new: the replies of its own connection
	// pass only as long as conntrack remembers it.
	f.isolate(t, FlagIngressIsolated, 1, nil, nil)
	flooderInfo := EndpointInfo{Revision: 1, Identity: otherID, RuleSet: 9}
	if err := flooderInfo.SetAddrs([]netip.Addr{otherIP}); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.SetEndpoint(flooder, flooderInfo); err != nil {
		t.Fatal(err)
	}
	open := pkt{Src: subjectIP, Dst: peerIP, Proto: tcp, SrcPort: 45000, DstPort: 80, TCPFlags: syn}
	reply := pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 80, DstPort: 45000, TCPFlags: ack}
	data := open
	data.TCPFlags = ack
	if got := f.run(t, FromPod, open.Frame()); got != tcActOK {
		t.Fatalf("the victim's SYN: verdict %d", got)
	}
	if got := f.run(t, ToPod, reply.Frame()); got != tcActOK {
		t.Fatalf("the reply before the flood: verdict %d", got)
	}

	flood := pkt{Src: otherIP, Dst: peerIP, Proto: udp, SrcPort: 1, DstPort: 1}.Frame()
	err := f.netns.Do(func(ns.NetNS) error {
		for i := range flows {
			// A new flow each: ports from the counter (the checksum goes
			// stale; the programs do not check it).
			binary.BigEndian.PutUint16(flood[34:], uint16(i))
			binary.BigEndian.PutUint16(flood[36:], uint16(i>>16)+1)
			// Two packets a flow: an entry used again is one the LRU
			// keeps over an idle one, as the victim's is during the
			// flood. One-shot flows would spare it even in one table.
			for range 2 {
				if verdict, _, err := f.objs.Classify(FromPod, flooder, flood); err != nil || verdict != tcActOK {
					return fmt.Errorf("flow %d: verdict %d, %v", i, verdict, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	for _, s := range []struct {
		name string
		dir  Direction
		p    pkt
	}{{"the reply after the flood", ToPod, reply}, {"the victim's next segment", FromPod, data}} {
		if got := f.run(t, s.dir, s.p.Frame()); got != tcActOK {
			t.Errorf("%s: verdict %d, want pass", s.name, got)
		}
	}
	// A policy change that isolates the victim's egress but still allows
	// the connection: its next segment is re-judged and passes, and so
	// do the replies.
	f.isolate(t, FlagIngressIsolated|FlagEgressIsolated, 2, nil, allow(t, peerID, tcp, PortRange{80, 80}))
	if got := f.run(t, FromPod, data.Frame()); got != tcActOK {
		t.Errorf("segment re-judged after the policy change: verdict %d, want pass", got)
	}
	if got := f.run(t, ToPod, reply.Frame()); got != tcActOK {
		t.Errorf("reply after the policy change: verdict %d, want pass", got)
	}

	tables, misses, err := f.objs.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	fill := mapFill(t, f.objs)
	other := tables[1]
	if other.Name != ConntrackOther || other.Created != flows {
		t.Errorf("other table %+v: want %d created", other, flows)
	}
	if got, min := other.Reclaimed(fill["conntrack-other"]), uint64(flows-DefaultConntrackOther); got < min {
		t.Errorf("other table reclaimed %d entries, want at least %d (created %d, holding %d)", got, min, other.Created, fill["conntrack-other"])
	}
	if tcpT := tables[0]; tcpT.Reclaimed(fill["conntrack-tcp"]) != 0 || tcpT.Created != 1 {
		t.Errorf("TCP table %+v holding %d: want one flow created, none reclaimed", tcpT, fill["conntrack-tcp"])
	}
	if misses != 0 {
		t.Errorf("%d TCP packets without SYN missed conntrack, want 0", misses)
	}
}

func mapFill(t *testing.T, o *Objects) map[string]int {
	t.Helper()
	fill, err := o.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, m := range fill {
		out[m.Name] = m.Entries
	}
	return out
}

// A TCP packet without SYN that no entry knows is counted: it is what a
// connection whose entry was reclaimed looks like.
func TestPrivilegedConntrackCountsTCPMisses(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, FlagIngressIsolated, 1, nil, nil)
	for _, p := range []pkt{
		{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 80, DstPort: 45001, TCPFlags: ack},
		{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 80, DstPort: 45002, TCPFlags: syn},
		{Src: peerIP, Dst: subjectIP, Proto: udp, SrcPort: 80, DstPort: 45003},
	} {
		f.run(t, ToPod, p.Frame())
	}
	if _, misses, err := f.objs.Conntrack(); err != nil || misses != 1 {
		t.Errorf("TCP misses %d (%v), want 1: only the ACK", misses, err)
	}
}

func TestPrivilegedConntrackSizes(t *testing.T) {
	root := fmt.Sprintf("/sys/fs/bpf/palisade-test-%08x", rand.Uint32())
	t.Cleanup(func() { _ = Unpin(root) })
	load := func(tcp, other uint32) *Objects {
		t.Helper()
		o, err := Load(LoadOptions{Root: root, ConntrackTCP: tcp, ConntrackOther: other})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		return o
	}
	if tcp, other := load(0, 0).ConntrackSizes(); tcp != DefaultConntrackTCP || other != DefaultConntrackOther {
		t.Errorf("default sizes %d/%d, want %d/%d", tcp, other, DefaultConntrackTCP, DefaultConntrackOther)
	}
	if err := Unpin(root); err != nil {
		t.Fatal(err)
	}
	o := load(4096, 1024)
	if tcp, other := o.ConntrackSizes(); tcp != 4096 || other != 1024 {
		t.Errorf("sizes %d/%d, want the 4096/1024 asked for", tcp, other)
	}
	info, err := o.objs.PalFlowsTcp.Info()
	if err != nil {
		t.Fatal(err)
	}
	if memlock, ok := info.Memlock(); !ok || memlock/4096 != ConntrackEntryBytes {
		t.Errorf("a 4096-entry table costs %d bytes (known: %v), not %d a entry", memlock, ok, ConntrackEntryBytes)
	}
	// A restarted agent asking for other sizes keeps the pinned tables:
	// replacing them would forget every flow.
	if tcp, other := load(8192, 2048).ConntrackSizes(); tcp != 4096 || other != 1024 {
		t.Errorf("sizes after a reload %d/%d, want the pinned 4096/1024", tcp, other)
	}
}

// An upgrade from the version with one conntrack table copies its flows
// into the split tables and unpins it.
func TestPrivilegedConntrackMigratesTheRetiredTable(t *testing.T) {
	root := fmt.Sprintf("/sys/fs/bpf/palisade-test-%08x", rand.Uint32())
	t.Cleanup(func() { _ = Unpin(root) })
	if err := os.MkdirAll(filepath.Join(root, "maps"), 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: retiredConntrack, Type: ebpf.LRUHash, MaxEntries: 1024,
		KeySize: uint32(binary.Size(CTKey{})), ValueSize: uint32(binary.Size(CTEntry{})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(root, "maps", retiredConntrack)); err != nil {
		t.Fatal(err)
	}
	tcpKey := CTKey{Sport: 1, Dport: 2, Proto: 6}
	udpKey := CTKey{Sport: 3, Dport: 4, Proto: 17, Dir: 1}
	for _, k := range []CTKey{tcpKey, udpKey} {
		if err := old.Put(k, CTEntry{Expires: 99, Ifindex: 5}); err != nil {
			t.Fatal(err)
		}
	}

	o, err := Load(LoadOptions{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Migrated != 2 {
		t.Errorf("migrated %d flows, want 2", o.Migrated)
	}
	var e CTEntry
	if err := o.objs.PalFlowsTcp.Lookup(tcpKey, &e); err != nil || e.Ifindex != 5 {
		t.Errorf("TCP flow in the TCP table: %+v, %v", e, err)
	}
	if err := o.objs.PalFlowsOther.Lookup(udpKey, &e); err != nil || e.Ifindex != 5 {
		t.Errorf("UDP flow in the other table: %+v, %v", e, err)
	}
	if _, err := os.Stat(filepath.Join(root, "maps", retiredConntrack)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the retired table is still pinned: %v", err)
	}
	tables, _, err := o.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	if fill := mapFill(t, o); tables[0].Reclaimed(fill["conntrack-tcp"]) != 0 || tables[1].Reclaimed(fill["conntrack-other"]) != 0 || tables[0].Created != 1 {
		t.Errorf("after the migration the counters say %+v: copied flows must count as created", tables)
	}
}

// A flow is keyed by its tuple or its reply's, whichever orders first, and
// found with one lookup both ways (verdict.h ct_key_canon). Every step runs
// for a peer whose address orders before the subject's and one after, so
// that both kinds of key are exercised: a reply must pass where the
// subject's own packets are denied, a packet that is not the reply (ports
// swapped, another port, the reply's tuple coming the flow's own way) must
// be judged as new and dropped, and a policy change must still reach the
// flow from its first packet's side.
func TestPrivilegedFlowFoundBothWaysWithOneKey(t *testing.T) {
	lowIP := netip.MustParseAddr("10.244.1.5") // orders before subjectIP
	const lowID uint32 = 302
	for _, peer := range []struct {
		name string
		addr netip.Addr
		id   uint32
	}{{"peer orders first", lowIP, lowID}, {"subject orders first", peerIP, peerID}} {
		for _, proto := range []uint8{tcp, udp} {
			t.Run(fmt.Sprintf("%s/proto %d", peer.name, proto), func(t *testing.T) {
				f := newFixture(t)
				if err := f.objs.UpsertIPCache(netip.PrefixFrom(lowIP, 32), lowID); err != nil {
					t.Fatal(err)
				}
				// The peer may open flows to port 80; the subject may send
				// nothing but replies.
				both := FlagIngressIsolated | FlagEgressIsolated
				f.isolate(t, both, 1, allow(t, peer.id, proto, PortRange{80, 80}), nil)
				flags := func(fl uint8) uint8 {
					if proto == tcp {
						return fl
					}
					return 0
				}
				in := pkt{Src: peer.addr, Dst: subjectIP, Proto: proto, SrcPort: 40000, DstPort: 80, TCPFlags: flags(syn)}
				reply := pkt{Src: subjectIP, Dst: peer.addr, Proto: proto, SrcPort: 80, DstPort: 40000, TCPFlags: flags(syn | ack)}
				later := in
				later.TCPFlags = flags(ack)
				swapped := reply // the subject's ports the other way round
				swapped.SrcPort, swapped.DstPort = 40000, 80
				otherPort := reply
				otherPort.DstPort = 40001
				replyTupleInward := pkt{Src: subjectIP, Dst: peer.addr, Proto: proto, SrcPort: 80, DstPort: 40000, TCPFlags: flags(ack)}
				steps := []struct {
					what string
					dir  Direction
					pkt  pkt
					want uint32
				}{
					{"the flow's first packet, admitted by the rule", ToPod, in, tcActOK},
					{"its reply", FromPod, reply, tcActOK},
					{"its next packet", ToPod, later, tcActOK},
					{"the reply's ports swapped", FromPod, swapped, tcActShot},
					{"the reply to another port", FromPod, otherPort, tcActShot},
					{"the reply's tuple coming in", ToPod, replyTupleInward, tcActShot},
				}
				for _, s := range steps {
					if got := f.run(t, s.dir, s.pkt.Frame()); got != s.want {
						t.Errorf("%s (%s %+v): verdict %d, want %d", s.what, s.dir, s.pkt, got, s.want)
					}
				}
				// A policy change that keeps the rule: the flow's next
				// packet is judged again and passes; its reply is still
				// a reply, which the subject's egress policy (none) does
				// not judge.
				f.isolate(t, both, 2, allow(t, peer.id, proto, PortRange{80, 80}), nil)
				if got := f.run(t, FromPod, reply.Frame()); got != tcActOK {
					t.Errorf("after a policy change, the reply: verdict %d, want it passed", got)
				}
				if got := f.run(t, ToPod, later.Frame()); got != tcActOK {
					t.Errorf("after a policy change that keeps the rule, the flow's next packet: verdict %d, want it passed", got)
				}
				// The rule goes: the flow's next packet is judged again
				// and dropped, and its entry with it, so no reply passes.
				f.isolate(t, both, 3, nil, nil)
				if got := f.run(t, ToPod, later.Frame()); got != tcActShot {
					t.Errorf("after the rule went, the flow's next packet: verdict %d, want a drop", got)
				}
				if got := f.run(t, FromPod, reply.Frame()); got != tcActShot {
					t.Errorf("after the flow was cut, its reply: verdict %d, want a drop", got)
				}
			})
		}
	}
}

// An upgrade from the versions that keyed a flow by its first packet's
// tuple copies their flows under the flow's key, those whose reply orders
// first included: both ways still pass without being judged.
func TestPrivilegedConntrackMigratesFirstPacketKeys(t *testing.T) {
	f := newFixture(t)
	mapsDir := filepath.Join(f.objs.Root(), "maps")
	old, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "pal_ct_tcp", Type: ebpf.LRUHash, MaxEntries: 1024,
		KeySize: uint32(binary.Size(CTKey{})), ValueSize: uint32(binary.Size(CTEntry{})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(mapsDir, "pal_ct_tcp")); err != nil {
		t.Fatal(err)
	}
	// peerIP orders after subjectIP: this flow's key is its reply's.
	first := pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 80, TCPFlags: ack}
	k := CTKey{Sport: htons(40000), Dport: htons(80), Proto: tcp, Dir: uint8(ToPod.dir())}
	k.Saddr, k.Daddr = peerIP.As16(), subjectIP.As16()
	// A deadline far ahead: the flow is live.
	if err := old.Put(k, CTEntry{Expires: math.MaxUint64 / 2, Revision: 1, Ifindex: uint32(f.ifindex)}); err != nil {
		t.Fatal(err)
	}
	again, err := Load(LoadOptions{Root: f.objs.Root(), Rejudge: true})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Migrated != 1 {
		t.Errorf("migrated %d flows, want 1", again.Migrated)
	}
	f.isolate(t, FlagIngressIsolated|FlagEgressIsolated, 1, nil, nil)
	reply := pkt{Src: subjectIP, Dst: peerIP, Proto: tcp, SrcPort: 80, DstPort: 40000, TCPFlags: ack}
	if got := f.run(t, ToPod, first.Frame()); got != tcActOK {
		t.Errorf("the migrated flow's packet: verdict %d, want it passed as established", got)
	}
	if got := f.run(t, FromPod, reply.Frame()); got != tcActOK {
		t.Errorf("the migrated flow's reply: verdict %d, want it passed as a reply", got)
	}
	if _, err := os.Stat(filepath.Join(mapsDir, "pal_ct_tcp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the retired table is still pinned: %v", err)
	}
}

// Conntrack deadlines count in the coarse monotonic clock where the kernel
// has bpf_ktime_get_coarse_ns, and in the monotonic clock where it does
// not: a new flow's deadline, less its lifetime, lies between the readings
// of that clock taken around the packet. The two clocks differ by up to a
// tick, so each case fails with the other clock but when a tick falls
// between the program's reading and the test's.
func TestPrivilegedConntrackDeadlinesCountInTheCoarseClock(t *testing.T) {
	const synLifetime = 60 * time.Second
	tests := []struct {
		name   string
		coarse bool
		clock  int32
	}{
		{"a kernel with bpf_ktime_get_coarse_ns", true, unix.CLOCK_MONOTONIC_COARSE},
		{"a kernel without it", false, unix.CLOCK_MONOTONIC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			probe := haveCoarseClock
			haveCoarseClock = func() (bool, error) { return tt.coarse, nil }
			f := newFixture(t)
			haveCoarseClock = probe
			f.isolate(t, 0, 1, nil, nil)
			open := pkt{Src: subjectIP, Dst: peerIP, Proto: tcp, SrcPort: 45000, DstPort: 80, TCPFlags: syn}
			before := clockNS(t, tt.clock)
			if got := f.run(t, FromPod, open.Frame()); got != tcActOK {
				t.Fatalf("SYN: verdict %d", got)
			}
			after := clockNS(t, tt.clock)
			var k CTKey
			var e CTEntry
			if it := f.objs.objs.PalFlowsTcp.Iterate(); !it.Next(&k, &e) {
				t.Fatalf("no conntrack entry after the SYN: %v", it.Err())
			}
			if got := e.Expires - uint64(synLifetime); got < before || got > after {
				t.Errorf("deadline less the SYN lifetime is %d, want it within [%d, %d], the clock's readings around the packet", got, before, after)
			}
		})
	}
}

// clockNS reads a kernel clock in nanoseconds.
func clockNS(t *testing.T, clock int32) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(clock, &ts); err != nil {
		t.Fatalf("read clock %d: %v", clock, err)
	}
	return uint64(ts.Nano())
}
