package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// svcPort is one port of a test Service: port -> targetPort.
type svcPort struct {
	name         string
	proto        corev1.Protocol
	port, target int32
}

// createService creates a selector-less ClusterIP Service and an
// EndpointSlice naming the backend pod, the way the EndpointSlice controller
// would. It returns the ClusterIP.
func createService(t *testing.T, cp *testbed.ControlPlane, namespace, name string, backend *testbed.Pod, ports ...svcPort) netip.Addr {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := corev1.ServiceSpec{}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{backend.IP().String()}}},
	}
	for _, p := range ports {
		spec.Ports = append(spec.Ports, corev1.ServicePort{Name: p.name, Port: p.port, TargetPort: intstr.FromInt32(p.target), Protocol: p.proto})
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &p.name, Port: &p.target, Protocol: &p.proto})
	}
	svc, err := cp.Client.CoreV1().Services(namespace).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service: %v", err)
	}
	if _, err := cp.Client.DiscoveryV1().EndpointSlices(namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create endpointslice: %v", err)
	}
	return netip.MustParseAddr(svc.Spec.ClusterIP)
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
	vip := createService(t, env.cp, "prod", "backend", env.backend, svcPort{"web", corev1.ProtocolTCP, 80, 8080})
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
	vip := createService(t, env.cp, "kube-system", "kube-dns", dns,
		svcPort{"dns", corev1.ProtocolUDP, 53, 53}, svcPort{"dns-tcp", corev1.ProtocolTCP, 53, 53}, svcPort{"dns-alt", corev1.ProtocolUDP, 1053, 1053})
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
