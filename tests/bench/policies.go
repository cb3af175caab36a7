package bench

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The measured flow: a client pod to a server pod of one namespace.
const (
	BenchTCPPort = 5201
	BenchUDPPort = 5202
	// MetricsPort is a named containerPort of every measured pod, for the
	// filler rules' named ports.
	MetricsPort     = 9090
	MetricsPortName = "metrics"

	LabelApp    = "app"
	AppServer   = "server"
	AppClient   = "client"
	RulesPerPol = 10
)

// NamespacePolicies is what a measured namespace has in force for rules
// filler rules: a default deny of both directions, the allow of the
// measured flow (ingress at the server, egress at the client), and
// rules/RulesPerPol filler policies of RulesPerPol rules each that select
// every pod of the namespace but never allow the measured ports, so the
// measured flow's verdict depends on the allow alone. rules 0 gives no
// policy at all: pods under Palisade but unselected.
func NamespacePolicies(namespace string, rules int) []*networkingv1.NetworkPolicy {
	if rules == 0 {
		return nil
	}
	pols := []*networkingv1.NetworkPolicy{DefaultDeny(namespace), AllowIngress(namespace), AllowEgress(namespace)}
	for i := range rules / RulesPerPol {
		pols = append(pols, Filler(namespace, i))
	}
	return pols
}

// Rules counts the ingress and egress rules of pols.
func Rules(pols []*networkingv1.NetworkPolicy) int {
	n := 0
	for _, p := range pols {
		n += len(p.Spec.Ingress) + len(p.Spec.Egress)
	}
	return n
}

func both() []networkingv1.PolicyType {
	return []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
}

// DefaultDeny selects every pod of namespace, both directions, no rule.
func DefaultDeny(namespace string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "default-deny"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: both()},
	}
}

// AllowIngress lets clients reach the server's measured ports.
func AllowIngress(namespace string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "allow-bench-in"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{LabelApp: AppServer}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelApp: AppClient}}}},
				Ports: benchPorts(),
			}},
		},
	}
}

// AllowEgress lets clients send to the server's measured ports.
func AllowEgress(namespace string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: "allow-bench-out"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{LabelApp: AppClient}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelApp: AppServer}}}},
				Ports: benchPorts(),
			}},
		},
	}
}

func benchPorts() []networkingv1.NetworkPolicyPort {
	return []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, BenchTCPPort), port(corev1.ProtocolUDP, BenchUDPPort)}
}

func port(proto corev1.Protocol, p int) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(p))
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func portRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(from)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v, EndPort: &to}
}

func namedPort(name string) networkingv1.NetworkPolicyPort {
	tcp := corev1.ProtocolTCP
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &v}
}

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// Filler is the i-th filler policy of a namespace: it selects every pod and
// has RulesPerPol rules of the shapes real policies have (pod, namespace
// and combined selectors, ipBlocks with except, numeric and named ports,
// port ranges; ingress and egress), none of which allows a measured port.
func Filler(namespace string, i int) *networkingv1.NetworkPolicy {
	a, b := byte(i%250), byte(i/250%250)
	cidr := func(first int) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
			CIDR:   fmt.Sprintf("%d.%d.%d.0/24", first, b, a),
			Except: []string{fmt.Sprintf("%d.%d.%d.128/25", first, b, a)},
		}}
	}
	tier := fmt.Sprintf("f%d", i)
	team := fmt.Sprintf("t%d", i%7)
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	in := []networkingv1.NetworkPolicyIngressRule{
		{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("tier", tier)}}, Ports: []networkingv1.NetworkPolicyPort{port(tcp, 8000+i%1000)}},
		{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", team)}}, Ports: []networkingv1.NetworkPolicyPort{portRange(tcp, 30000, 32767)}},
		{From: []networkingv1.NetworkPolicyPeer{cidr(172)}, Ports: []networkingv1.NetworkPolicyPort{namedPort(MetricsPortName)}},
		{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", team), PodSelector: sel("tier", tier)}}, Ports: []networkingv1.NetworkPolicyPort{port(udp, 53)}},
		{From: []networkingv1.NetworkPolicyPeer{cidr(100)}, Ports: []networkingv1.NetworkPolicyPort{portRange(udp, 40000, 40100)}},
	}
	eg := []networkingv1.NetworkPolicyEgressRule{
		{To: []networkingv1.NetworkPolicyPeer{cidr(192)}, Ports: []networkingv1.NetworkPolicyPort{port(tcp, 443)}},
		{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("tier", tier)}}, Ports: []networkingv1.NetworkPolicyPort{namedPort(MetricsPortName)}},
		{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", team)}}, Ports: []networkingv1.NetworkPolicyPort{portRange(tcp, 20000, 20100)}},
		{To: []networkingv1.NetworkPolicyPeer{cidr(198)}, Ports: []networkingv1.NetworkPolicyPort{port(udp, 123)}},
		{To: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("tier", tier, "app", "db")}}, Ports: []networkingv1.NetworkPolicyPort{port(tcp, 5432)}},
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("filler-%d", i)},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: both(), Ingress: in, Egress: eg},
	}
}
