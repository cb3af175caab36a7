package datapath

import (
	"errors"
	"fmt"
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
	if len(in) != 1 || in[0].Key.Identity != 301 || in[0].Key.Prefixlen != 63 {
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
		if len(in) != want {
			t.Errorf("%s: %d ingress entries, want %d: %+v", stage, len(in), want, in)
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
			ingress(step.stage+" (removed)", 0)
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
