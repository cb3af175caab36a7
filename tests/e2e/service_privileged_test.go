package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/tests/testbed"
)

func tcpPort(name string, port, target int32) testbed.ServicePort {
	return testbed.ServicePort{Name: name, Protocol: corev1.ProtocolTCP, Port: port, Target: intstr.FromInt32(target)}
}

func udpPort(name string, port, target int32) testbed.ServicePort {
	return testbed.ServicePort{Name: name, Protocol: corev1.ProtocolUDP, Port: port, Target: intstr.FromInt32(target)}
}

// probeUntil probes until the outcome is want (and, when connected, the
// reply names the backend) or settle passes.
func probeUntil(t *testing.T, from *testbed.Pod, to netip.Addr, port int, proto corev1.Protocol, want testbed.Outcome, backend string) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		v := testbed.Probe(context.Background(), from, to, port, proto)
		if v.Outcome == want && (want != testbed.Connected || v.Reply == backend) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s %s/%d: %s, want %s", from, to, proto, port, v, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// createPolicy creates a NetworkPolicy built in Go; cleanup deletes it.
func createPolicy(t *testing.T, cp *testbed.ControlPlane, pol *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cp.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create networkpolicy: %v", err)
	}
	t.Cleanup(func() {
		_ = cp.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Delete(context.Background(), pol.Name, metav1.DeleteOptions{})
	})
}

// egressTo is a policy isolating frontend for egress, allowing pods with
// role=role on TCP port only.
func egressTo(name, role string, port int32) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(port)
	tcp := corev1.ProtocolTCP
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "frontend"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": role}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
}

// TestPrivilegedServiceTraffic sends to a ClusterIP with no kube-proxy on
// the node: every connection that works is Palisade's own translation, and
// egress is judged against the backend pod and its target port.
func TestPrivilegedServiceTraffic(t *testing.T) {
	env := newOneNode(t, "")
	vip := env.cp.CreateServiceTo(t, "prod", "backend", env.backend.IP(), tcpPort("web", 80, 8080))
	probe := func(t *testing.T, want testbed.Outcome) {
		t.Helper()
		probeUntil(t, env.frontend, vip, 80, corev1.ProtocolTCP, want, "backend")
	}

	t.Run("without policy the ClusterIP reaches its backend", func(t *testing.T) {
		probe(t, testbed.Connected)
	})
	t.Run("an egress rule for the backend pod and target port admits the Service", func(t *testing.T) {
		createPolicy(t, env.cp, egressTo("to-backend", "backend", 8080))
		probe(t, testbed.Connected)
	})
	t.Run("an egress rule for another pod does not admit the Service", func(t *testing.T) {
		createPolicy(t, env.cp, egressTo("to-other", "other", 8080))
		probe(t, testbed.TimedOut)
	})
	t.Run("an egress rule for the Service port rather than the pod port does not admit it", func(t *testing.T) {
		createPolicy(t, env.cp, egressTo("to-port-80", "backend", 80))
		probe(t, testbed.TimedOut)
	})
	t.Run("the backend's ingress policy applies to traffic that came through the Service", func(t *testing.T) {
		createPolicy(t, env.cp, egressTo("to-backend", "backend", 8080))
		probe(t, testbed.Connected)
		p := intstr.FromInt32(8080)
		createPolicy(t, env.cp, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "backend-from-other-only"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "backend"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "other"}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
				}},
			},
		})
		probe(t, testbed.TimedOut)
	})
}

// TestPrivilegedDNSThroughItsService applies the seeds' allow-dns policy
// with a default deny: queries to the kube-dns ClusterIP on UDP 53 and 1053
// reach the DNS pod; with the default deny alone they do not.
func TestPrivilegedDNSThroughItsService(t *testing.T) {
	env := newOneNode(t, "")
	dns := env.node.AddPod(t, testbed.MakePod("kube-system", "coredns", map[string]string{"k8s-app": "kube-dns"},
		testbed.UDP(53), testbed.UDP(1053), testbed.TCP(53)))
	vip := env.cp.CreateServiceTo(t, "kube-system", "kube-dns", dns.IP(),
		udpPort("dns", 53, 53), tcpPort("dns-tcp", 53, 53), udpPort("dns-alt", 1053, 1053))
	web := env.node.AddPod(t, testbed.MakePod("prod", "web", map[string]string{"app": "web"}, testbed.TCP(80)))
	policy := func(name string) string { return filepath.Join(testbed.ModuleRoot(t), "conf", "policies", name) }

	probeUntil(t, web, vip, 53, corev1.ProtocolUDP, testbed.Connected, "coredns")
	deny := env.cp.ApplyPolicy(t, "prod", policy("default-deny.yaml"))
	probeUntil(t, web, vip, 53, corev1.ProtocolUDP, testbed.TimedOut, "")
	probeUntil(t, web, vip, 1053, corev1.ProtocolUDP, testbed.TimedOut, "")

	env.cp.ApplyPolicy(t, "prod", policy("allow-dns.yaml"))
	probeUntil(t, web, vip, 53, corev1.ProtocolUDP, testbed.Connected, "coredns")
	probeUntil(t, web, vip, 1053, corev1.ProtocolUDP, testbed.Connected, "coredns")
	// allow-dns names UDP only.
	probeUntil(t, web, vip, 53, corev1.ProtocolTCP, testbed.TimedOut, "")
	// Other pods of prod, which allow-dns does not select, stay denied.
	probeUntil(t, env.frontend, vip, 53, corev1.ProtocolUDP, testbed.TimedOut, "")

	env.cp.DeletePolicy(t, "prod", deny)
	probeUntil(t, env.frontend, vip, 53, corev1.ProtocolUDP, testbed.Connected, "coredns")
}
