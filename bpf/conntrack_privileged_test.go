package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"
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
