package bench

import (
	"testing"

	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

func TestScaleClusterPolicies(t *testing.T) {
	namespaces := []string{"sim-000", "sim-001", "sim-002"}
	tests := []struct {
		name           string
		n              int
		admin, base    int
		firstSubjectNS string
	}{
		{"none", 0, 0, 0, ""},
		{"one of each tier", 2, 1, 1, "sim-000"},
		{"more policies than namespaces", 100, 50, 50, "sim-000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ScaleClusterPolicies(namespaces, tt.n)
			if len(got) != tt.n {
				t.Fatalf("%d policies, want %d", len(got), tt.n)
			}
			names := map[string]bool{}
			var admin, base int
			for _, p := range got {
				if names[p.Name] {
					t.Errorf("name %s twice", p.Name)
				}
				names[p.Name] = true
				switch p.Spec.Tier {
				case cnpv1.AdminTier:
					admin++
				case cnpv1.BaselineTier:
					base++
					for _, r := range p.Spec.Ingress {
						if r.Action == cnpv1.ClusterNetworkPolicyRuleActionPass {
							t.Errorf("%s: Pass in the Baseline tier", p.Name)
						}
					}
				}
				if p.Spec.Priority < 0 || p.Spec.Priority > 1000 {
					t.Errorf("%s: priority %d out of 0..1000", p.Name, p.Spec.Priority)
				}
			}
			if admin != tt.admin || base != tt.base {
				t.Errorf("%d Admin and %d Baseline, want %d and %d", admin, base, tt.admin, tt.base)
			}
			if tt.n > 0 {
				if ns := got[0].Spec.Subject.Namespaces.MatchLabels["kubernetes.io/metadata.name"]; ns != tt.firstSubjectNS {
					t.Errorf("first subject %q, want %q", ns, tt.firstSubjectNS)
				}
			}
		})
	}
}
