package bench

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

func TestParseCounts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{in: "1000,5000,10000", want: []int{1000, 5000, 10000}},
		{in: "10000, 1000,1000", want: []int{1000, 10000}},
		{in: "100", want: []int{100}},
		{in: "0", wantErr: true},
		{in: "1000,", wantErr: true},
		{in: "1k", wantErr: true},
	} {
		got, err := ParseCounts(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseCounts(%q): error %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseCounts(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func simNamespaces(n int) []string {
	out := make([]string, n)
	for k := range out {
		out[k] = testbed.SimNamespace(k)
	}
	return out
}

func TestScalePolicies(t *testing.T) {
	for _, tc := range []struct {
		namespaces, n int
		denies        int
		maxPerNS      int // policies in the fullest namespace
	}{
		{namespaces: 10, n: 100, denies: 10, maxPerNS: 10},
		{namespaces: 10, n: 1000, denies: 10, maxPerNS: 100},
		{namespaces: 100, n: 100, denies: 50, maxPerNS: 2},
		{namespaces: 100, n: 1000, denies: 100, maxPerNS: 10},
		{namespaces: 1, n: 3, denies: 1, maxPerNS: 3},
	} {
		pols := ScalePolicies(simNamespaces(tc.namespaces), tc.n)
		if len(pols) != tc.n {
			t.Errorf("%d namespaces, %d policies: got %d", tc.namespaces, tc.n, len(pols))
		}
		keys, perNS, denies := map[string]bool{}, map[string]int{}, 0
		for _, p := range pols {
			if keys[PolicyKey(p)] {
				t.Errorf("%d namespaces, %d policies: %s twice", tc.namespaces, tc.n, PolicyKey(p))
			}
			keys[PolicyKey(p)] = true
			perNS[p.Namespace]++
			if p.Name == "default-deny" {
				denies++
			}
		}
		most := 0
		for _, c := range perNS {
			most = max(most, c)
		}
		if denies != tc.denies || most != tc.maxPerNS {
			t.Errorf("%d namespaces, %d policies: %d default denies, fullest namespace %d; want %d, %d", tc.namespaces, tc.n, denies, most, tc.denies, tc.maxPerNS)
		}
	}
	if got := ScalePolicies(nil, 100); len(got) != 0 {
		t.Errorf("no namespaces: %d policies, want none", len(got))
	}
}

// TestScalePoliciesSelectSimulatedPods checks that the fillers' peer
// selectors name labels simulated pods and namespaces have, so the
// policies are work for the compiler and not dead weight.
func TestScalePoliciesSelectSimulatedPods(t *testing.T) {
	opts := testbed.SimulatedOptions{}
	tiers, teams := map[string]bool{}, map[string]bool{}
	for i := range 1000 {
		tiers[testbed.SimPodAt(opts, i).Labels["tier"]] = true
	}
	for k := range 10 {
		teams[testbed.SimNamespaceLabels(k)["team"]] = true
	}
	selTier, selTeam := 0, 0
	for _, p := range ScalePolicies(simNamespaces(10), 100) {
		for _, r := range p.Spec.Ingress {
			for _, peer := range r.From {
				if peer.PodSelector != nil && tiers[peer.PodSelector.MatchLabels["tier"]] {
					selTier++
				}
				if peer.NamespaceSelector != nil && teams[peer.NamespaceSelector.MatchLabels["team"]] {
					selTeam++
				}
			}
		}
	}
	if selTier == 0 || selTeam == 0 {
		t.Errorf("ingress peers selecting simulated tiers: %d, teams: %d; want both > 0", selTier, selTeam)
	}
}

// TestScalePoliciesSpread checks that every filler of a population has
// ipBlocks of its own and tier selectors simulated pods match, whatever
// the namespace count.
func TestScalePoliciesSpread(t *testing.T) {
	for _, namespaces := range []int{10, 100} {
		blocks := map[string]string{}
		for _, p := range ScalePolicies(simNamespaces(namespaces), 1000) {
			var peers []networkingv1.NetworkPolicyPeer
			for _, r := range p.Spec.Ingress {
				peers = append(peers, r.From...)
			}
			for _, r := range p.Spec.Egress {
				peers = append(peers, r.To...)
			}
			for _, peer := range peers {
				if b := peer.IPBlock; b != nil {
					if prev, ok := blocks[b.CIDR]; ok {
						t.Errorf("%d namespaces: block %s in %s and %s", namespaces, b.CIDR, prev, PolicyKey(p))
					}
					blocks[b.CIDR] = PolicyKey(p)
					if len(b.Except) != 1 || !strings.HasSuffix(b.Except[0], ".128/25") || strings.TrimSuffix(b.Except[0], ".128/25") != strings.TrimSuffix(b.CIDR, ".0/24") {
						t.Errorf("%d namespaces: block %s except %v", namespaces, b.CIDR, b.Except)
					}
				}
				if s := peer.PodSelector; s != nil && s.MatchLabels["tier"] != "" {
					var i int
					if _, err := fmt.Sscanf(s.MatchLabels["tier"], "f%d", &i); err != nil || i >= simTiers {
						t.Errorf("%d namespaces, %s: tier %q, want f0…f7", namespaces, PolicyKey(p), s.MatchLabels["tier"])
					}
				}
			}
		}
		// Fillers have four blocks each (ingress 172/100, egress 192/198).
		fillers := 1000 - min(namespaces, 500)
		if len(blocks) != 4*fillers {
			t.Errorf("%d namespaces: %d distinct blocks, want %d", namespaces, len(blocks), 4*fillers)
		}
	}
}

func TestDiffPolicies(t *testing.T) {
	ns := simNamespaces(10)
	have := map[string]*networkingv1.NetworkPolicy{}
	for _, p := range ScalePolicies(ns, 100) {
		have[PolicyKey(p)] = p
	}
	// Same namespaces, more policies: only creates.
	create, del := DiffPolicies(have, ScalePolicies(ns, 1000))
	if len(create) != 900 || len(del) != 0 {
		t.Errorf("100 → 1000 policies: %d creates, %d deletes; want 900, 0", len(create), len(del))
	}
	// More namespaces, fewer policies: the fillers move, so both.
	create, del = DiffPolicies(have, ScalePolicies(simNamespaces(50), 60))
	for _, k := range del {
		if have[k] == nil {
			t.Errorf("delete %s, which does not exist", k)
		}
	}
	if got := len(have) + len(create) - len(del); got != 60 {
		t.Errorf("100 policies → 60: %d after the diff", got)
	}
	if create, del := DiffPolicies(have, nil); len(create) != 0 || len(del) != 100 {
		t.Errorf("→ none: %d creates, %d deletes; want 0, 100", len(create), len(del))
	}
}

func TestHistogramDelta(t *testing.T) {
	before := map[string]float64{"h_sum": 1.0, "h_count": 10}
	after := map[string]float64{"h_sum": 1.5, "h_count": 20}
	if mean, n := HistogramDelta(before, after, "h"); n != 10 || math.Abs(mean-50) > 1e-9 {
		t.Errorf("HistogramDelta: %v ms over %v, want 50 ms over 10", mean, n)
	}
	if mean, n := HistogramDelta(after, after, "h"); mean != 0 || n != 0 {
		t.Errorf("HistogramDelta with no new samples: %v over %v, want 0 over 0", mean, n)
	}
}

func TestFitGrowth(t *testing.T) {
	xs := []float64{1000, 5000, 10000}
	for _, tc := range []struct {
		name           string
		ys             []float64
		exponent, perK float64
		base           float64
		reading        string
	}{
		{"linear", []float64{2, 10, 20}, 1, 2, 0, "linear"},
		{"linear with a fixed part", []float64{40, 76, 121}, 0.49, 9, 31, "linear"},
		{"flat", []float64{7, 7, 7}, 0, 0, 7, "flat"},
		{"within 10 %", []float64{100, 95, 105}, 0.01, 0.6, 97, "flat"},
		{"falls", []float64{10, 6, 5}, -0.30, -0.5, 9.5, "falls"},
		{"quadratic", []float64{1, 25, 100}, 2, 11, -17.5, "quadratic or worse"},
		{"square root", []float64{1, math.Sqrt(5), math.Sqrt(10)}, 0.5, 0.24, 0.86, "sublinear"},
	} {
		f, ok := FitGrowth(xs, tc.ys)
		if !ok {
			t.Errorf("%s: no fit", tc.name)
			continue
		}
		near := func(got, want float64) bool { return math.Abs(got-want) <= 0.05*max(1, math.Abs(want)) }
		if !near(f.Exponent, tc.exponent) || !near(f.PerThousand, tc.perK) || !near(f.Base, tc.base) || f.Reading() != tc.reading {
			t.Errorf("%s: exponent %.3f, per 1000 %.3f, base %.2f, %q; want %.2f, %.2f, %.2f, %q", tc.name, f.Exponent, f.PerThousand, f.Base, f.Reading(), tc.exponent, tc.perK, tc.base, tc.reading)
		}
		if f.XRatio != 10 || math.Abs(f.YRatio-tc.ys[2]/tc.ys[0]) > 1e-9 {
			t.Errorf("%s: ratios ×%v, ×%v", tc.name, f.XRatio, f.YRatio)
		}
	}
	if f, _ := FitGrowth(xs, []float64{2, 10, 20}); math.Abs(f.R2-1) > 1e-9 {
		t.Errorf("points on a line: R² %v, want 1", f.R2)
	}
	if f, _ := FitGrowth(xs, []float64{10, 40, 12}); f.R2 > 0.5 {
		t.Errorf("points off any line: R² %v, want < 0.5", f.R2)
	}
	if f, _ := FitGrowth([]float64{10000, 1000, 5000}, []float64{121, 40, 76}); math.Abs(f.Bend-1) > 0.01 {
		t.Errorf("a line with a fixed part, points out of order: bend %v, want 1", f.Bend)
	}
	if f, _ := FitGrowth([]float64{100, 1000}, []float64{50, 90}); !strings.Contains(f.Reading(), "cannot tell") {
		t.Errorf("two stages with a fixed part: %q, want it to say two stages cannot tell", f.Reading())
	}
	if f, _ := FitGrowth([]float64{1000, 5000}, []float64{2, 10}); f.Bend != 0 {
		t.Errorf("two points: bend %v, want 0 (undefined)", f.Bend)
	}
	if _, ok := FitGrowth([]float64{1000, 1000}, []float64{1, 2}); ok {
		t.Error("one x: want no fit")
	}
	if _, ok := FitGrowth([]float64{1000, 5000}, []float64{0, 3}); ok {
		t.Error("one positive y: want no fit")
	}
}

func TestCPUMsPerChange(t *testing.T) {
	if got := (ScaleAgent{StageCPUSeconds: 2, StageChanges: 80}).CPUMsPerChange(); got != 25 {
		t.Errorf("2 s over 80 changes: %v ms each, want 25", got)
	}
	if got := (ScaleAgent{StageCPUSeconds: 2}).CPUMsPerChange(); got != 0 {
		t.Errorf("no changes: %v ms each, want 0", got)
	}
}

func scaleStage(pods, policies int, rss, p99 float64) ScaleStage {
	return ScaleStage{
		Pods: pods, Policies: policies,
		Agents:      []ScaleAgent{{AgentSample: AgentSample{Node: "node-1", RSSMiB: rss}}, {AgentSample: AgentSample{Node: "node-2", RSSMiB: rss / 2}}},
		Propagation: []PropagationRow{{Event: "policy create", P99ms: p99}, {Event: "policy delete", P99ms: p99 / 4}},
	}
}

func TestFitStages(t *testing.T) {
	// RSS linear in pods, propagation linear in policies.
	stages := []ScaleStage{
		scaleStage(1000, 100, 10, 1), scaleStage(1000, 1000, 10, 10),
		scaleStage(10000, 100, 100, 1), scaleStage(10000, 1000, 100, 10),
	}
	rows := FitStages(stages)
	find := func(cost, against string, held int) *GrowthRow {
		for i, r := range rows {
			if r.Cost == cost && r.Against == against && r.HeldAt == held {
				return &rows[i]
			}
		}
		return nil
	}
	for _, tc := range []struct {
		cost, against string
		held          int
		reading       string
	}{
		{"RSS MiB", "pods", 100, "linear"},
		{"RSS MiB", "pods", 1000, "linear"},
		{"RSS MiB", "policies", 1000, "flat"},
		{"propagation p99 ms", "policies", 10000, "linear"},
		{"propagation p99 ms", "pods", 1000, "flat"},
	} {
		r := find(tc.cost, tc.against, tc.held)
		if r == nil {
			t.Errorf("%s against %s at %d: no row", tc.cost, tc.against, tc.held)
			continue
		}
		if r.Reading() != tc.reading || r.Points != 2 {
			t.Errorf("%s against %s at %d: %s over %d points, want %s over 2", tc.cost, tc.against, tc.held, r.Reading(), r.Points, tc.reading)
		}
	}
	// Identities are 0 in every stage here: no exponent to fit.
	if r := find("identities", "pods", 100); r != nil {
		t.Errorf("identities all 0: got a fit %+v", *r)
	}
}

func TestScaleWriteTable(t *testing.T) {
	r := &ScaleResults{Kernel: "6.1", CPUs: 2, Iterations: 10, Stages: []ScaleStage{scaleStage(1000, 100, 10, 1), scaleStage(5000, 100, 50, 2)}}
	r.Growth = FitStages(r.Stages)
	var b bytes.Buffer
	r.WriteTable(&b)
	out := b.String()
	for _, want := range []string{"| 1000 |", "| 5000 |", "node-2", "policy delete", "| RSS MiB | pods | 100 | 2 | 5.0 | 5.00 | 1.00 |", "linear"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
