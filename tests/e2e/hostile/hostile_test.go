package hostile

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// settle bounds how long a policy change takes to reach the datapath.
const settle = 15 * time.Second

// apply creates pol; cleanup deletes it. It returns the created object.
func apply(t *testing.T, cp *testbed.ControlPlane, pol *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, err := cp.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Create(ctx, pol, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create networkpolicy %s: %v", pol.Name, err)
	}
	t.Cleanup(func() {
		_ = cp.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Delete(context.Background(), pol.Name, metav1.DeleteOptions{})
	})
	return created
}

// update replaces the spec of cur with that of pol.
func update(t *testing.T, cp *testbed.ControlPlane, cur, pol *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	next := cur.DeepCopy()
	next.Spec = pol.Spec
	if _, err := cp.Client.NetworkingV1().NetworkPolicies(cur.Namespace).Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update networkpolicy %s: %v", cur.Name, err)
	}
}

// probeUntil probes until the outcome is want or settle passes.
func probeUntil(t *testing.T, from *testbed.Pod, to netip.Addr, port int, proto corev1.Protocol, want testbed.Outcome) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		v := testbed.Probe(context.Background(), from, to, port, proto)
		if v.Outcome == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s %s/%d: %s, want %s", from, to, proto, port, v, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
