package datapath

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/policy"
	"github.com/palisade-cni/palisade/tests/privileged"
)

func load(t *testing.T) *bpf.Objects {
	t.Helper()
	privileged.Require(t)
	root := fmt.Sprintf("/sys/fs/bpf/palisade-test-%08x", rand.Uint32())
	objs, err := bpf.Load(bpf.LoadOptions{Root: root, Rejudge: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		objs.Close()
		if err := bpf.Unpin(root); err != nil {
			t.Error(err)
		}
	})
	return objs
}

func TestPrivilegedApplyWritesAndDiffs(t *testing.T) {
	objs := load(t)
	w, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParsePrefix("10.244.1.2/32")
	b := netip.MustParsePrefix("10.244.1.3/32")
	first := &policy.Result{
		IPCache: map[netip.Prefix]uint32{a: 300, b: 301},
		Endpoints: map[string]policy.EndpointPolicy{
			"a": {ID: "a", Ifindex: 10, Identity: 300, IngressIsolated: true,
				Ingress: []policy.Rule{{Peer: 301, Proto: policy.ProtoTCP, Ports: policy.PortRange{First: 80, Last: 81}, Ref: 1}}},
			"b": {ID: "b", Ifindex: 11, Identity: 301},
		},
	}
	if err := w.Apply(first, 1); err != nil {
		t.Fatal(err)
	}
	info, err := objs.Endpoint(10)
	if err != nil {
		t.Fatal(err)
	}
	if info.Flags != bpf.FlagIngressIsolated || info.Revision != 1 || info.Identity != 300 {
		t.Errorf("endpoint a: %+v", info)
	}
	in, err := objs.Policy(10, bpf.ToPod)
	if err != nil {
		t.Fatal(err)
	}
	if in = besideHost(t, "ingress of a", in); len(in) != 1 || in[0].Key.Identity != 301 || in[0].Key.Prefixlen != 63 {
		t.Errorf("ingress of a: %+v, want one key for ports 80-81 (prefix 63)", in)
	}

	second := &policy.Result{
		IPCache:   map[netip.Prefix]uint32{a: 300},
		Endpoints: map[string]policy.EndpointPolicy{"a": {ID: "a", Ifindex: 10, Identity: 300}},
	}
	if err := w.Apply(second, 2); err != nil {
		t.Fatal(err)
	}
	if err := w.Prune(map[int]bool{10: true}); err != nil {
		t.Fatal(err)
	}
	cache, err := objs.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cache[b]; ok || cache[a] != 300 {
		t.Errorf("ipcache after the second apply: %v, want only %s", cache, a)
	}
	if info, _ := objs.Endpoint(10); info.Flags != 0 || info.Revision != 2 {
		t.Errorf("endpoint a after losing its policy: %+v", info)
	}
	if in, _ := objs.Policy(10, bpf.ToPod); len(in) != 0 {
		t.Errorf("ingress of a after losing its policy: %+v", in)
	}
	if _, err := objs.Endpoint(11); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("endpoint b after prune: %v, want gone", err)
	}
}

func TestPrivilegedNewWriterDeletesWhatARestartLeftStale(t *testing.T) {
	objs := load(t)
	stale := netip.MustParsePrefix("10.244.9.9/32")
	if err := objs.UpsertIPCache(stale, 999); err != nil {
		t.Fatal(err)
	}
	keys, err := bpf.PolicyKeys(999, policy.ProtoTCP, bpf.PortRange{First: 80, Last: 80})
	if err != nil {
		t.Fatal(err)
	}
	// Rules of an interface whose endpoint entry is gone already.
	if err := objs.SetPolicy(12, bpf.ToPod, []bpf.PolicyEntry{{Key: keys[0]}}); err != nil {
		t.Fatal(err)
	}
	w, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Apply(&policy.Result{IPCache: map[netip.Prefix]uint32{}}, 1); err != nil {
		t.Fatal(err)
	}
	cache, err := objs.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if len(cache) != 0 {
		t.Errorf("ipcache kept %v from before the restart", cache)
	}
	if err := w.Prune(map[int]bool{}); err != nil {
		t.Fatal(err)
	}
	if rules, err := objs.Policies(); err != nil || len(rules) != 0 {
		t.Errorf("rules kept from before the restart: %v, %v", rules, err)
	}
}

// The writer skips the rules of an endpoint whose policy did not change;
// what it skips must still be in the map, even after the interface was
// removed and its index came back with a new pod.
func TestPrivilegedApplySkipsOnlyWhatIsInTheMap(t *testing.T) {
	objs := load(t)
	w, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParsePrefix("10.244.1.2/32")
	rules := []policy.Rule{{Peer: 301, Proto: policy.ProtoTCP, Ports: policy.PortRange{First: 80, Last: 80}, Ref: 1}}
	res := func(rules []policy.Rule) *policy.Result {
		return &policy.Result{
			IPCache: map[netip.Prefix]uint32{a: 300},
			Endpoints: map[string]policy.EndpointPolicy{
				"a": {ID: "a", Ifindex: 10, Identity: 300, IngressIsolated: true, Ingress: rules},
			},
		}
	}
	ingress := func(stage string, want int) {
		t.Helper()
		in, err := objs.Policy(10, bpf.ToPod)
		if err != nil {
			t.Fatal(err)
		}
		if in = besideHost(t, stage, in); len(in) != want {
			t.Errorf("%s: %d ingress entries beside the node's, want %d: %+v", stage, len(in), want, in)
		}
	}
	for _, step := range []struct {
		stage  string
		rules  []policy.Rule
		remove bool
		want   int
	}{
		{stage: "first", rules: rules, want: 1},
		{stage: "unchanged", rules: slices.Clone(rules), want: 1},
		{stage: "after remove, same index and rules", rules: rules, remove: true, want: 1},
		{stage: "a rule more", rules: append(slices.Clone(rules), policy.Rule{Peer: 302, Proto: policy.ProtoUDP, Ports: policy.PortRange{First: 53, Last: 53}, Ref: 2}), want: 2},
		{stage: "back to one", rules: rules, want: 1},
	} {
		if step.remove {
			if err := w.Remove(10); err != nil {
				t.Fatal(err)
			}
			if rules, err := objs.Policies(); err != nil || len(rules) != 0 {
				t.Errorf("%s: rules of a removed endpoint kept: %v, %v", step.stage, rules, err)
			}
		}
		rev := uint64(len(step.stage))
		if err := w.Apply(res(step.rules), rev); err != nil {
			t.Fatalf("%s: %v", step.stage, err)
		}
		ingress(step.stage, step.want)
		if info, err := objs.Endpoint(10); err != nil || info.Revision != rev {
			t.Errorf("%s: endpoint %+v, %v; want revision %d", step.stage, info, err, rev)
		}
	}
}

// Endpoints with equal rules follow one rule set; a set changes in place
// only when every endpoint following it wants the change, and goes when
// nobody follows it.
func TestPrivilegedEndpointsAlikeShareOneSet(t *testing.T) {
	objs := load(t)
	w, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	rules := func(peer uint32) []policy.Rule {
		return []policy.Rule{{Peer: peer, Proto: policy.ProtoTCP, Ports: policy.PortRange{First: 80, Last: 80}, Ref: 1}}
	}
	ep := func(ifindex int, peer uint32) policy.EndpointPolicy {
		return policy.EndpointPolicy{ID: fmt.Sprint(ifindex), Ifindex: ifindex, Identity: 300, IngressIsolated: true, Ingress: rules(peer)}
	}
	// check compares each endpoint's ingress peer and the number of sets,
	// and that every set in the map is followed.
	check := func(stage string, wantPeer map[int]uint32, wantSets int) map[int]uint32 {
		t.Helper()
		all, err := objs.Policies()
		if err != nil {
			t.Fatal(err)
		}
		setOf := map[int]uint32{}
		followed := map[uint32]bool{}
		for ifindex, peer := range wantPeer {
			info, err := objs.Endpoint(ifindex)
			if err != nil {
				t.Fatalf("%s: %v", stage, err)
			}
			setOf[ifindex] = info.RuleSet
			followed[info.RuleSet] = true
			in := besideHost(t, stage, all[bpf.PolicySlot{Set: info.RuleSet, Dir: bpf.ToPod}])
			if len(in) != 1 || in[0].Key.Identity != peer {
				t.Errorf("%s: endpoint %d follows set %d with ingress %+v, want one rule for peer %d", stage, ifindex, info.RuleSet, in, peer)
			}
		}
		for slot := range all {
			if !followed[slot.Set] {
				t.Errorf("%s: set %d is in the map but nobody follows it", stage, slot.Set)
			}
		}
		if len(followed) != wantSets {
			t.Errorf("%s: %d sets followed, want %d", stage, len(followed), wantSets)
		}
		return setOf
	}
	apply := func(eps ...policy.EndpointPolicy) {
		t.Helper()
		res := &policy.Result{Endpoints: map[string]policy.EndpointPolicy{}}
		for _, e := range eps {
			res.Endpoints[e.ID] = e
		}
		if err := w.Apply(res, 1); err != nil {
			t.Fatal(err)
		}
	}

	apply(ep(10, 501), ep(11, 501), ep(12, 502))
	sets := check("two alike, one not", map[int]uint32{10: 501, 11: 501, 12: 502}, 2)
	if sets[10] != sets[11] || sets[10] == sets[12] {
		t.Errorf("sets %v: want 10 and 11 to share one, 12 its own", sets)
	}

	apply(ep(10, 505), ep(11, 501), ep(12, 502))
	if got := check("one leaves for rules of its own", map[int]uint32{10: 505, 11: 501, 12: 502}, 3); got[11] != sets[11] {
		t.Errorf("endpoint 11 moved from set %d to %d though its rules did not change", sets[11], got[11])
	}

	apply(ep(10, 502), ep(11, 501), ep(12, 502))
	after := check("one moves to the other's rules", map[int]uint32{10: 502, 11: 501, 12: 502}, 2)
	if after[10] != sets[12] || after[11] != sets[11] {
		t.Errorf("sets %v after the move, want 10 to follow 12's set %d and 11 to keep %d", after, sets[12], sets[11])
	}

	// An endpoint programmed on its own, not in the next Result: the set
	// it shares must not change under it.
	if err := w.ApplyEndpoint(ep(15, 501), nil, 1); err != nil {
		t.Fatal(err)
	}
	apply(ep(10, 506), ep(11, 507), ep(12, 502))
	check("a newcomer not in the Result keeps its rules", map[int]uint32{10: 506, 11: 507, 12: 502, 15: 501}, 4)
	if err := w.Remove(15); err != nil {
		t.Fatal(err)
	}

	apply(ep(10, 503), ep(11, 503), ep(12, 503))
	check("all change alike", map[int]uint32{10: 503, 11: 503, 12: 503}, 1)

	if err := w.ApplyEndpoint(ep(13, 503), nil, 2); err != nil {
		t.Fatal(err)
	}
	if err := w.ApplyEndpoint(ep(14, 504), nil, 2); err != nil {
		t.Fatal(err)
	}
	check("two start, one like the others", map[int]uint32{10: 503, 11: 503, 12: 503, 13: 503, 14: 504}, 2)

	// A restarted writer keeps the sets as they are.
	before := check("before restart", map[int]uint32{10: 503, 11: 503, 12: 503, 13: 503, 14: 504}, 2)
	if w, err = New(objs); err != nil {
		t.Fatal(err)
	}
	apply(ep(10, 503), ep(11, 503), ep(12, 503), ep(13, 503), ep(14, 504))
	if got := check("after restart", map[int]uint32{10: 503, 11: 503, 12: 503, 13: 503, 14: 504}, 2); !maps.Equal(got, before) {
		t.Errorf("sets %v after a restart, want them kept: %v", got, before)
	}

	// Endpoint 14 takes the rules the others leave: their set is 14's to
	// take as it is, not theirs to change.
	apply(ep(10, 508), ep(11, 508), ep(12, 508), ep(13, 508), ep(14, 503))
	check("swap", map[int]uint32{10: 508, 11: 508, 12: 508, 13: 508, 14: 503}, 2)

	for _, ifindex := range []int{10, 11, 12, 13} {
		if err := w.Remove(ifindex); err != nil {
			t.Fatal(err)
		}
	}
	check("all but one removed", map[int]uint32{14: 503}, 1)
	if err := w.Prune(map[int]bool{}); err != nil {
		t.Fatal(err)
	}
	if all, err := objs.Policies(); err != nil || len(all) != 0 {
		t.Errorf("rules left after the last endpoint went: %v, %v", all, err)
	}
}

// TestPrivilegedApplyNodeAddrs diffs the node-address set, also against
// what a previous agent left.
func TestPrivilegedApplyNodeAddrs(t *testing.T) {
	objs := load(t)
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	w, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.ApplyNodeAddrs(addrs("198.18.0.11", "198.18.0.12", "fd00::11")); err != nil {
		t.Fatal(err)
	}
	// A restarted agent learns the set and removes what is gone.
	w, err = New(objs)
	if err != nil {
		t.Fatal(err)
	}
	want := addrs("198.18.0.12", "10.244.2.1")
	if err := w.ApplyNodeAddrs(want); err != nil {
		t.Fatal(err)
	}
	got, err := objs.NodeAddrs()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, netip.Addr.Compare)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Errorf("node addresses %v, want %v", got, want)
	}
}

// The endpoint entry carries the endpoint's addresses, the only sources the
// datapath lets it send from, on both write paths; an endpoint with more
// than the entry holds is refused rather than left unable to send from some.
func TestPrivilegedEndpointEntryHoldsItsAddresses(t *testing.T) {
	objs := load(t)
	w, err := New(objs)
	if err != nil {
		t.Fatal(err)
	}
	dual := []netip.Addr{netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:10:244:1::2")}
	single := []netip.Addr{netip.MustParseAddr("10.244.1.3")}
	res := &policy.Result{Endpoints: map[string]policy.EndpointPolicy{
		"a": {ID: "a", Ifindex: 10, Identity: 300, IPs: dual},
	}}
	if err := w.Apply(res, 1); err != nil {
		t.Fatal(err)
	}
	if err := w.ApplyEndpoint(policy.EndpointPolicy{ID: "b", Ifindex: 11, Identity: 301, IPs: single}, nil, 1); err != nil {
		t.Fatal(err)
	}
	for ifindex, want := range map[int][]netip.Addr{10: dual, 11: single} {
		info, err := objs.Endpoint(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.Addresses(); !slices.Equal(got, want) {
			t.Errorf("endpoint of ifindex %d: addresses %v, want %v", ifindex, got, want)
		}
	}

	var many []netip.Addr
	for i := range bpf.MaxEndpointAddrs + 1 {
		many = append(many, netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}))
	}
	err = w.ApplyEndpoint(policy.EndpointPolicy{ID: "c", Ifindex: 12, Identity: 302, IPs: many}, nil, 1)
	if err == nil {
		t.Fatal("an endpoint with too many addresses was written")
	}
	if _, err := objs.Endpoint(12); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("endpoint with too many addresses has an entry: %v", err)
	}
}

// besideHost returns the entries of an isolated direction NetworkPolicy
// alone judges without the one that allows the pod's own node, which it
// must have: the datapath has no exception for the node.
func besideHost(t *testing.T, what string, es []bpf.PolicyEntry) []bpf.PolicyEntry {
	t.Helper()
	out := slices.DeleteFunc(slices.Clone(es), func(e bpf.PolicyEntry) bool {
		return e.Key.Identity == bpf.IdentityHost && e.Key.Proto == 0 && e.Value.Flags == 0
	})
	if len(out) != len(es)-1 {
		t.Errorf("%s: want one entry allowing the node among %+v", what, es)
	}
	return out
}
