package soak

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Figures counts what a soak did and what it saw. Counters are atomic:
// every loop of the soak adds to them.
type Figures struct {
	Duration time.Duration

	Iterations atomic.Int64 // rounds of the fault loop

	// Faults injected, by kind.
	AgentKills       atomic.Int64
	APIRestarts      atomic.Int64
	ConflistRewrites atomic.Int64
	PodsCreated      atomic.Int64
	PodsDeleted      atomic.Int64
	PolicyChanges    atomic.Int64

	// Probes and their outcomes.
	ForbiddenProbes atomic.Int64
	AllowedProbes   atomic.Int64
	AllowedFailed   atomic.Int64 // new allowed connections that did not connect
	RoundTrips      atomic.Int64 // on established allowed flows
	UnchainedPods   atomic.Int64 // pods that started through Flannel's own file
	APIErrors       atomic.Int64 // churn calls the API refused (while it restarted)

	mu         sync.Mutex
	violations map[string][]string // by invariant, first few details
	counts     map[string]int
}

// maxDetails bounds the details kept per invariant.
const maxDetails = 5

// Violate records a broken invariant.
func (f *Figures) Violate(invariant, format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.violations == nil {
		f.violations, f.counts = map[string][]string{}, map[string]int{}
	}
	f.counts[invariant]++
	if len(f.violations[invariant]) < maxDetails {
		f.violations[invariant] = append(f.violations[invariant],
			time.Now().UTC().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	}
}

// Violations is the number of broken invariants seen, in all.
func (f *Figures) Violations() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.counts {
		n += c
	}
	return n
}

// Faults is every fault injected.
func (f *Figures) Faults() int64 {
	return f.AgentKills.Load() + f.APIRestarts.Load() + f.ConflistRewrites.Load() +
		f.PodsCreated.Load() + f.PodsDeleted.Load() + f.PolicyChanges.Load()
}

// Report is the figures as the Markdown table README "Reliability" holds,
// followed by the violations, if any.
func (f *Figures) Report() string {
	var b strings.Builder
	row := func(k string, v any) { fmt.Fprintf(&b, "| %s | %v |\n", k, v) }
	b.WriteString("| soak | figure |\n| --- | --- |\n")
	row("duration", f.Duration.Round(time.Second))
	row("iterations (fault-loop rounds)", f.Iterations.Load())
	row("faults injected", f.Faults())
	row("… agents SIGKILLed and restarted", f.AgentKills.Load())
	row("… API server restarts", f.APIRestarts.Load())
	row("… conflist rewrites (Flannel's file over the chained one)", f.ConflistRewrites.Load())
	row("… pods created / deleted", fmt.Sprintf("%d / %d", f.PodsCreated.Load(), f.PodsDeleted.Load()))
	row("… policy changes", f.PolicyChanges.Load())
	row("forbidden probes (all must time out)", f.ForbiddenProbes.Load())
	row("allowed new connections (failed)", fmt.Sprintf("%d (%d)", f.AllowedProbes.Load(), f.AllowedFailed.Load()))
	row("round trips on established allowed flows", f.RoundTrips.Load())
	row("pods started unchained, then adopted", f.UnchainedPods.Load())
	row("churn calls refused by a restarting API server", f.APIErrors.Load())
	row("violations", f.Violations())
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]string, 0, len(f.counts))
	for k := range f.counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "\n%s: %d\n", k, f.counts[k])
		for _, d := range f.violations[k] {
			fmt.Fprintf(&b, "  %s\n", d)
		}
	}
	return b.String()
}
