package bpf

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// readEvents drains the ring buffer: every event already submitted.
func readEvents(t *testing.T, f *fixture) []VerdictEvent {
	t.Helper()
	rd, err := ringbuf.NewReader(f.objs.Events())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var out []VerdictEvent
	for {
		rd.SetDeadline(time.Now().Add(50 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		ev, err := DecodeVerdictEvent(rec.RawSample)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

// runPinned runs every packet on CPU 0, so that the per-CPU event budget
// is one budget.
func (f *fixture) runPinned(t *testing.T, d Direction, pkts ...[]byte) []uint32 {
	t.Helper()
	var out []uint32
	err := f.netns.Do(func(ns.NetNS) error {
		var set unix.CPUSet
		set.Set(0)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return err
		}
		for _, p := range pkts {
			ret, _, err := f.objs.Classify(d, f.ifindex, p)
			if err != nil {
				return err
			}
			out = append(out, ret)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func verdictCount(t *testing.T, f *fixture, d Direction, reason int) uint64 {
	t.Helper()
	vs, err := f.objs.Verdicts()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Direction == d && v.Reason == reason {
			return v.Count
		}
	}
	t.Fatalf("no counter for %s reason %d", d, reason)
	return 0
}

type eventView struct {
	Src, Dst         string
	SrcPort, DstPort uint16
	Proto, Dir       uint8
	Reason           uint8
	Peer, Rule       uint32
	Ifindex          uint32
}

func view(ev VerdictEvent) eventView {
	s, d := ev.Addrs()
	sp, dp := ev.Ports()
	return eventView{s.String(), d.String(), sp, dp, ev.Proto, ev.Dir, ev.Reason, ev.PeerIdentity, ev.Rule, ev.Ifindex}
}

func TestPrivilegedDropEmitsEvent(t *testing.T) {
	f := newFixtureWith(t, LoadOptions{Rejudge: true})
	f.isolate(t, FlagIngressIsolated, 1, allow(t, peerID, tcp, PortRange{80, 80}), nil)
	denied := pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 8080, TCPFlags: syn}
	if got := f.run(t, ToPod, denied.Frame()); got != tcActShot {
		t.Fatalf("verdict %d, want drop", got)
	}
	want := []eventView{{
		Src: otherIP.String(), Dst: subjectIP.String(), SrcPort: 40000, DstPort: 8080, Proto: tcp,
		Dir: 1, Reason: ReasonPolicy, Peer: otherID, Ifindex: uint32(f.ifindex),
	}}
	var got []eventView
	for _, ev := range readEvents(t, f) {
		got = append(got, view(ev))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if n := verdictCount(t, f, ToPod, ReasonPolicy); n != 1 {
		t.Errorf("ingress policy drops = %d, want 1", n)
	}
	if n := verdictCount(t, f, FromPod, ReasonPolicy); n != 0 {
		t.Errorf("egress policy drops = %d, want 0", n)
	}
}

func TestPrivilegedAllowEventsAreSampled(t *testing.T) {
	for _, tt := range []struct {
		name       string
		sampleRate uint32
		wantEvents int
	}{
		{"rate 0 emits no allow event", 0, 0},
		{"rate 1 emits every allowed flow", 1, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixtureWith(t, LoadOptions{Rejudge: true, AllowSampleRate: tt.sampleRate})
			f.isolate(t, FlagIngressIsolated, 1, allow(t, peerID, tcp, PortRange{80, 80}), nil)
			var frames [][]byte
			for port := uint16(1000); port < 1003; port++ {
				frames = append(frames, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: port, DstPort: 80, TCPFlags: syn}.Frame())
			}
			// A second packet of an admitted flow is not a new verdict.
			frames = append(frames, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1000, DstPort: 80, TCPFlags: ack}.Frame())
			for i, v := range f.runPinned(t, ToPod, frames...) {
				if v != tcActOK {
					t.Fatalf("packet %d: verdict %d, want pass", i, v)
				}
			}
			evs := readEvents(t, f)
			if len(evs) != tt.wantEvents {
				t.Fatalf("%d events, want %d: %+v", len(evs), tt.wantEvents, evs)
			}
			for _, ev := range evs {
				if ev.Reason != ReasonAllowed || ev.Rule != 7 || ev.PeerIdentity != peerID {
					t.Errorf("allow event %+v, want reason allowed, rule 7, peer %d", view(ev), peerID)
				}
			}
			if n := verdictCount(t, f, ToPod, ReasonAllowed); n != 3 {
				t.Errorf("ingress allowed flows = %d, want 3 whatever the sampling", n)
			}
		})
	}
}

func TestPrivilegedEventRateIsBounded(t *testing.T) {
	const limit, sent = 5, 20
	f := newFixtureWith(t, LoadOptions{Rejudge: true, EventRateLimit: limit})
	f.isolate(t, FlagIngressIsolated, 1, nil, nil)
	var frames [][]byte
	for i := range sent {
		frames = append(frames, pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: uint16(30000 + i), DstPort: 80, TCPFlags: syn}.Frame())
	}
	f.runPinned(t, ToPod, frames...)
	if evs := readEvents(t, f); len(evs) != limit {
		t.Errorf("%d events in a burst of %d drops, want the limit %d", len(evs), sent, limit)
	}
	lost, err := f.objs.LostEvents()
	if err != nil {
		t.Fatal(err)
	}
	if lost[LostRateLimit] != sent-limit {
		t.Errorf("events lost to the rate limit = %d, want %d", lost[LostRateLimit], sent-limit)
	}
	if n := verdictCount(t, f, ToPod, ReasonPolicy); n != sent {
		t.Errorf("drops counted = %d, want all %d", n, sent)
	}
}

func TestPrivilegedMapFill(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, FlagIngressIsolated, 1, allow(t, peerID, tcp, PortRange{80, 81}), nil)
	fill, err := f.objs.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, m := range fill {
		got[m.Name] = m.Entries
		if m.Capacity <= 0 {
			t.Errorf("%s capacity %d", m.Name, m.Capacity)
		}
	}
	// newFixture writes four ipcache entries and isolate one endpoint
	// whose one rule, ports 80-81, is one key.
	if diff := cmp.Diff(map[string]int{"endpoints": 1, "ipcache": 4, "conntrack-tcp": 0, "conntrack-other": 0, "rules": 1}, got); diff != "" {
		t.Errorf("map fill (-want +got):\n%s", diff)
	}
}
