package policy

import (
	"net/netip"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// A compile given the previous Result must equal a compile from scratch,
// and take the previous rules only where nothing they depend on changed:
// the namespace's policy objects and the identities.
func TestCompileReusesOnlyWhatDidNotChange(t *testing.T) {
	frontend := podPeer(map[string]string{"role": "frontend"})
	backendPolicy := netpol("backend", selecting(map[string]string{"role": "backend"}),
		ingressRule(peers(frontend), port(corev1.ProtocolTCP, 6379)),
		egressRule(peers(nsPeer(map[string]string{"env": "dev"})), named(corev1.ProtocolTCP, "http")))
	blockPolicy := netpol("blocks", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
		CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}}), port(corev1.ProtocolTCP, 80)))
	badPolicy := netpol("bad", ingressRule(peers(networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: "Bogus"}}}})))
	start := func() State {
		s := cluster()
		s.Policies = []*networkingv1.NetworkPolicy{backendPolicy, blockPolicy, badPolicy}
		return s
	}
	for _, tt := range []struct {
		name   string
		change func(*State)
		reused bool
	}{
		{"nothing", func(*State) {}, true},
		{"a pod like another appears", func(s *State) {
			s.Pods = append(s.Pods, pod("prod", "client-2", netip.MustParseAddr("10.244.1.30"), map[string]string{"role": "frontend"},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
		}, true},
		{"a peer's labels change", func(s *State) {
			s.Pods[1] = pod("prod", "client", clientIP, map[string]string{"role": "frontend", "tier": "web"},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080})
		}, false},
		{"a peer's named port changes", func(s *State) {
			s.Pods[3] = pod("dev", "client", devIP, map[string]string{"role": "frontend"}, corev1.ContainerPort{Name: "http", ContainerPort: 8081})
		}, false},
		{"a policy is updated", func(s *State) {
			updated := backendPolicy.DeepCopy()
			*updated.Spec.Ingress[0].Ports[0].Port = intstr.FromInt32(6380)
			s.Policies[0] = updated
		}, false},
		{"a policy goes", func(s *State) { s.Policies = s.Policies[1:] }, false},
		{"a namespace's labels change", func(s *State) {
			s.Namespaces[1] = ns("dev", map[string]string{"env": "staging"})
		}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			alloc := identity.NewAllocator()
			prev := Compile(start(), alloc)
			next := start()
			tt.change(&next)
			fresh := Compile(next, alloc)
			next.Previous = &prev
			got := Compile(next, alloc)

			if d := gocmp.Diff(fresh.Endpoints, got.Endpoints); d != "" {
				t.Errorf("endpoints (-from scratch +with the previous Result):\n%s", d)
			}
			if d := gocmp.Diff(errorStrings(fresh.Problems), errorStrings(got.Problems)); d != "" {
				t.Errorf("problems (-from scratch +with the previous Result):\n%s", d)
			}
			for _, r := range got.Endpoints["server"].Ingress {
				if _, ok := got.Refs[r.Ref]; !ok {
					t.Errorf("rule %+v names a rule the Result does not know", r)
				}
			}
			was, is := prev.Endpoints["server"].Ingress, got.Endpoints["server"].Ingress
			if len(was) == 0 || len(is) == 0 {
				t.Fatalf("server has no ingress rules: %v then %v", was, is)
			}
			if shared := &was[0] == &is[0]; shared != tt.reused {
				t.Errorf("previous rules reused: %v, want %v", shared, tt.reused)
			}
			if got.comp.prev != nil || got.comp.s.Previous != nil {
				t.Error("the Result keeps the previous compile alive")
			}
			// Rule numbers the reused rules name stay allocated.
			again := Compile(next, alloc)
			if d := gocmp.Diff(got.Endpoints, again.Endpoints); d != "" {
				t.Errorf("endpoints renumbered in the compile after (-then +now):\n%s", d)
			}
		})
	}
}

func errorStrings(errs []error) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}
