package bench

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// BPFCostRow is what the programs themselves cost while one configuration
// carried the load generators' traffic: the kernel's own run counters,
// which machine noise barely moves, unlike throughput. This is the
// per-packet cost the issue asks to be independent of the policy count.
type BPFCostRow struct {
	Placement string  `json:"placement"`
	Rules     int     `json:"rules"`
	Runs      uint64  `json:"runs"`
	NsPerRun  float64 `json:"ns_per_run"`
	// The same, from the pass over the configurations in order and from
	// the pass in reverse (NsPerRun covers both).
	NsPerRunInOrder  float64 `json:"ns_per_run_in_order"`
	NsPerRunReversed float64 `json:"ns_per_run_reversed"`
}

// ProgramInfo is what the verifier says of one of an agent's programs.
type ProgramInfo struct {
	Node                 string `json:"node"`
	Program              string `json:"program"`
	VerifiedInstructions uint32 `json:"verified_instructions"`
	JitedBytes           uint32 `json:"jited_bytes"`
}

// agentPrograms opens every agent's two pinned programs.
func agentPrograms(c *testbed.Cluster) (map[string]*ebpf.Program, error) {
	progs := map[string]*ebpf.Program{}
	for i, a := range c.Agents {
		for _, name := range []string{"pal_from_pod", "pal_to_pod"} {
			p, err := ebpf.LoadPinnedProgram(filepath.Join(a.BPFRoot(), "progs", name), nil)
			if err != nil {
				closeAll(progs)
				return nil, fmt.Errorf("open program %s of the agent on %s: %w", name, c.Nodes[i].Name, err)
			}
			progs[c.Nodes[i].Name+"/"+name] = p
		}
	}
	return progs, nil
}

func closeAll(progs map[string]*ebpf.Program) {
	for _, p := range progs {
		p.Close()
	}
}

// Programs reports the verifier's figures for every agent's programs.
func Programs(c *testbed.Cluster) ([]ProgramInfo, error) {
	progs, err := agentPrograms(c)
	if err != nil {
		return nil, err
	}
	defer closeAll(progs)
	var out []ProgramInfo
	for _, key := range sortedKeys(progs) {
		info, err := progs[key].Info()
		if err != nil {
			return nil, fmt.Errorf("read info of %s: %w", key, err)
		}
		node, name := filepath.Split(key)
		pi := ProgramInfo{Node: filepath.Clean(node), Program: name}
		pi.VerifiedInstructions, _ = info.VerifiedInstructions()
		pi.JitedBytes, err = info.JitedSize()
		if err != nil {
			return nil, fmt.Errorf("read jited size of %s: %w", key, err)
		}
		out = append(out, pi)
	}
	return out, nil
}

// runTotals sums the run counters of progs.
func runTotals(progs map[string]*ebpf.Program) (runs uint64, total time.Duration, err error) {
	for key, p := range progs {
		st, err := p.Stats()
		if err != nil {
			return 0, 0, fmt.Errorf("read run counters of %s: %w", key, err)
		}
		runs += st.RunCount
		total += st.Runtime
	}
	return runs, total, nil
}
