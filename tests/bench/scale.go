package bench

import (
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
// namespaces, so every namespace with a policy isolates its pods and the
// fillers' tier and team selectors pick simulated pods as peers (simulated
// pods carry tier f0…f7, namespaces team t0…t6). The same inputs always give
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
		out = append(out, Filler(namespaces[j%len(namespaces)], j/len(namespaces)))
	}
	return out
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
// slope in log-log space (the exponent b of y ∝ x^b) and y's ratio from the
// smallest to the largest x.
type Fit struct {
	Points   int     `json:"points"`
	XRatio   float64 `json:"x_ratio"`
	YRatio   float64 `json:"y_ratio"`
	Exponent float64 `json:"exponent"`
	// PerThousand is the least-squares slope of y against x, in y's units
	// per 1 000 of x (pods or policies): what each thousand more adds. It
	// is the honest figure where y has a large fixed part (the Go runtime's
	// RSS), which pulls the exponent towards 0.
	PerThousand float64 `json:"per_thousand"`
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
	b, okLog := slope(lx, ly)
	per, okLin := slope(xs, ys)
	if !okLog || !okLin {
		return Fit{}, false
	}
	lo, hi := argMinMax(xs)
	f = Fit{Points: len(lx), XRatio: xs[hi] / xs[lo], Exponent: b, PerThousand: per * 1000}
	if ys[lo] != 0 {
		f.YRatio = ys[hi] / ys[lo]
	}
	return f, true
}

// slope is the least-squares slope of y on x; false when x does not vary.
func slope(x, y []float64) (float64, bool) {
	var mx, my float64
	for i := range x {
		mx += x[i]
		my += y[i]
	}
	mx /= float64(len(x))
	my /= float64(len(x))
	var sxy, sxx float64
	for i := range x {
		sxy += (x[i] - mx) * (y[i] - my)
		sxx += (x[i] - mx) * (x[i] - mx)
	}
	if sxx == 0 {
		return 0, false
	}
	return sxy / sxx, true
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

// Reading says in words how an exponent grows: what the README can claim.
// The bands are wide on purpose: two or three stages on a shared 2-core
// machine fit no finer than that.
func (f Fit) Reading() string {
	switch b := f.Exponent; {
	case b < 0.2:
		return "flat"
	case b < 0.75:
		return "sublinear"
	case b < 1.25:
		return "linear"
	case b < 1.75:
		return "superlinear"
	default:
		return "quadratic or worse"
	}
}
