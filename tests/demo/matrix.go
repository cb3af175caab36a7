// Package demo is the scenario `make demo` runs: the seeds' 3-tier app and
// a DNS stand-in on a three-node testbed, policies applied step by step, and
// after each step the reachability matrix a person can read at a glance. It
// is also a test: each step's matrix must equal what the API says it should
// be.
package demo

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// Source is one row of the matrix: a pod, or a host outside the cluster.
type Source struct {
	Name  string
	Probe func(ctx context.Context, to netip.Addr, port int, proto corev1.Protocol) testbed.Verdict
}

// PodSource is a pod as a row.
func PodSource(p *testbed.Pod) Source {
	return Source{Name: p.String(), Probe: func(ctx context.Context, to netip.Addr, port int, proto corev1.Protocol) testbed.Verdict {
		return testbed.Probe(ctx, p, to, port, proto)
	}}
}

// Target is one column of the matrix: a pod's port or a Service's.
type Target struct {
	Name  string
	IP    netip.Addr
	Port  int
	Proto corev1.Protocol
	// Self names the row that is this target's own pod, whose cell is
	// printed as "·".
	Self string
}

func (t Target) String() string {
	return fmt.Sprintf("%s %s/%d", t.Name, strings.ToLower(string(t.Proto)), t.Port)
}

// Matrix holds whether each source reached each target.
type Matrix struct {
	From []Source
	To   []Target
	// OK[i][j] is true when From[i] connected to To[j].
	OK [][]bool
}

// Equal reports whether two matrices over the same rows and columns agree.
func (m Matrix) Equal(o Matrix) bool {
	for i := range m.OK {
		for j := range m.OK[i] {
			if m.OK[i][j] != o.OK[i][j] {
				return false
			}
		}
	}
	return true
}

// Changed counts the cells that differ from prev.
func (m Matrix) Changed(prev *Matrix) int {
	if prev == nil {
		return 0
	}
	n := 0
	for i := range m.OK {
		for j := range m.OK[i] {
			if m.OK[i][j] != prev.OK[i][j] {
				n++
			}
		}
	}
	return n
}

// Color reports whether to print ANSI colours: only onto a terminal
// (scripts/demo knows, the test binary writes into its pipe), never for
// NO_COLOR users (set to anything but the empty string, as no-color.org
// says) or dumb terminals.
func Color(terminal bool, getenv func(string) string) bool {
	return terminal && getenv("NO_COLOR") == "" && getenv("TERM") != "dumb"
}

// Print writes the matrix, in colour when color is set; cells that differ
// from prev (when given) are marked with * so a person sees what the step
// changed.
func (m Matrix) Print(w io.Writer, prev *Matrix, color bool) {
	green, red, bold, reset := "\033[32m", "\033[31m", "\033[1m", "\033[0m"
	if !color {
		green, red, bold, reset = "", "", "", ""
	}
	width := 0
	for _, s := range m.From {
		width = max(width, len(s.Name))
	}
	colw := 0
	for _, t := range m.To {
		colw = max(colw, len(t.String()))
	}
	fmt.Fprintf(w, "  %-*s", width, "from \\ to")
	for _, t := range m.To {
		fmt.Fprintf(w, "  %-*s", colw, t)
	}
	fmt.Fprintln(w)
	for i, s := range m.From {
		fmt.Fprintf(w, "  %-*s", width, s.Name)
		for j, t := range m.To {
			cell, c := "✗", red
			if m.OK[i][j] {
				cell, c = "✓", green
			}
			mark := " "
			if prev != nil && prev.OK[i][j] != m.OK[i][j] {
				mark, c = "*", bold+c
			}
			if t.Self == s.Name {
				cell, c, mark = "·", "", " "
			}
			fmt.Fprintf(w, "  %s%s%s%s%*s", c, cell, mark, reset, colw-2, "")
		}
		fmt.Fprintln(w)
	}
}
