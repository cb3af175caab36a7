package bench

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ScaleClusterPolicies is the ClusterNetworkPolicy population of the CNP
// scale stage (issue 20, item 3): n policies, one simulated namespace each
// in turn as the subject, alternating the Admin and Baseline tiers. Admin
// policies deny one team on a port of their own, pass staging namespaces
// to the namespace owner and accept prod on 8080; Baseline ones deny
// another team and accept prod. So the rule sets of the subjects mix
// deny, pass and accept entries over namespace-selector peers, as the
// agent folds them into its one rule trie. The same inputs give the same
// names.
func ScaleClusterPolicies(namespaces []string, n int) []*cnpv1.ClusterNetworkPolicy {
	if len(namespaces) == 0 {
		return nil
	}
	tcp := func(port int32) []cnpv1.ClusterNetworkPolicyProtocol {
		return []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: port}}}}
	}
	from := func(labels map[string]string) []cnpv1.ClusterNetworkPolicyIngressPeer {
		return []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: labels}}}
	}
	team := func(k int) map[string]string { return map[string]string{"team": fmt.Sprintf("t%d", k%7)} }
	prod := map[string]string{"env": "prod"}
	out := make([]*cnpv1.ClusterNetworkPolicy, 0, n)
	for i := range n {
		p := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-cnp-%04d", i)}}
		p.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: namespaces[i%len(namespaces)]}}
		accept := cnpv1.ClusterNetworkPolicyIngressRule{Name: "accept-prod", Action: cnpv1.ClusterNetworkPolicyRuleActionAccept, From: from(prod), Protocols: tcp(8080)}
		if i%2 == 0 {
			p.Spec.Tier, p.Spec.Priority = cnpv1.AdminTier, int32(100+i/2%800)
			p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
				{Name: "deny-team", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: from(team(i)), Protocols: tcp(int32(1000 + i))},
				{Name: "pass-staging", Action: cnpv1.ClusterNetworkPolicyRuleActionPass, From: from(map[string]string{"env": "staging"})},
				accept,
			}
		} else {
			p.Spec.Tier, p.Spec.Priority = cnpv1.BaselineTier, int32(100+i/2%800)
			p.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
				{Name: "deny-team", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny, From: from(team(i + 3))},
				accept,
			}
		}
		out = append(out, p)
	}
	return out
}
