package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// PeerResults is what TestPrivilegedBenchPeers measured (scripts/bench
// writes it next to Palisade's results).
type PeerResults struct {
	Started  time.Time    `json:"started"`
	Kernel   string       `json:"kernel"`
	CPUs     int          `json:"cpus"`
	Rounds   int          `json:"rounds"`
	Duration string       `json:"duration_per_measurement"`
	Peers    []PeerResult `json:"peers"`
}

// PeerResult is one peer's run. A peer that cannot start or cannot enforce
// on this machine is recorded with Runnable false and the reason.
type PeerResult struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Command is the peer's command line on node-1 (the others differ only
	// in the node name).
	Command  []string `json:"command"`
	Runnable bool     `json:"runnable"`
	Error    string   `json:"error,omitempty"`
	// Enforcement is the check made before any measurement.
	Enforcement *Enforcement `json:"enforcement,omitempty"`
	// Datapath rows are ratios to the first configuration (0 rules: the
	// peer running, no policy selecting the pods).
	Datapath    []DatapathRow    `json:"datapath,omitempty"`
	DatapathRun *DatapathRun     `json:"datapath_run,omitempty"`
	Propagation []PropagationRow `json:"propagation,omitempty"`
	Cost        []PeerCost       `json:"cost,omitempty"`
	// SettleSeconds is how long the peer stayed busy with earlier changes
	// before each measurement (keyed by the measurement) could start.
	SettleSeconds map[string]float64 `json:"settle_seconds,omitempty"`
	// Transients counts, by propagation event, verdicts the probe saw that
	// did not hold for a second, over all sizes: a rule rewrite in
	// progress, or a connect slower than the probe's 100 ms timeout (read
	// as a deny) while the peer's sync has the CPU.
	Transients map[string]int `json:"transient_verdicts,omitempty"`
}

// Enforcement is how long a default deny took to block the measured flow
// and the namespace's allow policies to re-open it, same node and cross
// node (the slower of the two).
type Enforcement struct {
	Namespace string  `json:"namespace"`
	DenyMs    float64 `json:"deny_ms"`
	AllowMs   float64 `json:"allow_ms"`
}

// PeerCost is one peer process's cost at one stage of the run.
type PeerCost struct {
	Stage      string  `json:"stage"`
	Node       string  `json:"node"`
	Policies   int     `json:"policies"`
	Pods       int     `json:"pods"`
	RSSMiB     float64 `json:"rss_mib"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// Syncs is how many syncs of its rules the peer has run so far and
	// SyncMs their mean time since the previous stage (peers that export
	// it only).
	Syncs  float64 `json:"syncs,omitempty"`
	SyncMs float64 `json:"sync_ms_mean,omitempty"`
}

// peerPropTimeout is how long peerPropagation waits for a verdict: a peer
// that syncs all its rules on every change can take longer than
// propTimeout at a thousand policies, and that time is the result.
const peerPropTimeout = 60 * time.Second

// peerHold is how long a verdict must last to count as the new one.
const peerHold = time.Second

// WriteTable writes the peers' results as Markdown.
func (r *PeerResults) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "Peers. Kernel %s, %d CPUs, %d rounds of %s per measurement; ratios are to the same peer's 0-rule median of the same run.\n\n", r.Kernel, r.CPUs, r.Rounds, r.Duration)
	for _, p := range r.Peers {
		p.writeTable(w)
	}
}

func (p *PeerResult) writeTable(w io.Writer) {
	fmt.Fprintf(w, "### %s %s\n\n`%s`\n\n", p.Name, p.Version, strings.Join(p.Command, " "))
	if !p.Runnable {
		fmt.Fprintf(w, "Not runnable here:\n\n```\n%s\n```\n\n", p.Error)
		return
	}
	if e := p.Enforcement; e != nil {
		fmt.Fprintf(w, "Enforcement verified in %s: default deny blocked the flow after %.0f ms, the allows re-opened it after %.0f ms.\n\n", e.Namespace, e.DenyMs, e.AllowMs)
	}
	p.DatapathRun.writeTo(w)
	for _, placement := range []string{"same-node", "cross-node"} {
		writeDatapath(w, placement, p.Datapath)
	}
	if len(p.Propagation) > 0 {
		fmt.Fprintf(w, "Policy propagation:\n\n| policies | pods | event | n | p50 ms | p99 ms | max ms | no change in %v |\n|---|---|---|---|---|---|---|---|\n", peerPropTimeout)
		for _, r := range p.Propagation {
			fmt.Fprintf(w, "| %d | %d | %s | %d | %.1f | %.1f | %.1f | %d |\n", r.Policies, r.Pods, r.Event, r.N, r.P50ms, r.P99ms, r.MaxMs, r.Failures)
		}
		fmt.Fprintln(w)
	}
	if len(p.Cost) > 0 {
		fmt.Fprintf(w, "Cost of the %s process:\n\n| stage | node | policies | pods | RSS MiB | CPU s | syncs | sync ms (mean since previous stage) |\n|---|---|---|---|---|---|---|---|\n", p.Name)
		for _, c := range p.Cost {
			fmt.Fprintf(w, "| %s | %s | %d | %d | %.1f | %.2f | %.0f | %.1f |\n", c.Stage, c.Node, c.Policies, c.Pods, c.RSSMiB, c.CPUSeconds, c.Syncs, c.SyncMs)
		}
		fmt.Fprintln(w)
	}
	for _, k := range sortedKeys(p.Transients) {
		fmt.Fprintf(w, "During propagation (%s) the probe saw %d verdicts that did not hold for %v (a rewrite in progress, or a connect slower than %v while the peer had the CPU).\n\n", k, p.Transients[k], peerHold, probeTimeout)
	}
	for _, k := range sortedKeys(p.SettleSeconds) {
		fmt.Fprintf(w, "Before %s the peer was busy with earlier changes for %.1f s more.\n\n", k, p.SettleSeconds[k])
	}
}
