package bpf

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/palisade-cni/palisade/tests/kernel"
	"github.com/palisade-cni/palisade/tests/packet"
)

const (
	tcActOK   = VerdictPass
	tcActShot = VerdictDrop
)

var (
	subjectIP = netip.MustParseAddr("10.244.1.10")
	peerIP    = netip.MustParseAddr("10.244.1.20")
	otherIP   = netip.MustParseAddr("10.244.1.30")
	nodeIP    = netip.MustParseAddr("10.244.1.1")
	worldIP   = netip.MustParseAddr("192.0.2.9")
)

const (
	peerID  uint32 = 300
	otherID uint32 = 301
)

// fixture is a loaded datapath in a network namespace of its own, with one
// veth standing in for the subject pod's host-side veth.
type fixture struct {
	objs    *Objects
	netns   ns.NetNS
	ifindex int
	others  []int // more pods' host-side veths, when asked for
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureWith(t, LoadOptions{Rejudge: true})
}

// newFixtureWith is newFixture with load options; Root is set here.
func newFixtureWith(t testing.TB, opts LoadOptions) *fixture {
	t.Helper()
	return newFixturePods(t, opts, 1)
}

// newFixturePods is newFixtureWith with pods veths: the subject's and
// pods-1 others.
func newFixturePods(t testing.TB, opts LoadOptions, pods int) *fixture {
	t.Helper()
	netns, ifindexes := kernel.NetNSWithVeths(t, pods)
	f := &fixture{netns: netns, ifindex: ifindexes[0], others: ifindexes[1:]}
	root := fmt.Sprintf("/sys/fs/bpf/palisade-test-%08x", rand.Uint32())
	opts.Root = root
	objs, err := Load(opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		objs.Close()
		if err := Unpin(root); err != nil {
			t.Error(err)
		}
	})
	f.objs = objs
	for p, id := range map[netip.Addr]uint32{peerIP: peerID, otherIP: otherID, nodeIP: IdentityHost, subjectIP: 299} {
		if err := objs.UpsertIPCache(netip.PrefixFrom(p, 32), id); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// isolate writes the subject's endpoint entry and rules.
func (f *fixture) isolate(t *testing.T, flags uint32, revision uint64, ingress, egress []PolicyEntry) {
	t.Helper()
	if err := f.objs.SetPolicy(f.set(), ToPod, ingress); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.SetPolicy(f.set(), FromPod, egress); err != nil {
		t.Fatal(err)
	}
	info := EndpointInfo{Revision: revision, Identity: 299, Flags: flags, RuleSet: f.set()}
	if err := info.SetAddrs([]netip.Addr{subjectIP, subject6}); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.SetEndpoint(f.ifindex, info); err != nil {
		t.Fatal(err)
	}
}

// set is the subject's rule set.
func (f *fixture) set() uint32 { return uint32(f.ifindex) }

func allow(t *testing.T, peer uint32, proto uint8, r PortRange) []PolicyEntry {
	t.Helper()
	keys, err := PolicyKeys(peer, proto, r)
	if err != nil {
		t.Fatal(err)
	}
	var out []PolicyEntry
	for _, k := range keys {
		out = append(out, PolicyEntry{Key: k, Value: PolicyValue{Rule: 7}})
	}
	return out
}

// run runs the program for d on pkt as if it crossed the subject's interface.
func (f *fixture) run(t *testing.T, d Direction, pkt []byte) uint32 {
	t.Helper()
	ret, _ := f.runOut(t, d, pkt)
	return ret
}

// runOut is run that also returns the packet as the program left it.
func (f *fixture) runOut(t *testing.T, d Direction, pkt []byte) (uint32, []byte) {
	t.Helper()
	var ret uint32
	var out []byte
	err := f.netns.Do(func(ns.NetNS) error {
		var err error
		ret, out, err = f.objs.Classify(d, f.ifindex, pkt)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ret, out
}

// Protocols and TCP flags, short for the tables below.
const (
	tcp  = packet.TCP
	udp  = packet.UDP
	icmp = packet.ICMP
	syn  = packet.SYN
	ack  = packet.ACK
)

type pkt = packet.Packet

func TestPrivilegedVerdicts(t *testing.T) {
	const isolatedIn = FlagIngressIsolated
	type step struct {
		dir  Direction
		pkt  pkt
		want uint32
	}
	tests := []struct {
		name    string
		flags   uint32
		ingress []PolicyEntry
		egress  []PolicyEntry
		steps   []step
	}{{
		name:  "a pod no policy isolates receives everything",
		flags: 0,
		steps: []step{
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 80, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: worldIP, Dst: subjectIP, Proto: udp, SrcPort: 40000, DstPort: 53}, tcActOK},
		},
	}, {
		name:  "default deny drops new TCP, UDP and ICMP to the pod",
		flags: isolatedIn,
		steps: []step{
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 80, TCPFlags: syn}, tcActShot},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: udp, SrcPort: 40000, DstPort: 80}, tcActShot},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: icmp, ICMPType: 8, SrcPort: 1}, tcActShot},
		},
	}, {
		name:  "default deny for ingress leaves egress open",
		flags: isolatedIn,
		steps: []step{
			{FromPod, pkt{Src: subjectIP, Dst: otherIP, Proto: tcp, SrcPort: 40000, DstPort: 80, TCPFlags: syn}, tcActOK},
		},
	}, {
		name:    "the reply of an allowed outbound flow reaches an ingress-isolated pod",
		flags:   isolatedIn,
		ingress: nil,
		steps: []step{
			{FromPod, pkt{Src: subjectIP, Dst: otherIP, Proto: tcp, SrcPort: 40001, DstPort: 80, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 80, DstPort: 40001, TCPFlags: syn | ack}, tcActOK},
			{FromPod, pkt{Src: subjectIP, Dst: otherIP, Proto: udp, SrcPort: 40002, DstPort: 53}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: udp, SrcPort: 53, DstPort: 40002}, tcActOK},
			{FromPod, pkt{Src: subjectIP, Dst: otherIP, Proto: icmp, ICMPType: 8, SrcPort: 77}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: icmp, ICMPType: 0, SrcPort: 77}, tcActOK},
		},
	}, {
		name:  "a packet that only looks like a reply is judged as new",
		flags: isolatedIn,
		steps: []step{
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 80, DstPort: 40003, TCPFlags: syn | ack}, tcActShot},
		},
	}, {
		name:    "a rule admits only its peer, protocol and port",
		flags:   isolatedIn,
		ingress: allow(t, peerID, tcp, PortRange{6379, 6379}),
		steps: []step{
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 6379, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 6379, TCPFlags: syn}, tcActShot},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 6380, TCPFlags: syn}, tcActShot},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: udp, SrcPort: 40000, DstPort: 6379}, tcActShot},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: icmp, ICMPType: 8, SrcPort: 2}, tcActShot},
		},
	}, {
		name:    "a rule without ports admits every protocol of its peer",
		flags:   isolatedIn,
		ingress: allow(t, peerID, 0, PortRange{}),
		steps: []step{
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: icmp, ICMPType: 8, SrcPort: 3}, tcActOK},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: udp, SrcPort: 1, DstPort: 9}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: udp, SrcPort: 1, DstPort: 9}, tcActShot},
		},
	}, {
		name:    "a wildcard peer admits addresses the ipcache does not know",
		flags:   isolatedIn,
		ingress: allow(t, IdentityAny, tcp, PortRange{80, 80}),
		steps: []step{
			{ToPod, pkt{Src: worldIP, Dst: subjectIP, Proto: tcp, SrcPort: 1000, DstPort: 80, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 1000, DstPort: 80, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: worldIP, Dst: subjectIP, Proto: tcp, SrcPort: 1000, DstPort: 81, TCPFlags: syn}, tcActShot},
		},
	}, {
		name:    "a port range admits exactly its ends and what lies between",
		flags:   isolatedIn,
		ingress: allow(t, peerID, tcp, PortRange{5000, 5002}),
		steps: []step{
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 4999, TCPFlags: syn}, tcActShot},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 5000, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 5001, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 5002, TCPFlags: syn}, tcActOK},
			{ToPod, pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 5003, TCPFlags: syn}, tcActShot},
		},
	}, {
		// The agent writes this entry in every direction NetworkPolicy
		// isolates; the programs make no exception for the node.
		name:    "the pod's own node passes by the entry for its identity",
		flags:   FlagIngressIsolated | FlagEgressIsolated,
		ingress: allow(t, IdentityHost, 0, PortRange{}),
		egress:  allow(t, IdentityHost, 0, PortRange{}),
		steps: []step{
			{ToPod, pkt{Src: nodeIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 8080, TCPFlags: syn}, tcActOK},
			{FromPod, pkt{Src: subjectIP, Dst: nodeIP, Proto: udp, SrcPort: 1, DstPort: 53}, tcActOK},
		},
	}, {
		name:   "without that entry an isolated direction drops the node too (an admin tier's Deny)",
		flags:  FlagIngressIsolated | FlagEgressIsolated,
		egress: allow(t, peerID, udp, PortRange{53, 53}),
		steps: []step{
			{ToPod, pkt{Src: nodeIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 8080, TCPFlags: syn}, tcActShot},
			{FromPod, pkt{Src: subjectIP, Dst: nodeIP, Proto: udp, SrcPort: 1, DstPort: 53}, tcActShot},
			{FromPod, pkt{Src: subjectIP, Dst: peerIP, Proto: udp, SrcPort: 1, DstPort: 53}, tcActOK},
		},
	}, {
		name:   "egress isolation drops what the pod sends",
		flags:  FlagEgressIsolated,
		egress: allow(t, peerID, udp, PortRange{53, 53}),
		steps: []step{
			{FromPod, pkt{Src: subjectIP, Dst: peerIP, Proto: udp, SrcPort: 1, DstPort: 53}, tcActOK},
			{FromPod, pkt{Src: subjectIP, Dst: peerIP, Proto: tcp, SrcPort: 1, DstPort: 53, TCPFlags: syn}, tcActShot},
			{FromPod, pkt{Src: subjectIP, Dst: otherIP, Proto: udp, SrcPort: 1, DstPort: 53}, tcActShot},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: udp, SrcPort: 1, DstPort: 53}, tcActOK},
		},
	}, {
		name:  "an ICMP error passes only when it quotes a known flow",
		flags: isolatedIn,
		steps: []step{
			{FromPod, pkt{Src: subjectIP, Dst: otherIP, Proto: udp, SrcPort: 41000, DstPort: 9999}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: icmp, ICMPType: 3,
				Payload: pkt{Src: subjectIP, Dst: otherIP, Proto: udp, SrcPort: 41000, DstPort: 9999}.IP()[:28]}, tcActOK},
			{ToPod, pkt{Src: otherIP, Dst: subjectIP, Proto: icmp, ICMPType: 3,
				Payload: pkt{Src: subjectIP, Dst: otherIP, Proto: udp, SrcPort: 41001, DstPort: 9999}.IP()[:28]}, tcActShot},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.isolate(t, tt.flags, 1, tt.ingress, tt.egress)
			for i, s := range tt.steps {
				if got := f.run(t, s.dir, s.pkt.Frame()); got != s.want {
					t.Errorf("step %d (%s %+v): verdict %d, want %d", i, s.dir, s.pkt, got, s.want)
				}
			}
		})
	}
}

func TestPrivilegedUnknownEndpointIsDropped(t *testing.T) {
	f := newFixture(t)
	p := pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 80, TCPFlags: syn}
	if got := f.run(t, ToPod, p.Frame()); got != tcActShot {
		t.Errorf("verdict %d for an interface without endpoint, want drop", got)
	}
	drops, err := f.objs.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops[ReasonUnknownEndpoint] != 1 {
		t.Errorf("unknown-endpoint drops = %d, want 1", drops[ReasonUnknownEndpoint])
	}
}

func TestPrivilegedNonIPPasses(t *testing.T) {
	f := newFixture(t)
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	if got := f.run(t, ToPod, arp); got != tcActOK {
		t.Errorf("ARP verdict %d, want pass", got)
	}
}

func TestPrivilegedPolicyChangeRejudgesEstablishedFlow(t *testing.T) {
	for _, tt := range []struct {
		name        string
		newRevision uint64
		want        uint32
	}{
		{"a new revision without the rule cuts the flow", 2, tcActShot},
		{"the same revision keeps the flow", 1, tcActOK},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.isolate(t, FlagIngressIsolated, 1, allow(t, peerID, tcp, PortRange{80, 80}), nil)
			open := pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 42000, DstPort: 80, TCPFlags: syn}
			if got := f.run(t, ToPod, open.Frame()); got != tcActOK {
				t.Fatalf("opening packet verdict %d, want pass", got)
			}
			f.isolate(t, FlagIngressIsolated, tt.newRevision, nil, nil)
			data := open
			data.TCPFlags = ack
			if got := f.run(t, ToPod, data.Frame()); got != tt.want {
				t.Errorf("packet after the policy change: verdict %d, want %d", got, tt.want)
			}
		})
	}
}

func TestPrivilegedSetPolicyReplacesTheRules(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, FlagIngressIsolated, 1, allow(t, peerID, tcp, PortRange{80, 80}), nil)
	neighbour := allow(t, peerID, tcp, PortRange{80, 80})
	if err := f.objs.SetPolicy(f.set()+1, ToPod, neighbour); err != nil {
		t.Fatal(err)
	}
	if err := f.objs.SetPolicy(f.set(), ToPod, allow(t, otherID, udp, PortRange{53, 53})); err != nil {
		t.Fatal(err)
	}
	got, err := f.objs.Policy(f.ifindex, ToPod)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key.Identity != otherID || got[0].Key.Proto != udp {
		t.Errorf("after SetPolicy the rules are %+v, want only the UDP 53 rule for %d", got, otherID)
	}
	if got, _ := f.objs.SetRules(f.set()+1, ToPod); len(got) != len(neighbour) {
		t.Errorf("another set's rules changed: %+v, want %+v", got, neighbour)
	}
	if err := f.objs.SetPolicy(f.set(), ToPod, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := f.objs.Policy(f.ifindex, ToPod); err != nil || len(got) != 0 {
		t.Errorf("rules after SetPolicy(nil): %+v, %v; want none", got, err)
	}
}

// Every rule set lives in one map: a rule of another set must never admit
// a packet of an endpoint that does not follow it.
func TestPrivilegedRulesOfAnotherSetDoNotApply(t *testing.T) {
	f := newFixture(t)
	f.isolate(t, FlagIngressIsolated|FlagEgressIsolated, 1, nil, nil)
	for _, set := range []uint32{f.set() - 1, f.set() + 1} {
		if err := f.objs.SetPolicy(set, ToPod, allow(t, peerID, 0, PortRange{})); err != nil {
			t.Fatal(err)
		}
		if err := f.objs.SetPolicy(set, FromPod, allow(t, IdentityAny, 0, PortRange{})); err != nil {
			t.Fatal(err)
		}
	}
	// The subject's egress allows only what it allows in ingress, to check
	// that the direction is part of the key too.
	if err := f.objs.SetPolicy(f.set(), FromPod, allow(t, peerID, 0, PortRange{})); err != nil {
		t.Fatal(err)
	}
	in := pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 1, DstPort: 80, TCPFlags: syn}
	if got := f.run(t, ToPod, in.Frame()); got != tcActShot {
		t.Errorf("ingress verdict %d with rules only in other sets and the other direction, want drop", got)
	}
	out := pkt{Src: subjectIP, Dst: otherIP, Proto: tcp, SrcPort: 2, DstPort: 80, TCPFlags: syn}
	if got := f.run(t, FromPod, out.Frame()); got != tcActShot {
		t.Errorf("egress verdict %d to a peer only other sets admit, want drop", got)
	}
	if err := f.objs.SetPolicy(f.set(), ToPod, allow(t, peerID, 0, PortRange{})); err != nil {
		t.Fatal(err)
	}
	if got := f.run(t, ToPod, in.Frame()); got != tcActOK {
		t.Errorf("ingress verdict %d once the endpoint's own set admits the peer, want pass", got)
	}
}

func deny(t *testing.T, peer uint32, proto uint8, r PortRange) []PolicyEntry {
	t.Helper()
	out := allow(t, peer, proto, r)
	for i := range out {
		out[i].Value = PolicyValue{Rule: 9, Flags: PolicyDeny}
	}
	return out
}

// TestPrivilegedDenyEntries: an entry with PolicyDeny drops (the admin
// tiers' folded answer), the longest match wins over a wider allow in one
// lookup, and an established flow is cut when a deny arrives with a new
// revision.
func TestPrivilegedDenyEntries(t *testing.T) {
	f := newFixture(t)
	ingress := append(allow(t, IdentityAny, 0, PortRange{}), deny(t, peerID, tcp, PortRange{80, 90})...)
	f.isolate(t, FlagIngressIsolated, 1, ingress, nil)
	for _, tc := range []struct {
		p    pkt
		want uint32
	}{
		{pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 85, TCPFlags: syn}, tcActShot},
		{pkt{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 91, TCPFlags: syn}, tcActOK},
		{pkt{Src: peerIP, Dst: subjectIP, Proto: udp, SrcPort: 40000, DstPort: 85}, tcActOK},
		{pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 85, TCPFlags: syn}, tcActOK},
	} {
		if got := f.run(t, ToPod, tc.p.Frame()); got != tc.want {
			t.Errorf("%+v: verdict %d, want %d", tc.p, got, tc.want)
		}
	}
	// A flow admitted before a deny for it is cut by the new revision.
	open := pkt{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 42000, DstPort: 443, TCPFlags: syn}
	if got := f.run(t, ToPod, open.Frame()); got != tcActOK {
		t.Fatalf("opening packet verdict %d, want pass", got)
	}
	f.isolate(t, FlagIngressIsolated, 2, append(allow(t, IdentityAny, 0, PortRange{}), deny(t, IdentityAny, tcp, PortRange{443, 443})...), nil)
	data := open
	data.TCPFlags = ack
	if got := f.run(t, ToPod, data.Frame()); got != tcActShot {
		t.Errorf("established flow after a deny: verdict %d, want drop", got)
	}
}
