package bench

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// bpfCost runs the load generators once more per configuration with the
// kernel's program statistics on, and reports nanoseconds per program run.
// It is a pass of its own because the statistics cost a clock read per run
// that the baseline would not pay. The baseline's pods have no programs;
// it is left out. It goes over the configurations twice, in order and
// then in reverse: conntrack fills up as it goes, so a cost that grows
// with the rules shows in both passes, and one that grows with conntrack's
// occupancy flips between them.
func bpfCost(c *testbed.Cluster, configs []*measured, d time.Duration) ([]BPFCostRow, error) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable BPF run statistics: %w", err)
	}
	defer stats.Close()
	progs, err := agentPrograms(c)
	if err != nil {
		return nil, err
	}
	defer closeAll(progs)
	var under []*measured
	for _, m := range configs {
		if m.rules >= 0 {
			under = append(under, m)
		}
	}
	rows := map[string]*BPFCostRow{}
	var order []string
	for pass, ms := range [][]*measured{under, reversed(under)} {
		for _, m := range ms {
			for _, pl := range []string{"same-node", "cross-node"} {
				runs, ns, err := measureCost(progs, m, pl, d)
				if err != nil {
					return nil, err
				}
				key := fmt.Sprintf("%s/%d", pl, m.rules)
				row := rows[key]
				if row == nil {
					row = &BPFCostRow{Placement: pl, Rules: m.rules}
					rows[key] = row
					order = append(order, key)
				}
				row.Runs += runs
				row.NsPerRun += float64(ns) // a total until the end
				if pass == 0 {
					row.NsPerRunInOrder = float64(ns) / float64(runs)
				} else {
					row.NsPerRunReversed = float64(ns) / float64(runs)
				}
			}
		}
	}
	var out []BPFCostRow
	for _, key := range order {
		row := rows[key]
		row.NsPerRun /= float64(row.Runs)
		out = append(out, *row)
	}
	return out, nil
}

// measureCost carries one configuration's traffic from placement pl and
// returns the program runs and nanoseconds it cost.
func measureCost(progs map[string]*ebpf.Program, m *measured, pl string, d time.Duration) (runs, ns uint64, err error) {
	from := m.same
	if pl == "cross-node" {
		from = m.cross
	}
	runs0, t0, err := runTotals(progs)
	if err != nil {
		return 0, 0, err
	}
	if _, err := measureOnce(from, m, d); err != nil {
		return 0, 0, fmt.Errorf("%d rules, %s: %w", m.rules, pl, err)
	}
	runs1, t1, err := runTotals(progs)
	if err != nil {
		return 0, 0, err
	}
	if runs1 == runs0 {
		return 0, 0, errors.New("programs did not run while their pods carried traffic: are they attached?")
	}
	return runs1 - runs0, uint64(t1 - t0), nil
}

func reversed[T any](s []T) []T {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}
