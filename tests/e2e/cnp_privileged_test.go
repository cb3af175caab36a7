package e2e

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/k8s"
	"github.com/palisade-cni/palisade/tests/testbed"
)

func clusterPolicy(name string, tier cnpv1.Tier, prio int32, subjectNS map[string]string) *cnpv1.ClusterNetworkPolicy {
	p := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Tier, p.Spec.Priority = tier, prio
	p.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: subjectNS}
	return p
}

func nsIngress(action cnpv1.ClusterNetworkPolicyRuleAction, ns map[string]string, protos ...cnpv1.ClusterNetworkPolicyProtocol) cnpv1.ClusterNetworkPolicyIngressRule {
	return cnpv1.ClusterNetworkPolicyIngressRule{Name: string(action) + "-ns", Action: action, Protocols: protos,
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: ns}}}}
}

func tcpDest(n int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: n}}}
}

// waitProgrammed waits for the agents' Programmed condition on p.
func waitProgrammed(t *testing.T, cp *testbed.ControlPlane, name string, want metav1.ConditionStatus) {
	t.Helper()
	waitFor(t, "clusternetworkpolicy "+name+" condition "+k8s.ProgrammedCondition+"="+string(want), func() bool {
		c := meta.FindStatusCondition(cp.ClusterPolicy(t, name).Status.Conditions, k8s.ProgrammedCondition)
		return c != nil && c.Status == want
	})
}

// TestPrivilegedClusterNetworkPolicy runs ClusterNetworkPolicies through
// the real API server (the testbed installs the CRD the manifests ship)
// against the real datapath: the admin tiers around a namespace owner's
// NetworkPolicy.
func TestPrivilegedClusterNetworkPolicy(t *testing.T) {
	env := setUpOneNodeWith(t, testbed.AgentOptions{}, func(cp *testbed.ControlPlane) { cp.InstallClusterPolicyCRD(t) })
	const (
		tcp = corev1.ProtocolTCP
		udp = corev1.ProtocolUDP
		ok  = testbed.Connected
		no  = testbed.TimedOut
	)
	prod := map[string]string{"team": "prod"}
	lab := map[string]string{"kubernetes.io/metadata.name": "lab"}
	// The namespace owner admits everyone to backend.
	allowAll := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "backend-open"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "backend"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
		},
	}

	t.Run("an admin Deny overrides the namespace owner's allow", func(t *testing.T) {
		createPolicy(t, env.cp, allowAll)
		eventually(t, expect{env.outsider, env.backend, 6379, tcp, ok})
		p := clusterPolicy("no-lab-to-prod", cnpv1.AdminTier, 10, prod)
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{nsIngress(cnpv1.ClusterNetworkPolicyRuleActionDeny, lab, tcpDest(6379))}
		env.cp.ApplyClusterPolicy(t, p)
		eventually(t,
			expect{env.outsider, env.backend, 6379, tcp, no},
			// Only the rule's port and protocol.
			expect{env.outsider, env.backend, 8080, tcp, ok},
			expect{env.outsider, env.backend, 6379, udp, ok},
			// Only the rule's peers.
			expect{env.frontend, env.backend, 6379, tcp, ok},
		)
		waitProgrammed(t, env.cp, p.Name, metav1.ConditionTrue)

		t.Run("a higher-precedence Pass hands the decision back to NetworkPolicy", func(t *testing.T) {
			pass := clusterPolicy("pass-lab", cnpv1.AdminTier, 5, prod)
			pass.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{nsIngress(cnpv1.ClusterNetworkPolicyRuleActionPass, lab)}
			env.cp.ApplyClusterPolicy(t, pass)
			eventually(t, expect{env.outsider, env.backend, 6379, tcp, ok})
			env.cp.DeleteClusterPolicy(t, pass.Name)
			eventually(t, expect{env.outsider, env.backend, 6379, tcp, no})
		})
		t.Run("raising the Deny's priority number below an Accept lets the Accept win", func(t *testing.T) {
			acc := clusterPolicy("accept-lab", cnpv1.AdminTier, 20, prod)
			acc.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{nsIngress(cnpv1.ClusterNetworkPolicyRuleActionAccept, lab)}
			env.cp.ApplyClusterPolicy(t, acc)
			eventually(t, expect{env.outsider, env.backend, 6379, tcp, no})
			env.cp.UpdateClusterPolicy(t, p.Name, func(s *cnpv1.ClusterNetworkPolicySpec) { s.Priority = 30 })
			eventually(t, expect{env.outsider, env.backend, 6379, tcp, ok})
			env.cp.DeleteClusterPolicy(t, acc.Name)
		})
		env.cp.DeleteClusterPolicy(t, p.Name)
		env.cp.DeletePolicy(t, "prod", allowAll.Name)
		eventually(t, expect{env.outsider, env.backend, 6379, tcp, ok})
	})

	t.Run("the Baseline tier holds only where no NetworkPolicy decides", func(t *testing.T) {
		p := clusterPolicy("baseline-no-lab", cnpv1.BaselineTier, 1, prod)
		p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{nsIngress(cnpv1.ClusterNetworkPolicyRuleActionDeny, lab)}
		env.cp.ApplyClusterPolicy(t, p)
		eventually(t,
			expect{env.outsider, env.backend, 6379, tcp, no},
			expect{env.outsider, env.frontend, 80, udp, no},
			expect{env.frontend, env.backend, 6379, tcp, ok},
		)
		createPolicy(t, env.cp, allowAll)
		eventually(t,
			expect{env.outsider, env.backend, 6379, tcp, ok},
			expect{env.outsider, env.frontend, 80, udp, no},
		)
		env.cp.DeletePolicy(t, "prod", allowAll.Name)
		env.cp.DeleteClusterPolicy(t, p.Name)
	})

	t.Run("an egress Deny holds through a Service ClusterIP", func(t *testing.T) {
		vip := env.cp.CreateServiceTo(t, "prod", "backend-svc", env.backend.IP(), tcpPort("web", 80, 8080))
		probeUntil(t, env.frontend, vip, 80, tcp, ok, "backend")
		p := clusterPolicy("frontend-not-to-backend", cnpv1.AdminTier, 1, prod)
		p.Spec.Subject = cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: prod},
			PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"role": "frontend"}},
		}}
		p.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "no-backend", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Pods: &cnpv1.NamespacedPod{
				NamespaceSelector: metav1.LabelSelector{},
				PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"role": "backend"}},
			}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{tcpDest(8080)},
		}}
		env.cp.ApplyClusterPolicy(t, p)
		probeUntil(t, env.frontend, vip, 80, tcp, no, "")
		eventually(t, expect{env.frontend, env.backend, 8080, tcp, no}, expect{env.frontend, env.backend, 6379, tcp, ok},
			expect{env.other, env.backend, 8080, tcp, ok})
		env.cp.DeleteClusterPolicy(t, p.Name)
		probeUntil(t, env.frontend, vip, 80, tcp, ok, "backend")
	})
}
