package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// The datapath metrics, in table order.
var DatapathMetrics = []struct{ Key, Title string }{
	{"stream1_gbps", "TCP 1 stream Gbit/s"},
	{"stream4_gbps", "TCP 4 streams Gbit/s"},
	{"rr_tps", "TCP RR/s"},
	{"rr_p50_ms", "RR p50 ms"},
	{"rr_p99_ms", "RR p99 ms"},
	{"crr_cps", "conn/s"},
	{"udp_rr_tps", "UDP RR/s"},
}

// Results is everything one run measured (scripts/bench writes it as JSON).
type Results struct {
	Started     time.Time        `json:"started"`
	Kernel      string           `json:"kernel"`
	CPUs        int              `json:"cpus"`
	Rounds      int              `json:"rounds"`
	Duration    string           `json:"duration_per_measurement"`
	Datapath    []DatapathRow    `json:"datapath"`
	DatapathRun *DatapathRun     `json:"datapath_run,omitempty"`
	BPFCost     []BPFCostRow     `json:"bpf_cost"`
	Programs    []ProgramInfo    `json:"programs"`
	Propagation []PropagationRow `json:"propagation"`
	PodStart    []PodStartRow    `json:"pod_start"`
	Churn       *ChurnResult     `json:"churn,omitempty"`
	Agent       []AgentSample    `json:"agent"`
}

// DatapathRun is how the datapath rounds ran: their order's seed, the
// isolation of the load CPU, and the machine's load around them.
type DatapathRun struct {
	Seed uint64 `json:"seed"`
	// Isolation says what ran where ("" without -isolate).
	Isolation string `json:"isolation,omitempty"`
	// NetRXLoadCPUShare is the share of the machine's NET_RX softirqs
	// during the rounds that ran on the load CPU.
	NetRXLoadCPUShare float64 `json:"net_rx_load_cpu_share,omitempty"`
	// Unfrozen of Measurements (the warm-up pass's too) ran with the testbed
	// thawed because it did not freeze in time (see isolation.Freeze).
	Measurements int    `json:"measurements"`
	Unfrozen     int    `json:"unfrozen,omitempty"`
	LoadBefore   string `json:"loadavg_before"`
	LoadAfter    string `json:"loadavg_after"`
}

func (r *DatapathRun) writeTo(w io.Writer) {
	if r == nil {
		return
	}
	fmt.Fprintf(w, "Rounds in shuffled order, seed %d; load average %s before the rounds, %s after.", r.Seed, r.LoadBefore, r.LoadAfter)
	if r.Isolation != "" {
		fmt.Fprintf(w, " Isolation: %s; %.1f %% of the machine's NET_RX softirqs ran on the load CPU.", r.Isolation, 100*r.NetRXLoadCPUShare)
		if r.Unfrozen > 0 {
			fmt.Fprintf(w, " %d of %d measurements ran with the testbed thawed: it did not freeze within 10 s.", r.Unfrozen, r.Measurements)
		}
	} else {
		fmt.Fprintf(w, " No isolation (-isolate=false).")
	}
	fmt.Fprintf(w, " Cells: median, then its ratio to the baseline's median with the ratio's bootstrap 95 %% interval, `ratio [lo, hi]`, paired by round.\n\n")
}

// Targets of issue #19 for a configuration under Palisade: at least 0.97
// of the baseline's throughput, request/response and connect rates, and
// a p99 latency at most 1.05 of its.
var datapathTargets = []struct {
	Key   string
	Bound float64
	Upper bool // the ratio must stay at or below Bound, not above
}{
	{"stream1_gbps", 0.97, false},
	{"stream4_gbps", 0.97, false},
	{"rr_tps", 0.97, false},
	{"rr_p99_ms", 1.05, true},
	{"crr_cps", 0.97, false},
	{"udp_rr_tps", 0.97, false},
}

// Verdict on one target: met when the whole interval is on the right
// side of the bound, missed when all of it is on the wrong side, and
// unresolved when the interval holds the bound.
func targetVerdict(s Summary, bound float64, upper bool) string {
	lo, hi := s.RatioLo, s.RatioHi
	if upper {
		lo, hi = -hi, -lo
		bound = -bound
	}
	switch {
	case s.Ratio == 0:
		return "no data"
	case lo >= bound:
		return "met"
	case hi < bound:
		return fmt.Sprintf("missed by %.1f %%", 100*math.Abs(s.Ratio-math.Abs(bound))/math.Abs(bound))
	default:
		return "unresolved"
	}
}

// writeTargets writes each target's verdict for the rows at minRules
// rules or more.
func writeTargets(w io.Writer, rows []DatapathRow, minRules int) {
	fmt.Fprintf(w, "Targets (≥ 0.97 × the baseline, p99 ≤ 1.05 ×): met when the whole interval is on the right side, missed when all of it is on the wrong side.\n\n| placement | config |")
	for _, tg := range datapathTargets {
		fmt.Fprintf(w, " %s |", metricTitle(tg.Key))
	}
	fmt.Fprintf(w, " widest ± |\n|---|---|%s---|\n", strings.Repeat("---|", len(datapathTargets)))
	for _, row := range rows {
		if row.Rules < minRules {
			continue
		}
		fmt.Fprintf(w, "| %s | %s |", row.Placement, row.Config())
		widest := 0.0
		for _, tg := range datapathTargets {
			s := row.Metrics[tg.Key]
			widest = max(widest, s.HalfWidth())
			fmt.Fprintf(w, " %s: %s |", ratioInterval(s), targetVerdict(s, tg.Bound, tg.Upper))
		}
		fmt.Fprintf(w, " %.1f %% |\n", 100*widest)
	}
	fmt.Fprintln(w)
}

func metricTitle(key string) string {
	for _, m := range DatapathMetrics {
		if m.Key == key {
			return m.Title
		}
	}
	return key
}

// ratioInterval prints a ratio with its interval: "0.982 [0.971, 0.990]".
func ratioInterval(s Summary) string {
	return fmt.Sprintf("%.3f [%.3f, %.3f]", s.Ratio, s.RatioLo, s.RatioHi)
}

// writeDatapath writes one placement's rows: the baseline (or reference)
// row as median [min–max], the others as median and ratio [lo, hi].
func writeDatapath(w io.Writer, placement string, rows []DatapathRow) {
	fmt.Fprintf(w, "Datapath, %s:\n\n| config |", placement)
	for _, m := range DatapathMetrics {
		fmt.Fprintf(w, " %s |", m.Title)
	}
	fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---|", len(DatapathMetrics)))
	for _, row := range rows {
		if row.Placement != placement {
			continue
		}
		fmt.Fprintf(w, "| %s |", row.Config())
		for _, m := range DatapathMetrics {
			s := row.Metrics[m.Key]
			// The reference row itself: its ratio to itself is 1 [1, 1].
			if s.Ratio == 0 || (s.RatioLo == 1 && s.RatioHi == 1 && s.Ratio == 1) {
				fmt.Fprintf(w, " %s [%s–%s] |", num(s.Median), num(s.Min), num(s.Max))
				continue
			}
			fmt.Fprintf(w, " %s · %s |", num(s.Median), ratioInterval(s))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
}

// DatapathRow is one configuration: where the client is and how many rules
// select the measured pods (-1: the baseline, no Palisade in the chain).
type DatapathRow struct {
	Placement string             `json:"placement"`
	Rules     int                `json:"rules"`
	Metrics   map[string]Summary `json:"metrics"`
}

// Config names the row as the table does.
func (r DatapathRow) Config() string {
	if r.Rules < 0 {
		return "baseline (no Palisade)"
	}
	return fmt.Sprintf("%d rules", r.Rules)
}

// PropagationRow is the time from the API's answer to the new verdict.
type PropagationRow struct {
	Policies int     `json:"policies"`
	Pods     int     `json:"pods"`
	Event    string  `json:"event"`
	N        int     `json:"n"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	Failures int     `json:"failures"`
}

// PodStartRow is the CNI ADD latency of the whole chain.
type PodStartRow struct {
	Policies int     `json:"policies"`
	Chain    string  `json:"chain"` // one of the Chain constants
	N        int     `json:"n"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	// PhaseP50ms and PhaseP99ms split palisade's own ADD by the times it
	// logs (PluginPhases), for the palisade chain only.
	PhaseP50ms map[string]float64 `json:"phase_p50_ms,omitempty"`
	PhaseP99ms map[string]float64 `json:"phase_p99_ms,omitempty"`
}

// The chains whose CNI ADD is timed: the pod network alone, with upstream's
// no-op chained plugin (sample) appended, and with palisade appended. They
// name pods too, so they are DNS labels.
const (
	ChainWithout  = "without"
	ChainNoop     = "noop"
	ChainPalisade = "palisade"
)

// ChurnResult is what the agents held before and after a churn of pods.
type ChurnResult struct {
	Pods    int           `json:"pods"`
	Seconds float64       `json:"seconds"`
	Before  []AgentSample `json:"before"`
	After   []AgentSample `json:"after"`
	Leaks   []string      `json:"leaks"`
}

// WriteTable writes the results as Markdown tables.
func (r *Results) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "Kernel %s, %d CPUs, %d rounds of %s per measurement.\n\n", r.Kernel, r.CPUs, r.Rounds, r.Duration)
	r.DatapathRun.writeTo(w)
	for _, placement := range []string{"same-node", "cross-node"} {
		writeDatapath(w, placement, r.Datapath)
	}
	if len(r.Datapath) > 0 {
		writeTargets(w, r.Datapath, 1)
	}
	if len(r.BPFCost) > 0 {
		fmt.Fprintf(w, "BPF program cost (kernel run statistics, two passes of their own after the rounds: in order, then reversed):\n\n| placement | rules | program runs | ns per run | in order | reversed |\n|---|---|---|---|---|---|\n")
		for _, b := range r.BPFCost {
			fmt.Fprintf(w, "| %s | %d | %d | %.0f | %.0f | %.0f |\n", b.Placement, b.Rules, b.Runs, b.NsPerRun, b.NsPerRunInOrder, b.NsPerRunReversed)
		}
		fmt.Fprintln(w)
	}
	if len(r.Programs) > 0 {
		fmt.Fprintf(w, "Programs (verifier):\n\n| node | program | verified instructions | JITed bytes |\n|---|---|---|---|\n")
		for _, p := range r.Programs {
			fmt.Fprintf(w, "| %s | %s | %d | %d |\n", p.Node, p.Program, p.VerifiedInstructions, p.JitedBytes)
		}
		fmt.Fprintln(w)
	}
	if len(r.Propagation) > 0 {
		fmt.Fprintf(w, "Policy propagation (API answer → new verdict at the probe):\n\n| policies | pods | event | n | p50 ms | p99 ms | max ms | no change in 10 s |\n|---|---|---|---|---|---|---|---|\n")
		for _, p := range r.Propagation {
			fmt.Fprintf(w, "| %d | %d | %s | %d | %.1f | %.1f | %.1f | %d |\n", p.Policies, p.Pods, p.Event, p.N, p.P50ms, p.P99ms, p.MaxMs, p.Failures)
		}
		fmt.Fprintln(w)
	}
	if len(r.PodStart) > 0 {
		fmt.Fprintf(w, "CNI ADD of the whole chain (without palisade; with the no-op sample plugin in its place; with palisade):\n\n| policies | chain | n | p50 ms | p99 ms |\n|---|---|---|---|---|\n")
		for _, p := range r.PodStart {
			fmt.Fprintf(w, "| %d | %s | %d | %.1f | %.1f |\n", p.Policies, p.Chain, p.N, p.P50ms, p.P99ms)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Palisade's ADD by phase, as the plugin logs it (p50 / p99 ms):\n\n| policies | %s |\n|---|%s\n",
			strings.Join(PluginPhases, " | "), strings.Repeat("---|", len(PluginPhases)))
		for _, p := range r.PodStart {
			if p.PhaseP50ms == nil {
				continue
			}
			cells := make([]string, len(PluginPhases))
			for i, ph := range PluginPhases {
				cells[i] = fmt.Sprintf("%.2f / %.2f", p.PhaseP50ms[ph], p.PhaseP99ms[ph])
			}
			fmt.Fprintf(w, "| %d | %s |\n", p.Policies, strings.Join(cells, " | "))
		}
		fmt.Fprintln(w)
	}
	if r.Churn != nil {
		fmt.Fprintf(w, "Churn: %d pods created and deleted in %.1f s; leaks: %s\n\n", r.Churn.Pods, r.Churn.Seconds, orNone(r.Churn.Leaks))
	}
	if len(r.Agent) > 0 {
		fmt.Fprintf(w, "Agent cost:\n\n| stage | node | policies | pods | RSS MiB | CPU s | BPF map MiB | goroutines | identities | endpoints | syncs | compile ms (mean) | map write ms (mean) | ADDs own / sync | own ADD ms (mean) | map entries |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, a := range r.Agent {
			var entries []string
			for _, k := range sortedKeys(a.MapEntries) {
				entries = append(entries, fmt.Sprintf("%s=%.0f", k, a.MapEntries[k]))
			}
			fmt.Fprintf(w, "| %s | %s | %d | %d | %.1f | %.2f | %.1f | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %.0f / %.0f | %.1f | %s |\n", a.Stage, a.Node, a.Policies, a.Pods, a.RSSMiB, a.CPUSeconds, a.MapMemlockMiB, a.Goroutines, a.Identities, a.Endpoints, a.Syncs, a.CompileMs, a.ApplyMs, a.AddsOwn, a.AddsSync, a.AddOwnMs, strings.Join(entries, " "))
		}
		fmt.Fprintln(w)
	}
}

func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "; ")
}
