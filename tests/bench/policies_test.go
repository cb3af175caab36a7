package bench

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

func TestNamespacePoliciesRules(t *testing.T) {
	for _, rules := range []int{0, 100, 1000, 10000} {
		pols := NamespacePolicies("ns", rules)
		// The allow of the measured flow is one rule each way on top.
		want := rules
		if rules > 0 {
			want += 2
		}
		if got := Rules(pols); got != want {
			t.Errorf("rules=%d: %d rules in force, want %d", rules, got, want)
		}
		names := map[string]bool{}
		for _, p := range pols {
			if names[p.Name] {
				t.Errorf("rules=%d: policy name %s twice", rules, p.Name)
			}
			names[p.Name] = true
		}
	}
}

// TestFillerNeverAllowsTheMeasuredFlow: the measured flow's verdict must
// come from the allow policies alone, or propagation would measure nothing.
func TestFillerNeverAllowsTheMeasuredFlow(t *testing.T) {
	for i := range 300 {
		p := Filler("ns", i)
		var ports []networkingv1.NetworkPolicyPort
		for _, r := range p.Spec.Ingress {
			if len(r.Ports) == 0 {
				t.Fatalf("filler %d: an ingress rule without ports allows everything", i)
			}
			ports = append(ports, r.Ports...)
		}
		for _, r := range p.Spec.Egress {
			if len(r.Ports) == 0 {
				t.Fatalf("filler %d: an egress rule without ports allows everything", i)
			}
			ports = append(ports, r.Ports...)
		}
		for _, pp := range ports {
			if pp.Port.IntValue() == 0 {
				continue // named: only "metrics", which is 9090
			}
			lo, hi := pp.Port.IntValue(), pp.Port.IntValue()
			if pp.EndPort != nil {
				hi = int(*pp.EndPort)
			}
			for _, bench := range []int{BenchTCPPort, BenchUDPPort} {
				if lo <= bench && bench <= hi {
					t.Errorf("filler %d: port %d..%d covers measured port %d", i, lo, hi, bench)
				}
			}
		}
	}
}
