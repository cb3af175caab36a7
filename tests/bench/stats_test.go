package bench

import (
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name   string
		values []float64
		want   Summary
	}{
		{"empty", nil, Summary{}},
		{"one", []float64{3}, Summary{Min: 3, Median: 3, Max: 3, Values: []float64{3}}},
		{"odd unsorted", []float64{5, 1, 3}, Summary{Min: 1, Median: 3, Max: 5, Values: []float64{5, 1, 3}}},
		{"even takes the middle mean", []float64{4, 1, 2, 10}, Summary{Min: 1, Median: 3, Max: 10, Values: []float64{4, 1, 2, 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Summarize(tt.values), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Summarize(%v) (-want +got):\n%s", tt.values, diff)
			}
		})
	}
}

func TestWithRatio(t *testing.T) {
	tests := []struct {
		name      string
		s, base   Summary
		wantRatio float64
	}{
		{"half", Summary{Median: 1}, Summary{Median: 2}, 0.5},
		{"no baseline", Summary{Median: 1}, Summary{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.WithRatio(tt.base).Ratio; got != tt.wantRatio {
				t.Errorf("ratio = %v, want %v", got, tt.wantRatio)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(101-i)*time.Millisecond)
	}
	tests := []struct {
		p    float64
		want time.Duration
	}{
		{50, 50 * time.Millisecond},
		{99, 99 * time.Millisecond},
		{100, 100 * time.Millisecond},
		{0.1, 1 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := Percentile(d, tt.p); got != tt.want {
			t.Errorf("Percentile(p%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil) = %v, want 0", got)
	}
}

func TestQuantile(t *testing.T) {
	sorted := []float64{1, 2, 3, 4, 5}
	tests := []struct {
		q, want float64
	}{
		{0, 1}, {1, 5}, {0.5, 3}, {0.25, 2}, {0.1, 1.4}, {0.975, 4.9},
	}
	for _, tt := range tests {
		if got := quantile(sorted, tt.q); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("quantile(%v, %v) = %v, want %v", sorted, tt.q, got, tt.want)
		}
	}
}

func TestBootstrapRatio(t *testing.T) {
	// A baseline that drifts by 5× over the rounds, and a configuration at
	// 0.9 of it in every round, ±0.2 % alternately.
	drift := []float64{10, 50, 20, 40, 30, 15, 45, 25, 35, 12}
	var ninety, jittered []float64
	for i, b := range drift {
		ninety = append(ninety, 0.9*b)
		jittered = append(jittered, 0.9*b*(1+0.002*float64(1-2*(i%2))))
	}
	tests := []struct {
		name    string
		v, base []float64
		paired  bool
		// The interval must lie within [minLo, maxHi] and reach at
		// least [maxLo, minHi].
		minLo, maxLo, minHi, maxHi float64
	}{
		// Every round has the same ratio: paired, every resample has it.
		{"paired constant ratio", ninety, drift, true, 0.9 - 1e-12, 0.9 + 1e-12, 0.9 - 1e-12, 0.9 + 1e-12},
		// Pairing cancels the drift: the interval is as wide as the
		// per-round jitter, not the drift.
		{"paired drift cancels", jittered, drift, true, 0.897, 0.9, 0.9, 0.903},
		// Unpaired, the drift is all noise: the interval spans far more
		// than ±3 %.
		{"unpaired drift is noise", jittered, drift, false, 0.3, 0.75, 1.1, 3},
		// One value each: the only ratio there is.
		{"single round", []float64{3}, []float64{4}, true, 0.75, 0.75, 0.75, 0.75},
		// Constant sides of different lengths cannot be paired; all
		// resamples give 2.
		{"unpaired constants", []float64{2, 2, 2}, []float64{1, 1, 1, 1}, false, 2, 2, 2, 2},
		// {1,2,3} against a constant 1: the resampled median is 1 with
		// probability 7/27 (two or three of three draws are 1), likewise
		// 3, so the 2.5th and 97.5th percentiles are exactly 1 and 3.
		{"median of three", []float64{1, 2, 3}, []float64{1, 1, 1}, true, 1, 1, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lo, hi := BootstrapRatio(tt.v, tt.base, tt.paired, bootstrapResamples, 1)
			if lo < tt.minLo || lo > tt.maxLo || hi < tt.minHi || hi > tt.maxHi {
				t.Errorf("interval [%v, %v], want lo in [%v, %v], hi in [%v, %v]", lo, hi, tt.minLo, tt.maxLo, tt.minHi, tt.maxHi)
			}
		})
	}

	t.Run("distribution of the median of three", func(t *testing.T) {
		rs := bootstrapRatios([]float64{1, 2, 3}, []float64{1, 1, 1}, true, 100_000, 7)
		count := map[float64]int{}
		for _, r := range rs {
			count[r]++
		}
		want := map[float64]float64{1: 7.0 / 27, 2: 13.0 / 27, 3: 7.0 / 27}
		for v, p := range want {
			// 100 000 draws: the standard error of each share is < 0.002.
			if got := float64(count[v]) / float64(len(rs)); math.Abs(got-p) > 0.01 {
				t.Errorf("P(median = %v) = %.4f, want %.4f", v, got, p)
			}
		}
	})

	t.Run("same seed, same interval", func(t *testing.T) {
		lo1, hi1 := BootstrapRatio(jittered, drift, false, 1000, 42)
		lo2, hi2 := BootstrapRatio(jittered, drift, false, 1000, 42)
		if lo1 != lo2 || hi1 != hi2 {
			t.Errorf("seed 42 gave [%v, %v] then [%v, %v]", lo1, hi1, lo2, hi2)
		}
	})

	t.Run("empty or zero baseline", func(t *testing.T) {
		for _, base := range [][]float64{nil, {0, 0}} {
			if lo, hi := BootstrapRatio([]float64{1, 2}, base, false, 100, 1); !math.IsNaN(lo) || !math.IsNaN(hi) {
				t.Errorf("base %v: interval [%v, %v], want NaN", base, lo, hi)
			}
		}
	})
}

func TestWithRatioInterval(t *testing.T) {
	base := Summarize([]float64{100, 200, 150})
	s := Summarize([]float64{95, 190, 142.5}).WithRatioInterval(base, 3)
	if math.Abs(s.Ratio-0.95) > 1e-12 || math.Abs(s.RatioLo-0.95) > 1e-12 || math.Abs(s.RatioHi-0.95) > 1e-12 {
		t.Errorf("ratio %v [%v, %v], want 0.95 [0.95, 0.95]: every round is at 0.95", s.Ratio, s.RatioLo, s.RatioHi)
	}
	if hw := s.HalfWidth(); hw > 1e-12 {
		t.Errorf("half width %v, want 0", hw)
	}
	s = Summarize([]float64{1}).WithRatioInterval(Summary{}, 3)
	if s.Ratio != 0 || s.RatioLo != 0 || s.RatioHi != 0 {
		t.Errorf("no baseline: ratio %v [%v, %v], want all 0", s.Ratio, s.RatioLo, s.RatioHi)
	}
}
