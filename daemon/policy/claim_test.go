package policy

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// TestAddressClaimIsDeterministic: when two pods claim one address, the
// ipcache gives it the identity of the live, newest one, on every compile
// (it used to follow Go's map order). twin has the winner's labels at
// another address, so its entry names the winner's identity.
func TestAddressClaimIsDeterministic(t *testing.T) {
	shared, twinIP := netip.MustParseAddr("10.244.1.20"), netip.MustParseAddr("10.244.1.21")
	t0 := time.Unix(1_700_000_000, 0)
	mk := func(name, app string, phase corev1.PodPhase, created time.Time, ip netip.Addr) *corev1.Pod {
		p := pod("prod", name, ip, map[string]string{"app": app})
		p.CreationTimestamp = metav1.NewTime(created)
		p.Status.Phase = phase
		return p
	}
	tests := []struct {
		name string
		// pods claiming shared; the winner's labels are app=winner.
		claimants []*corev1.Pod
		// local, if set, is the claimant that is also a local endpoint.
		local int
	}{
		{
			name: "a finished pod's endpoint loses to the live pod that got its address",
			claimants: []*corev1.Pod{
				mk("old", "loser", corev1.PodSucceeded, t0.Add(time.Hour), shared),
				mk("new", "winner", corev1.PodRunning, t0, shared),
			},
			local: 0,
		},
		{
			name: "of two live pods, the newest wins",
			claimants: []*corev1.Pod{
				mk("stale", "loser", corev1.PodRunning, t0, shared),
				mk("fresh", "winner", corev1.PodRunning, t0.Add(time.Minute), shared),
			},
			local: -1,
		},
		{
			name: "created together, the name decides",
			claimants: []*corev1.Pod{
				mk("b", "loser", corev1.PodRunning, t0, shared),
				mk("a", "winner", corev1.PodRunning, t0, shared),
			},
			local: -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			twin := mk("twin", "winner", corev1.PodRunning, t0, twinIP)
			alloc := identity.NewAllocator()
			// Map order varies from one compile to the next: compile often
			// enough that a winner picked by it shows.
			for i := range 40 {
				s := State{
					Pods:       append([]*corev1.Pod{twin}, tt.claimants...),
					Namespaces: []*corev1.Namespace{ns("prod", nil)},
				}
				if i%2 == 1 {
					s.Pods = []*corev1.Pod{tt.claimants[1], tt.claimants[0], twin}
				}
				if tt.local >= 0 {
					p := tt.claimants[tt.local]
					s.Endpoints = []Endpoint{{ID: "ep", Ifindex: 4, Pod: p, IPs: []netip.Addr{shared}}}
				}
				res := Compile(s, alloc)
				got, want := res.IPCache[netip.PrefixFrom(shared, 32)], res.IPCache[netip.PrefixFrom(twinIP, 32)]
				if got == 0 || got != want {
					t.Fatalf("compile %d: %s has identity %d, want the winner's %d", i, shared, got, want)
				}
			}
		})
	}
}

// TestTwoObjectsOfOnePodClaimByVersion: two endpoints of one pod may hold
// two objects of it (the informer updated the pod between their lookups),
// which claimOrder cannot tell apart by age, namespace, name or UID. The
// newer object must claim the address in whatever order the endpoints
// come, and a compile from the previous Result must agree (it used to keep
// the first listed).
func TestTwoObjectsOfOnePodClaimByVersion(t *testing.T) {
	s := cluster()
	s.Policies = []*networkingv1.NetworkPolicy{netpol("from-frontend", selecting(map[string]string{"role": "batch"}),
		ingressRule(peers(podPeer(map[string]string{"role": "frontend"}))))}
	older := s.Pods[0].DeepCopy() // prod/server, role=backend
	older.ResourceVersion = "99"
	// Its labels order after the older's: only the version can pick it.
	newer := older.DeepCopy()
	newer.ResourceVersion = "100"
	newer.Labels = map[string]string{"role": "frontend"}
	a := Endpoint{ID: "a", Ifindex: 7, Pod: older, IPs: []netip.Addr{serverIP}}
	b := Endpoint{ID: "b", Ifindex: 8, Pod: newer, IPs: []netip.Addr{serverIP}}
	batch := Endpoint{ID: "batch", Ifindex: 9, Pod: s.Pods[2], IPs: []netip.Addr{otherIP}}
	alloc := identity.NewAllocator()
	s.Endpoints = []Endpoint{a, b, batch}
	prev := Compile(s, alloc)
	for i, eps := range [][]Endpoint{{a, b, batch}, {b, a, batch}} {
		next := s
		next.Endpoints = eps
		next.Previous = &prev
		got := Compile(next, alloc)
		compileAfresh(t, next, alloc, got)
		if !got.Allows("batch", Ingress, serverIP, ProtoTCP, 80) {
			t.Errorf("order %d: batch denies %s, which the newer object (role=frontend) holds", i, serverIP)
		}
		prev = got
	}
}
