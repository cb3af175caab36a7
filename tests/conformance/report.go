package conformance

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// Report collects case results and prints them as the contract says: one
// line per case, the tables of a failure, and the final plain line
// "N passed, M failed, K skipped".
type Report struct {
	Catalog   string       `json:"catalog"`
	Nodes     int          `json:"nodes"`
	KubeProxy bool         `json:"kube_proxy"`
	SCTPMode  string       `json:"sctp_mode"`
	Family    Family       `json:"family"`
	Via       Via          `json:"via"`
	Started   time.Time    `json:"started"`
	Setup     float64      `json:"setup_seconds"`
	Wall      float64      `json:"wall_seconds"`
	Passed    int          `json:"passed"`
	Failed    int          `json:"failed"`
	Skipped   int          `json:"skipped"`
	Cases     []CaseResult `json:"cases"`
	// Explain totals the explain check, when it ran (explain.go).
	Explain *ExplainTotal `json:"explain,omitempty"`

	out io.Writer
	ids []string // pod order, for the tables
}

// NewReport writes to out.
func NewReport(out io.Writer, catalog string, podOrder []string) *Report {
	return &Report{Catalog: catalog, Started: time.Now(), out: out, ids: podOrder}
}

// Header prints what the run is about, including how SCTP is probed.
func (r *Report) Header(e *Env, setup time.Duration) {
	r.Nodes, r.SCTPMode, r.Setup, r.KubeProxy, r.Via = len(e.Nodes), e.SCTPMode, setup.Seconds(), e.KubeProxy, e.Via
	r.Family = e.Family
	var place []string
	for _, id := range r.ids {
		place = append(place, id+"@"+e.NodeOf(id))
	}
	fmt.Fprintf(r.out, "catalog %s: %d nodes, testbed up in %.1fs; pods %s\n", r.Catalog, len(e.Nodes), setup.Seconds(), strings.Join(place, " "))
	switch e.SCTPMode {
	case testbed.SCTPInitArrival:
		fmt.Fprintln(r.out, "note: this kernel has no SCTP sockets (EPROTONOSUPPORT): SCTP probes send an INIT from a raw socket in the source pod "+
			"and watch for it with a packet socket in the destination pod: the forward verdict only, no reply is checked")
	default:
		fmt.Fprintln(r.out, "note: SCTP probes set up real associations")
	}
	fmt.Fprintln(r.out, viaNote(e.Via))
	if note := familyNote(e.Family); note != "" {
		fmt.Fprintln(r.out, note)
	}
	if e.KubeProxy {
		fmt.Fprintln(r.out, "note: kube-proxy (iptables) runs on every node and kube-controller-manager writes the EndpointSlices; Palisade translates ClusterIPs and NodePorts on the sending pod's veth before kube-proxy sees them")
	} else {
		fmt.Fprintln(r.out, "note: no kube-proxy (--kube-proxy=false): ClusterIPs are translated by Palisade's own eBPF Service translation only; the runner writes the EndpointSlices")
	}
}

// Add records and prints one case.
func (r *Report) Add(c CaseResult) {
	r.Cases = append(r.Cases, c)
	switch c.Status {
	case Pass:
		r.Passed++
	case Fail:
		r.Failed++
	case Skip:
		r.Skipped++
	}
	r.addExplain(c)
	fmt.Fprint(r.out, FormatCase(c, r.ids))
}

// FormatCase is the case line, plus for a failure or skip the reason, and
// for a failure each differing probe's tables and the differing pairs.
func FormatCase(c CaseResult, ids []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %.1fs\n", c.Status, c.ID, c.Name, c.Seconds)
	if c.Reason != "" {
		fmt.Fprintf(&b, "    %s\n", c.Reason)
	}
	b.WriteString(formatExplain(c))
	for _, p := range c.Probes {
		if p.Method == testbed.SCTPInitArrival {
			fmt.Fprintf(&b, "    %s SCTP/%d: INIT arrival at the destination pod (forward verdict only)\n", p.Step, p.Port)
		}
	}
	if c.Status != Fail {
		return b.String()
	}
	for _, p := range c.Probes {
		if len(p.Mismatches) == 0 {
			continue
		}
		fmt.Fprintf(&b, "    %s: %s/%d to the %s, %d rounds in %.1fs:\n", p.Step, p.Protocol, p.Port, p.Target, p.Rounds, p.Seconds)
		b.WriteString(FormatDiff(ids, p.Expected, p.Observed))
		for _, m := range p.Mismatches {
			fmt.Fprintf(&b, "      %s: %s\n", m, p.Details[m])
		}
	}
	return b.String()
}

// Finish prints the wall time and the final line.
func (r *Report) Finish() {
	r.Wall = time.Since(r.Started).Seconds()
	fmt.Fprintf(r.out, "catalog %s: %d cases in %.1fs (testbed setup %.1fs)\n", r.Catalog, len(r.Cases), r.Wall, r.Setup)
	if r.Explain != nil {
		fmt.Fprintln(r.out, r.Explain.Summary())
	}
	fmt.Fprintln(r.out, r.Summary())
}

// Summary is the final line.
func (r *Report) Summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", r.Passed, r.Failed, r.Skipped)
}
