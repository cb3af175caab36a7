package bench

import (
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
