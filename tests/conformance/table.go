package conformance

import (
	"fmt"
	"strings"
)

// Matrix is a reachability table: m[from][to] is true when from connects
// to to. A pair that was not probed (pod to itself, when the probe ignores
// loopback) is absent.
type Matrix map[string]map[string]bool

func (m Matrix) set(from, to string, v bool) {
	if m[from] == nil {
		m[from] = map[string]bool{}
	}
	m[from][to] = v
}

func (m Matrix) get(from, to string) (v, ok bool) {
	v, ok = m[from][to]
	return v, ok
}

// Mismatches lists the pairs of observed that differ from expected, as
// "from->to", in ids order.
func Mismatches(ids []string, expected, observed Matrix) []string {
	var out []string
	for _, from := range ids {
		for _, to := range ids {
			got, ok := observed.get(from, to)
			if !ok {
				continue
			}
			if want, _ := expected.get(from, to); want != got {
				out = append(out, from+"->"+to)
			}
		}
	}
	return out
}

// FormatDiff prints expected and observed side by side, one row per source
// pod: 1 connects, 0 does not, . not probed; a * marks an observed cell that
// differs from the expected one.
func FormatDiff(ids []string, expected, observed Matrix) string {
	w := 4
	for _, id := range ids {
		w = max(w, len(id))
	}
	cell := func(m Matrix, from, to string, mark bool) string {
		v, ok := m.get(from, to)
		s := "."
		if ok {
			s = map[bool]string{true: "1", false: "0"}[v]
		}
		if mark {
			s += "*"
		}
		return fmt.Sprintf("%-*s", w, s)
	}
	header := func() string {
		var b strings.Builder
		fmt.Fprintf(&b, "%-*s", w+1, "")
		for _, to := range ids {
			fmt.Fprintf(&b, "%-*s", w, to)
		}
		return strings.TrimRight(b.String(), " ")
	}
	shown := expectedShown(expected, observed)
	var b strings.Builder
	left := len(header()) + 1
	fmt.Fprintf(&b, "    %-*s   %s\n", left, "expected (from \\ to)", "observed (* differs)")
	fmt.Fprintf(&b, "    %s   %s\n", header(), header())
	for _, from := range ids {
		var l, r strings.Builder
		fmt.Fprintf(&l, "%-*s ", w, from)
		fmt.Fprintf(&r, "%-*s ", w, from)
		for _, to := range ids {
			got, probed := observed.get(from, to)
			want, _ := expected.get(from, to)
			fmt.Fprint(&l, cell(shown, from, to, false))
			fmt.Fprint(&r, cell(observed, from, to, probed && got != want))
		}
		fmt.Fprintf(&b, "    %-*s   %s\n", left, strings.TrimRight(l.String(), " "), strings.TrimRight(r.String(), " "))
	}
	return b.String()
}

// expectedShown is expected with the pairs that were not probed left out,
// so that both halves show the same dots.
func expectedShown(expected, observed Matrix) Matrix {
	out := Matrix{}
	for from, row := range expected {
		for to, v := range row {
			if _, ok := observed.get(from, to); ok {
				out.set(from, to, v)
			}
		}
	}
	return out
}
