package bench

import (
	"math"
	"math/rand/v2"
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
	// RatioLo and RatioHi are Ratio's bootstrap 95 % interval (see
	// BootstrapRatio); both 0 when there is no ratio.
	RatioLo float64 `json:"ratio_lo,omitempty"`
	RatioHi float64 `json:"ratio_hi,omitempty"`
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

// bootstrapResamples is how many resamples BootstrapRatio draws: enough
// that the interval's ends move by well under 0.1 % between seeds.
const bootstrapResamples = 10_000

// WithRatioInterval sets Ratio as WithRatio does and its bootstrap 95 %
// interval, paired by round when s and base have as many values (the
// datapath records one value per configuration and round, in round order).
// seed makes the interval reproducible from the results.
func (s Summary) WithRatioInterval(base Summary, seed uint64) Summary {
	s = s.WithRatio(base)
	if s.Ratio == 0 {
		return s
	}
	paired := len(s.Values) == len(base.Values)
	s.RatioLo, s.RatioHi = BootstrapRatio(s.Values, base.Values, paired, bootstrapResamples, seed)
	return s
}

// HalfWidth is the larger distance from Ratio to an end of its interval,
// relative to Ratio (0.03: the interval is within ±3 % of the ratio).
func (s Summary) HalfWidth() float64 {
	if s.Ratio == 0 {
		return 0
	}
	return max(s.Ratio-s.RatioLo, s.RatioHi-s.Ratio) / s.Ratio
}

// BootstrapRatio returns the percentile bootstrap 95 % interval of
// median(v) / median(base): rounds are drawn with replacement resamples
// times and the 2.5th and 97.5th percentiles of the resampled ratios are
// the ends. Paired (v and base of equal length, index i the same round of
// both), round i is drawn for both at once, so that what the machine did
// during a round (another process's burst, a slow minute) moves numerator
// and denominator together and cancels in the ratio, as it did in the
// measurement; unpaired, each side is drawn on its own. Empty input, or a
// resample whose base median is 0, gives NaN ends.
func BootstrapRatio(v, base []float64, paired bool, resamples int, seed uint64) (lo, hi float64) {
	ratios := bootstrapRatios(v, base, paired, resamples, seed)
	if len(ratios) == 0 {
		return math.NaN(), math.NaN()
	}
	slices.Sort(ratios)
	return quantile(ratios, 0.025), quantile(ratios, 0.975)
}

// bootstrapRatios is BootstrapRatio's resampled ratios, unsorted.
func bootstrapRatios(v, base []float64, paired bool, resamples int, seed uint64) []float64 {
	if len(v) == 0 || len(base) == 0 || (paired && len(v) != len(base)) {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	bv, bb := make([]float64, len(v)), make([]float64, len(base))
	out := make([]float64, 0, resamples)
	for range resamples {
		for i := range bv {
			j := rng.IntN(len(v))
			bv[i] = v[j]
			if paired {
				bb[i] = base[j]
			}
		}
		if !paired {
			for i := range bb {
				bb[i] = base[rng.IntN(len(base))]
			}
		}
		mb := median(bb)
		if mb == 0 {
			return nil
		}
		out = append(out, median(bv)/mb)
	}
	return out
}

// median of s, which it sorts.
func median(s []float64) float64 {
	slices.Sort(s)
	mid := len(s) / 2
	if len(s)%2 == 0 {
		return (s[mid-1] + s[mid]) / 2
	}
	return s[mid]
}

// quantile is the q-th quantile (0 ≤ q ≤ 1) of sorted, linearly
// interpolated between the two nearest ranks (Hyndman and Fan's type 7,
// what R and NumPy give by default).
func quantile(sorted []float64, q float64) float64 {
	h := q * float64(len(sorted)-1)
	i := int(math.Floor(h))
	if i >= len(sorted)-1 {
		return sorted[len(sorted)-1]
	}
	return sorted[i] + (h-float64(i))*(sorted[i+1]-sorted[i])
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
