package policy

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// A starting pod is programmed from the last compilation, before the next
// one has it: what CompileEndpoint gives it must be what a whole compile
// gives it, for every rule of the API.
func TestCompileEndpointAgreesWithCompile(t *testing.T) {
	for _, tt := range semanticCases() {
		t.Run(tt.name, func(t *testing.T) {
			alloc := identity.NewAllocator()
			whole := cluster()
			whole.Policies = tt.policies
			want := Compile(whole, alloc)

			before := cluster()
			before.Policies = tt.policies
			ep := before.Endpoints[0]
			before.Endpoints = nil
			// The pod is in the API's view, its address not yet in its status.
			starting := *ep.Pod
			starting.Status = corev1.PodStatus{Phase: corev1.PodPending}
			ep.Pod = &starting
			before.Pods[0] = &starting
			last := Compile(before, alloc)
			if _, ok := last.Endpoints[ep.ID]; ok {
				t.Fatal("the endpoint is compiled before it exists")
			}

			got, ipcache, err := last.CompileEndpoint(ep)
			if err != nil {
				t.Fatal(err)
			}
			// Identity numbers are arbitrary, and the pod's was released
			// while it had no address: compare all but the number.
			addr := netip.PrefixFrom(serverIP, 32)
			if d := gocmp.Diff(map[netip.Prefix]uint32{addr: got.Identity}, ipcache); d != "" {
				t.Errorf("ipcache entries (-the endpoint's identity +CompileEndpoint):\n%s", d)
			}
			for p, id := range last.IPCache {
				if id == got.Identity {
					t.Errorf("the new pod's identity %d is also %s's", id, p)
				}
			}
			wantEP := renumber(want.Endpoints[ep.ID], want.Endpoints[ep.ID].Identity, got.Identity)
			// Rule numbers too: those of rules no endpoint used were
			// released, like identities. Compare the rules they name.
			for _, rules := range [][]Rule{got.Ingress, got.Egress} {
				for i, r := range rules {
					rules[i].Ref = numberOf(t, want.Refs, last.comp.refs[r.Ref])
				}
			}
			if d := gocmp.Diff(wantEP, renumber(got, 0, 0), equateAddrs); d != "" {
				t.Errorf("endpoint policy (-whole compile +CompileEndpoint):\n%s", d)
			}
			res := Result{IPCache: maps.Clone(last.IPCache), Endpoints: map[string]EndpointPolicy{ep.ID: got}}
			maps.Copy(res.IPCache, ipcache)
			for _, p := range tt.probes {
				if allowed := res.Allows(ep.ID, p.dir, p.peer, p.proto, p.port); allowed != p.want {
					t.Errorf("%s %s proto %d port %d: allowed=%v, want %v", []string{"from", "to"}[p.dir], p.peer, p.proto, p.port, allowed, p.want)
				}
			}
			if _, ok := last.Endpoints[ep.ID]; ok {
				t.Error("CompileEndpoint changed the Result it was called on")
			}
		})
	}
}

// numberOf is the number refs gives r.
func numberOf(t *testing.T, refs map[uint32]RuleRef, r RuleRef) uint32 {
	t.Helper()
	for n, got := range refs {
		if got == r {
			return n
		}
	}
	t.Errorf("rule %+v is not in the whole compile", r)
	return 0
}

// renumber gives identity from the number to, in the endpoint and its
// rules, and sorts the rules.
func renumber(ep EndpointPolicy, from, to uint32) EndpointPolicy {
	fix := func(rules []Rule) []Rule {
		out := slices.Clone(rules)
		for i := range out {
			if out[i].Peer == from {
				out[i].Peer = to
			}
		}
		slices.SortFunc(out, func(a, b Rule) int {
			return cmp.Or(cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Ports.First, b.Ports.First),
				cmp.Compare(a.Ports.Last, b.Ports.Last), cmp.Compare(a.Ref, b.Ref))
		})
		return out
	}
	if ep.Identity == from {
		ep.Identity = to
	}
	ep.Ingress, ep.Egress = fix(ep.Ingress), fix(ep.Egress)
	return ep
}

func TestCompileEndpointRefusesWhatItCannotKnow(t *testing.T) {
	s := cluster()
	ep := s.Endpoints[0]
	s.Endpoints = nil
	res := Compile(s, identity.NewAllocator())
	stranger := *ep.Pod
	stranger.Namespace = "new"
	for name, e := range map[string]Endpoint{
		"unknown pod":       {ID: "x", Ifindex: 9, IPs: ep.IPs},
		"no addresses":      {ID: "x", Ifindex: 9, Pod: ep.Pod},
		"unknown namespace": {ID: "x", Ifindex: 9, Pod: &stranger, IPs: ep.IPs},
	} {
		if _, _, err := res.CompileEndpoint(e); err == nil {
			t.Errorf("%s: CompileEndpoint succeeded, want an error", name)
		}
	}
	if _, _, err := (&Result{}).CompileEndpoint(ep); err == nil {
		t.Error("a Result not made by Compile: CompileEndpoint succeeded, want an error")
	}
}
