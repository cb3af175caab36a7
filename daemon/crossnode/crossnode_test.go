package crossnode

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

func pod(name, node, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, UID: types.UID("uid-" + name), Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c",
			Ports: []corev1.ContainerPort{{ContainerPort: 6379, Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func node(name, ip, cidr string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:   corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}}
}

// objects: frontend on node-1, backend and cache on node-2; frontend may
// send only to backend (egress policy), backend admits only frontend on
// 6379 (ingress policy), cache is not isolated.
func objects() *Objects {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(6379)
	sel := func(k, v string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	return &Objects{
		Pods: []*corev1.Pod{
			pod("frontend", "node-1", "10.244.1.5", map[string]string{"app": "frontend"}),
			pod("backend", "node-2", "10.244.2.5", map[string]string{"app": "backend"}),
			pod("cache", "node-2", "10.244.2.6", map[string]string{"app": "cache"}),
		},
		Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"kubernetes.io/metadata.name": "prod"}}}},
		Nodes:      []*corev1.Node{node("node-1", "198.18.0.11", "10.244.1.0/24"), node("node-2", "198.18.0.12", "10.244.2.0/24")},
		Policies: []*networkingv1.NetworkPolicy{
			{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "backend-from-frontend"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("app", "backend"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{PodSelector: ptr(sel("app", "frontend"))}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
					}}}},
			{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "frontend-to-backend"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: sel("app", "frontend"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
					Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{PodSelector: ptr(sel("app", "backend"))}}}}}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func TestExplainJudgesBothNodes(t *testing.T) {
	o := objects()
	for _, tt := range []struct {
		from, to        string
		port            uint16
		allowed         bool
		egress, ingress bool // verdicts
		notes           string
	}{
		// Both sides allow: node-1's egress and node-2's ingress.
		{from: "prod/frontend", to: "prod/backend", port: 6379, allowed: true, egress: true, ingress: true, notes: "node node-1's agent"},
		// node-2's ingress denies another port.
		{from: "prod/frontend", to: "prod/backend", port: 80, allowed: false, egress: true, ingress: false},
		// node-1's egress denies; cache (node-2) admits everything.
		{from: "prod/frontend", to: "prod/cache", port: 6379, allowed: false, egress: false, ingress: true},
		// By address, and the same node on both sides.
		{from: "10.244.2.6", to: "prod/backend", port: 6379, allowed: false, egress: true, ingress: false},
	} {
		xs, err := o.Explain(agentapi.ExplainRequest{From: tt.from, To: tt.to, Port: tt.port, Protocol: "TCP"})
		if err != nil {
			t.Errorf("%s -> %s:%d: %v", tt.from, tt.to, tt.port, err)
			continue
		}
		if len(xs) != 1 {
			t.Fatalf("%d explanations, want 1", len(xs))
		}
		x := xs[0]
		if x.Egress == nil || x.Ingress == nil {
			t.Errorf("%s -> %s:%d: egress %v ingress %v, want both judged (notes %q)", tt.from, tt.to, tt.port, x.Egress, x.Ingress, x.Notes)
			continue
		}
		if x.Allowed != tt.allowed || x.Egress.Allowed != tt.egress || x.Ingress.Allowed != tt.ingress {
			t.Errorf("%s -> %s:%d: allowed %v (egress %v, ingress %v), want %v (%v, %v)",
				tt.from, tt.to, tt.port, x.Allowed, x.Egress.Allowed, x.Ingress.Allowed, tt.allowed, tt.egress, tt.ingress)
		}
		for _, n := range x.Notes {
			if strings.Contains(n, "judged there") {
				t.Errorf("note %q, though both sides were judged", n)
			}
		}
		if tt.notes != "" && !strings.Contains(strings.Join(x.Notes, "\n"), tt.notes) {
			t.Errorf("notes %q lack %q", x.Notes, tt.notes)
		}
	}
}

func TestExplainOneSideOutsideTheCluster(t *testing.T) {
	xs, err := objects().Explain(agentapi.ExplainRequest{From: "prod/frontend", To: "192.0.2.1", Port: 443, Protocol: "TCP"})
	if err != nil {
		t.Fatal(err)
	}
	if x := xs[0]; x.Egress == nil || x.Ingress != nil || x.Allowed {
		t.Errorf("to an outside address: %+v, want frontend's egress alone, denying", x)
	}
	if _, err := objects().Explain(agentapi.ExplainRequest{From: "prod/nobody", To: "prod/backend"}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("an unknown pod: %v, want not found", err)
	}
}
