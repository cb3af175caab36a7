package bench

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// ScaleResults is what TestPrivilegedBenchScale measured: propagation and
// agent cost at every (pods, policies) stage, and how each cost grew.
type ScaleResults struct {
	Started    time.Time    `json:"started"`
	Kernel     string       `json:"kernel"`
	CPUs       int          `json:"cpus"`
	Iterations int          `json:"iterations_per_event"`
	Stages     []ScaleStage `json:"stages"`
	Growth     []GrowthRow  `json:"growth"`
}

// ScaleStage is one (pods, policies) point of the run.
type ScaleStage struct {
	// Pods is every pod in the cluster: simulated plus the measured ones.
	Pods       int `json:"pods"`
	SimPods    int `json:"sim_pods"`
	Namespaces int `json:"sim_namespaces"`
	// Policies is the simulated namespaces' policies; propagation rows
	// count the measured namespace's too.
	Policies int `json:"policies"`
	// GrowSeconds is the time to create this stage's new simulated pods
	// (0 when the previous stage had as many); PolicySeconds to create and
	// delete policies to this stage's set; SettleSeconds until both agents
	// had them all and stopped syncing.
	GrowSeconds   float64          `json:"grow_seconds"`
	PolicySeconds float64          `json:"policy_seconds"`
	SettleSeconds float64          `json:"settle_seconds"`
	Propagation   []PropagationRow `json:"propagation"`
	Agents        []ScaleAgent     `json:"agents"`
}

// ScaleAgent is one agent at the end of a stage; the Stage* figures cover
// only the stage's propagation measurements, the agent's cumulative
// histograms and CPU time differenced around them.
type ScaleAgent struct {
	AgentSample
	// StageCompileMs is the mean full compile per sync (every sync
	// recompiles all local pods' policy); StageApplyMs the mean map write
	// of the syncs that changed something (the incremental update).
	StageCompileMs  float64 `json:"stage_compile_ms_mean"`
	StageSyncs      float64 `json:"stage_syncs"`
	StageApplyMs    float64 `json:"stage_apply_ms_mean"`
	StageApplies    float64 `json:"stage_applies"`
	StageCPUSeconds float64 `json:"stage_cpu_seconds"`
	// StageChanges is the API changes the stage measured; CPU per change
	// compares stages whose changes took different wall time.
	StageChanges int `json:"stage_changes"`
}

// CPUMsPerChange is the agent's CPU time per measured change.
func (a ScaleAgent) CPUMsPerChange() float64 {
	if a.StageChanges == 0 {
		return 0
	}
	return a.StageCPUSeconds * 1000 / float64(a.StageChanges)
}

// GrowthRow is one cost fitted against pods (policies held) or policies
// (pods held).
type GrowthRow struct {
	Cost    string `json:"cost"`
	Against string `json:"against"`
	HeldAt  int    `json:"held_at"`
	Fit
}

// scaleCosts are the fitted costs: the largest over the agents (and, for
// propagation, over the events) at each stage.
var scaleCosts = []struct {
	Name  string
	Value func(ScaleStage) float64
}{
	{"RSS MiB", maxAgent(func(a ScaleAgent) float64 { return a.RSSMiB })},
	{"BPF map MiB", maxAgent(func(a ScaleAgent) float64 { return a.MapMemlockMiB })},
	{"identities", maxAgent(func(a ScaleAgent) float64 { return a.Identities })},
	{"ipcache entries", maxAgent(func(a ScaleAgent) float64 { return a.MapEntries[`map="ipcache"`] })},
	{"map entries (all)", maxAgent(func(a ScaleAgent) float64 { return sumValues(a.MapEntries) })},
	{"full compile ms", maxAgent(func(a ScaleAgent) float64 { return a.StageCompileMs })},
	{"map write ms", maxAgent(func(a ScaleAgent) float64 { return a.StageApplyMs })},
	{"CPU ms per change", maxAgent(ScaleAgent.CPUMsPerChange)},
	{"propagation p50 ms", maxProp(func(p PropagationRow) float64 { return p.P50ms })},
	{"propagation p99 ms", maxProp(func(p PropagationRow) float64 { return p.P99ms })},
}

func maxAgent(f func(ScaleAgent) float64) func(ScaleStage) float64 {
	return func(s ScaleStage) float64 {
		m := 0.0
		for _, a := range s.Agents {
			m = max(m, f(a))
		}
		return m
	}
}

func maxProp(f func(PropagationRow) float64) func(ScaleStage) float64 {
	return func(s ScaleStage) float64 {
		m := 0.0
		for _, p := range s.Propagation {
			m = max(m, f(p))
		}
		return m
	}
}

func sumValues(m map[string]float64) float64 {
	t := 0.0
	for _, v := range m {
		t += v
	}
	return t
}

// FitStages fits every cost against pods at each policy count and against
// policies at each pod count that has at least two stages.
func FitStages(stages []ScaleStage) []GrowthRow {
	var rows []GrowthRow
	for _, c := range scaleCosts {
		rows = append(rows, fitAlong(stages, c.Name, c.Value, "pods")...)
		rows = append(rows, fitAlong(stages, c.Name, c.Value, "policies")...)
	}
	return rows
}

// fitAlong groups the stages by the other axis and fits each group.
func fitAlong(stages []ScaleStage, cost string, value func(ScaleStage) float64, against string) []GrowthRow {
	x := func(s ScaleStage) int { return s.Pods }
	held := func(s ScaleStage) int { return s.Policies }
	if against == "policies" {
		x, held = held, x
	}
	groups := map[int][]ScaleStage{}
	for _, s := range stages {
		groups[held(s)] = append(groups[held(s)], s)
	}
	var keys []int
	for k := range groups {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var rows []GrowthRow
	for _, k := range keys {
		var xs, ys []float64
		for _, s := range groups[k] {
			xs, ys = append(xs, float64(x(s))), append(ys, value(s))
		}
		if f, ok := FitGrowth(xs, ys); ok {
			rows = append(rows, GrowthRow{Cost: cost, Against: against, HeldAt: k, Fit: f})
		}
	}
	return rows
}

// WriteTable writes the stages, the propagation rows and the growth fits
// as Markdown.
func (r *ScaleResults) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "Scale: kernel %s, %d CPUs, %d changes per event kind and stage; simulated pods are API objects on simulated nodes (remote to both agents).\n\n", r.Kernel, r.CPUs, r.Iterations)
	r.writeAgents(w)
	r.writePropagation(w)
	r.writeGrowth(w)
}

func (r *ScaleResults) writeAgents(w io.Writer) {
	fmt.Fprintf(w, "Agent cost per stage (compile, map write, syncs and CPU over the stage's propagation changes only):\n\n")
	fmt.Fprintf(w, "| pods | namespaces | policies | grow s | policies s | settle s | node | RSS MiB | BPF map MiB | identities | ipcache | map entries (all) | syncs | full compile ms | applies | map write ms | changes | CPU s | CPU ms per change |\n")
	fmt.Fprintf(w, "|%s\n", strings.Repeat("---|", 19))
	for _, s := range r.Stages {
		for _, a := range s.Agents {
			fmt.Fprintf(w, "| %d | %d | %d | %.1f | %.1f | %.1f | %s | %.1f | %.1f | %.0f | %.0f | %.0f | %.0f | %.1f | %.0f | %.2f | %d | %.2f | %.1f |\n",
				s.Pods, s.Namespaces, s.Policies, s.GrowSeconds, s.PolicySeconds, s.SettleSeconds, a.Node,
				a.RSSMiB, a.MapMemlockMiB, a.Identities, a.MapEntries[`map="ipcache"`], sumValues(a.MapEntries),
				a.StageSyncs, a.StageCompileMs, a.StageApplies, a.StageApplyMs, a.StageChanges, a.StageCPUSeconds, a.CPUMsPerChange())
		}
	}
	fmt.Fprintln(w)
}

func (r *ScaleResults) writePropagation(w io.Writer) {
	fmt.Fprintf(w, "Policy propagation at scale (API answer → new verdict at the probe):\n\n| pods | policies | event | n | p50 ms | p99 ms | max ms | no change in 10 s |\n|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.Stages {
		for _, p := range s.Propagation {
			fmt.Fprintf(w, "| %d | %d | %s | %d | %.1f | %.1f | %.1f | %d |\n", p.Pods, p.Policies, p.Event, p.N, p.P50ms, p.P99ms, p.MaxMs, p.Failures)
		}
	}
	fmt.Fprintln(w)
}

func (r *ScaleResults) writeGrowth(w io.Writer) {
	if len(r.Growth) == 0 {
		fmt.Fprintf(w, "Growth: fewer than two stages along either axis, nothing to fit.\n\n")
		return
	}
	fmt.Fprintf(w, "Growth (largest agent at each stage; exponent b of cost ∝ x^b by least squares over log-log; least-squares line cost = base + per 1 000 × x/1 000 and its R²):\n\n")
	fmt.Fprintf(w, "| cost | against | held at | stages | × x | × cost | exponent | base | per 1 000 | R² | reading |\n|%s\n", strings.Repeat("---|", 11))
	for _, g := range r.Growth {
		fmt.Fprintf(w, "| %s | %s | %d | %d | %.1f | %.2f | %.2f | %s | %s | %.2f | %s |\n", g.Cost, g.Against, g.HeldAt, g.Points, g.XRatio, g.YRatio, g.Exponent, signed(g.Base), signed(g.PerThousand), g.R2, g.Reading())
	}
	fmt.Fprintln(w)
}

// signed formats v as num does, keeping the sign of a negative slope or
// base.
func signed(v float64) string {
	if v < 0 {
		return "-" + num(-v)
	}
	return num(v)
}
