package bench

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// bpfCost runs the load generators once more per configuration with the
// kernel's program statistics on, and reports nanoseconds per program run.
// It is a pass of its own because the statistics cost a clock read per run
// that the baseline would not pay. The baseline's pods have no programs;
// it is left out.
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
	var rows []BPFCostRow
	for _, m := range configs {
		if m.rules < 0 {
			continue
		}
		for _, pl := range []string{"same-node", "cross-node"} {
			from := m.same
			if pl == "cross-node" {
				from = m.cross
			}
			runs0, t0, err := runTotals(progs)
			if err != nil {
				return nil, err
			}
			if _, err := measureOnce(from, m, d); err != nil {
				return nil, fmt.Errorf("%d rules, %s: %w", m.rules, pl, err)
			}
			runs1, t1, err := runTotals(progs)
			if err != nil {
				return nil, err
			}
			if runs1 == runs0 {
				return nil, errors.New("programs did not run while their pods carried traffic: are they attached?")
			}
			rows = append(rows, BPFCostRow{Placement: pl, Rules: m.rules, Runs: runs1 - runs0,
				NsPerRun: float64(t1-t0) / float64(runs1-runs0)})
		}
	}
	return rows, nil
}
