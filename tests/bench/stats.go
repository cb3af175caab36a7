package bench

import (
	"math"
	"slices"
	"time"
)

// Summary is the spread of one metric over the rounds of a run.
type Summary struct {
	Min    float64   `json:"min"`
	Median float64   `json:"median"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
	// Ratio is Median over the baseline's median of the same run; 0 when
	// there is no baseline (or it measured 0).
	Ratio float64 `json:"ratio,omitempty"`
}

// Summarize returns min, median and max of values (the median of an even
// count is the mean of the middle two). No values give a zero Summary.
func Summarize(values []float64) Summary {
	if len(values) == 0 {
		return Summary{}
	}
	s := slices.Clone(values)
	slices.Sort(s)
	mid := len(s) / 2
	med := s[mid]
	if len(s)%2 == 0 {
		med = (s[mid-1] + s[mid]) / 2
	}
	return Summary{Min: s[0], Median: med, Max: s[len(s)-1], Values: slices.Clone(values)}
}

// WithRatio sets Ratio to s.Median / base.Median.
func (s Summary) WithRatio(base Summary) Summary {
	if base.Median != 0 && !math.IsNaN(base.Median) {
		s.Ratio = s.Median / base.Median
	}
	return s
}

// Percentile returns the p-th percentile (0 < p <= 100) of durations by
// nearest rank; no durations give 0.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

// Millis is d in milliseconds as a float, the unit of every latency in the
// results.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// probeTimeout bounds one probe's connect: a verdict not seen by then is
// a drop.
const probeTimeout = 100 * time.Millisecond
