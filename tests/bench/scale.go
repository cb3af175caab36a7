package bench

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
)

// ParseCounts reads a comma-separated list of positive counts (-scale,
// -scale-policies) and returns it sorted ascending: simulated pods can only
// grow, so stages run smallest first.
func ParseCounts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("parse counts %q: %q is not a positive number", s, f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ScalePolicies is the policy population of a scale stage: n policies over
// the simulated namespaces, shaped like a measured namespace's (policies.go).
// Each of the first min(len(namespaces), n/2) namespaces gets a default
// deny; the remaining policies are Fillers dealt round-robin over all
// namespaces, so every namespace with a policy isolates its pods. Fillers
// are adjusted (spreadFiller) so that the cost depends on the number of
// policies, not on how many share a namespace. The same inputs always give
// the same names, so a stage is reached from the previous by a diff.
func ScalePolicies(namespaces []string, n int) []*networkingv1.NetworkPolicy {
	if len(namespaces) == 0 || n <= 0 {
		return nil
	}
	denies := min(len(namespaces), n/2)
	out := make([]*networkingv1.NetworkPolicy, 0, n)
	for _, ns := range namespaces[:denies] {
		out = append(out, DefaultDeny(ns))
	}
	for j := range n - denies {
		i := j / len(namespaces)
		out = append(out, spreadFiller(Filler(namespaces[j%len(namespaces)], i), j))
	}
	return out
}

// simTiers is how many tier labels simulated pods carry (f0…f7).
const simTiers = 8

// spreadFiller makes the j-th filler of the whole population distinct and
// live. Filler derives its ipBlocks from its index within the namespace,
// so the same blocks would recur in every namespace and the number of
// distinct prefixes (each an identity and an ipcache entry) would follow
// policies per namespace; here they follow j, one set per policy, as in the
// main benchmark. And its tier selectors name tier f<i>, which no simulated
// pod has for i ≥ 8; here they name f<i mod 8>, so every filler's selector
// peers are simulated pods.
func spreadFiller(p *networkingv1.NetworkPolicy, j int) *networkingv1.NetworkPolicy {
	for _, r := range p.Spec.Ingress {
		spreadPeers(r.From, j)
	}
	for _, r := range p.Spec.Egress {
		spreadPeers(r.To, j)
	}
	return p
}

func spreadPeers(peers []networkingv1.NetworkPolicyPeer, j int) {
	for _, peer := range peers {
		if b := peer.IPBlock; b != nil {
			first, _, _ := strings.Cut(b.CIDR, ".")
			prefix := fmt.Sprintf("%s.%d.%d", first, j/250%250, j%250)
			b.CIDR, b.Except = prefix+".0/24", []string{prefix + ".128/25"}
		}
		if s := peer.PodSelector; s != nil {
			if t, ok := s.MatchLabels["tier"]; ok {
				var i int
				if _, err := fmt.Sscanf(t, "f%d", &i); err == nil {
					s.MatchLabels["tier"] = fmt.Sprintf("f%d", i%simTiers)
				}
			}
		}
	}
}

// PolicyKey names a policy as namespace/name.
func PolicyKey(p *networkingv1.NetworkPolicy) string { return p.Namespace + "/" + p.Name }

// DiffPolicies returns what to create (in want, not in have) and which
// keys of have to delete (not in want). Policies of the same key are
// assumed equal: ScalePolicies is deterministic.
func DiffPolicies(have map[string]*networkingv1.NetworkPolicy, want []*networkingv1.NetworkPolicy) (create []*networkingv1.NetworkPolicy, del []string) {
	wanted := map[string]bool{}
	for _, p := range want {
		k := PolicyKey(p)
		wanted[k] = true
		if have[k] == nil {
			create = append(create, p)
		}
	}
	for _, k := range sortedKeys(have) {
		if !wanted[k] {
			del = append(del, k)
		}
	}
	return create, del
}

// HistogramDelta is the mean in milliseconds and the count of a Prometheus
// histogram's observations between two scrapes: the agent's histograms
// are cumulative, and a stage's cost is what it added.
func HistogramDelta(before, after map[string]float64, histogram string) (meanMs, n float64) {
	n = after[histogram+"_count"] - before[histogram+"_count"]
	if n <= 0 {
		return 0, 0
	}
	return (after[histogram+"_sum"] - before[histogram+"_sum"]) / n * 1000, n
}

// Fit is how a cost y grows with x over the stages: the least-squares
// slope in log-log space (the exponent b of y ∝ x^b), the least-squares
// line y = Base + PerThousand·x/1000 with its R², and y's ratio from the
// smallest to the largest x.
type Fit struct {
	Points   int     `json:"points"`
	XRatio   float64 `json:"x_ratio"`
	YRatio   float64 `json:"y_ratio"`
	Exponent float64 `json:"exponent"`
	// PerThousand is what each 1 000 more of x (pods or policies) adds,
	// and Base the line's value at x = 0: the honest figures where y has a
	// large fixed part (the Go runtime's RSS), which pulls the exponent
	// towards 0 although y grows linearly.
	PerThousand float64 `json:"per_thousand"`
	Base        float64 `json:"base"`
	R2          float64 `json:"r2"`
	// Bend is the slope of the last segment (between the two largest x)
	// over that of the first: about 1 for a line, whatever its fixed part;
	// below 1 for a curve that flattens. 0 with fewer than three points.
	Bend float64 `json:"bend"`
}

// FitGrowth fits ys against xs (same length, at least two distinct x).
// Points with y <= 0 are left out of the exponent, which is undefined
// there; ok is false when fewer than two points remain.
func FitGrowth(xs, ys []float64) (f Fit, ok bool) {
	var lx, ly []float64
	for i := range xs {
		if xs[i] > 0 && ys[i] > 0 {
			lx, ly = append(lx, math.Log(xs[i])), append(ly, math.Log(ys[i]))
		}
	}
	if len(lx) < 2 {
		return Fit{}, false
	}
	b, _, _, okLog := line(lx, ly)
	per, base, r2, okLin := line(xs, ys)
	if !okLog || !okLin {
		return Fit{}, false
	}
	lo, hi := argMinMax(xs)
	f = Fit{Points: len(lx), XRatio: xs[hi] / xs[lo], Exponent: b, PerThousand: per * 1000, Base: base, R2: r2, Bend: bend(xs, ys)}
	if ys[lo] != 0 {
		f.YRatio = ys[hi] / ys[lo]
	}
	return f, true
}

// bend is the last segment's slope over the first's, the points taken in
// x order; 0 with fewer than three points or a first slope of 0.
func bend(xs, ys []float64) float64 {
	idx := make([]int, len(xs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(xs[a], xs[b]) })
	n := len(idx)
	if n < 3 {
		return 0
	}
	seg := func(a, b int) float64 { return (ys[b] - ys[a]) / (xs[b] - xs[a]) }
	first := seg(idx[0], idx[1])
	if first == 0 {
		return 0
	}
	return seg(idx[n-2], idx[n-1]) / first
}

// line is the least-squares line y = slope·x + intercept and its R² (1
// when y does not vary); false when x does not vary.
func line(x, y []float64) (slope, intercept, r2 float64, ok bool) {
	var mx, my float64
	for i := range x {
		mx += x[i]
		my += y[i]
	}
	mx /= float64(len(x))
	my /= float64(len(x))
	var sxy, sxx, syy float64
	for i := range x {
		sxy += (x[i] - mx) * (y[i] - my)
		sxx += (x[i] - mx) * (x[i] - mx)
		syy += (y[i] - my) * (y[i] - my)
	}
	if sxx == 0 {
		return 0, 0, 0, false
	}
	slope = sxy / sxx
	r2 = 1.0
	if syy > 0 {
		r2 = sxy * sxy / (sxx * syy)
	}
	return slope, my - slope*mx, r2, true
}

func argMinMax(xs []float64) (lo, hi int) {
	for i, x := range xs {
		if x < xs[lo] {
			lo = i
		}
		if x > xs[hi] {
			hi = i
		}
	}
	return lo, hi
}

// Reading says in words how y grows with x: what the README can claim.
// Within 10 % over the whole range is flat, a fall beyond that is named as
// such (noise, or a cache that pays off); an exponent of 1.25 or more is
// faster than linear and one of 0.75 or more linear. A lower exponent
// still reads linear when y has a fixed part that the line carries
// (three or more stages whose slope does not flatten: Bend ≥ 0.67), and
// sublinear otherwise; two stages cannot tell the two apart. The bands are wide on purpose: a few stages on a
// shared 2-core machine fit no finer.
func (f Fit) Reading() string {
	switch b := f.Exponent; {
	case math.Abs(f.YRatio-1) < 0.1:
		return "flat"
	case f.YRatio < 1:
		return "falls"
	case b >= 1.75:
		return "quadratic or worse"
	case b >= 1.25:
		return "superlinear"
	case b >= 0.75:
		return "linear"
	case f.Points >= 3 && f.Bend >= 0.67:
		return "linear"
	case f.Points < 3:
		return "sublinear, or linear over a fixed part (2 stages cannot tell)"
	default:
		return "sublinear"
	}
}
