// Package demo is the scenario `make demo` runs: pods on the testbed,
// policies applied step by step, and after each step the reachability
// matrix a person can read at a glance. It is also a test: each step's
// matrix must equal what the API says it should be.
package demo

import (
	"fmt"
	"io"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// Target is one column of the matrix: a pod's port.
type Target struct {
	Pod   *testbed.Pod
	Port  int
	Proto corev1.Protocol
}

func (t Target) String() string {
	return fmt.Sprintf("%s %s/%d", t.Pod.Name, strings.ToLower(string(t.Proto)), t.Port)
}

// Matrix holds whether each source pod reached each target.
type Matrix struct {
	From []*testbed.Pod
	To   []Target
	// OK[i][j] is true when From[i] connected to To[j].
	OK [][]bool
}

// Equal reports whether two matrices over the same pods agree.
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

// color reports whether to print ANSI colours: not for NO_COLOR users or
// dumb terminals.
func color() bool {
	_, no := os.LookupEnv("NO_COLOR")
	return !no && os.Getenv("TERM") != "dumb"
}

// Print writes the matrix; cells that differ from prev (when given) are
// marked with * so a person sees what the step changed.
func (m Matrix) Print(w io.Writer, prev *Matrix) {
	green, red, bold, reset := "\033[32m", "\033[31m", "\033[1m", "\033[0m"
	if !color() {
		green, red, bold, reset = "", "", "", ""
	}
	width := 0
	for _, p := range m.From {
		width = max(width, len(p.String()))
	}
	fmt.Fprintf(w, "%*s", width+2, "")
	for _, t := range m.To {
		fmt.Fprintf(w, " %-16s", t)
	}
	fmt.Fprintln(w)
	for i, p := range m.From {
		fmt.Fprintf(w, "  %-*s", width, p)
		for j := range m.To {
			cell, c := "✗", red
			if m.OK[i][j] {
				cell, c = "✓", green
			}
			mark := " "
			if prev != nil && prev.OK[i][j] != m.OK[i][j] {
				mark, c = "*", bold+c
			}
			if m.From[i] == m.To[j].Pod {
				cell, c, mark = "·", "", " "
			}
			fmt.Fprintf(w, " %s%s%s%s%14s", c, cell, mark, reset, "")
		}
		fmt.Fprintln(w)
	}
}
