package policy

import (
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// A compile shares what addAddresses left with the compile before it; what
// CompileEndpoint adds to the earlier Result afterwards must not reach the
// next compile through it.
func TestCompileAfterCompileEndpointIgnoresItsIdentities(t *testing.T) {
	tests := []struct {
		name   string
		change func(*State)
	}{
		{"nothing changed", func(*State) {}},
		{"a pod relabelled", func(s *State) { s.Pods = relabelThirdPod(slices.Clone(s.Pods)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := cluster()
			// The newcomer's labels are a peer's: its identity, if the
			// next compile saw it, would be in that rule.
			s.Policies = []*networkingv1.NetworkPolicy{netpol("from-cache", ingressRule(peers(podPeer(map[string]string{"role": "cache"}))))}
			alloc := identity.NewAllocator()
			prev := Compile(s, alloc)
			ip := netip.MustParseAddr("10.244.2.40")
			newcomer := pod("prod", "newcomer", ip, map[string]string{"role": "cache"})
			if _, _, err := prev.CompileEndpoint(Endpoint{ID: "newcomer", Ifindex: 9, Pod: newcomer, IPs: []netip.Addr{ip}}); err != nil {
				t.Fatal(err)
			}
			next := s
			tt.change(&next)
			next.Previous = &prev
			got := Compile(next, alloc)
			if !got.comp.patched {
				t.Fatal("the compile walked every pod: it shares nothing to test")
			}
			compileAfresh(t, next, alloc, got)
		})
	}
}

// A compile that patches the previous addresses keeps, of the allocator's
// keys, those a compile from scratch keeps: the rules' keys are the
// compile's own, and a policy gone must not leave its rules' numbers
// behind (nor a rule a key the next compile would miss).
func TestCompileWithPreviousRetainsWhatAFreshCompileRetains(t *testing.T) {
	tests := []struct {
		name   string
		change func(*State)
	}{
		{"nothing changed", func(*State) {}},
		{"a policy removed", func(s *State) { s.Policies = s.Policies[:1] }},
		{"a policy removed and a pod relabelled", func(s *State) {
			s.Policies = s.Policies[:1]
			s.Pods = relabelThirdPod(slices.Clone(s.Pods))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := cluster()
			s.Policies = []*networkingv1.NetworkPolicy{
				netpol("from-frontend", ingressRule(peers(podPeer(map[string]string{"role": "frontend"})))),
				netpol("from-batch", ingressRule(peers(podPeer(map[string]string{"role": "batch"})))),
			}
			alloc := identity.NewAllocator()
			prev := Compile(s, alloc)
			next := s
			tt.change(&next)
			next.Previous = &prev
			got := Compile(next, alloc)
			if !got.comp.patched {
				t.Fatal("the compile walked every pod: it shares nothing to test")
			}
			saved := &savedKeys{alloc: alloc}
			kept := saved.keys(t)
			compileAfresh(t, next, alloc, got)
			if d := gocmp.Diff(saved.keys(t), kept); d != "" {
				t.Errorf("allocator keys (-after a compile from scratch +after the compile with Previous):\n%s", d)
			}
		})
	}
}

// savedKeys reads the keys an allocator holds, as Save writes them.
type savedKeys struct {
	alloc *identity.Allocator
	// last are the keys read last: Save writes nothing while the table
	// is unchanged since.
	last []string
}

// keys returns the keys the allocator holds, sorted.
func (k *savedKeys) keys(t *testing.T) []string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ids.json")
	if err := k.alloc.Save(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && k.last != nil {
		return k.last
	}
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ IDs map[string]uint32 }
	if err := json.Unmarshal(data, &saved); err != nil {
		t.Fatal(err)
	}
	k.last = slices.Sorted(maps.Keys(saved.IDs))
	return k.last
}

// The next compile compares its pods with the previous compile's: it must
// see what changed in a slice the caller reused (the agent lists its pods
// afresh, tests and benchmarks need not), and a pod listed twice in place
// of another.
func TestCompileWithPreviousSeesThePodsChangedInPlace(t *testing.T) {
	tests := []struct {
		name   string
		change func(pods []*corev1.Pod)
	}{
		{"a pod relabelled", func(pods []*corev1.Pod) { relabelThirdPod(pods) }},
		{"a pod replaced by another", func(pods []*corev1.Pod) {
			pods[2] = pod("prod", "newcomer", otherIP, map[string]string{"role": "cache"})
		}},
		{"a pod listed twice in place of another", func(pods []*corev1.Pod) { pods[2] = pods[1] }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := cluster()
			s.Policies = []*networkingv1.NetworkPolicy{netpol("from-frontend", ingressRule(peers(podPeer(map[string]string{"role": "frontend"}))))}
			alloc := identity.NewAllocator()
			prev := Compile(s, alloc)
			tt.change(s.Pods)
			s.Previous = &prev
			got := Compile(s, alloc)
			compileAfresh(t, s, alloc, got)
		})
	}
}

// relabelThirdPod replaces pods[2] (cluster()'s) with a copy labelled
// role=frontend, as the informer replaces a changed object, and returns pods.
func relabelThirdPod(pods []*corev1.Pod) []*corev1.Pod {
	p := pods[2].DeepCopy()
	p.Labels["role"] = "frontend"
	pods[2] = p
	return pods
}
