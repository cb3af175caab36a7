package bench

import (
	"flag"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// scripts/bench passes these after the main benchmark; without -peers-out
// the peers benchmark does not run. -rounds and -duration are shared with
// TestPrivilegedBench.
var (
	flagPeersOut   = flag.String("peers-out", "", "write the peers' results as JSON here; the peers benchmark runs only with it")
	flagPeersTable = flag.String("peers-table", "", "also write the peers' Markdown table here")
	flagPeers      = flag.String("peers", "kube-router,kube-network-policies", "peers to run, in order")
	flagPeersRules = flag.String("peers-rules", "0,100,1000", "policy rules selecting the measured pods, one datapath configuration each; the first is the reference of the ratios")
	// A peer that rewrites all its rules on every change takes seconds per
	// event at a thousand policies; the main benchmark's 20 would take most
	// of an hour there.
	flagPeersPropIters = flag.Int("peers-prop-iterations", 5, "policy changes measured per event kind and size for each peer")
	flagPeersBulk      = flag.Int("peers-bulk-rules", 9000, "rules added in a namespace of their own (with pods) before the second propagation measurement, about 900 policies more; 0 skips it")
)

func TestPrivilegedBenchPeers(t *testing.T) {
	if *flagPeersOut == "" {
		t.Skip("the peers benchmark runs from scripts/bench (make bench), which passes -peers-out")
	}
	privileged.Require(t)
	rules := parseRules(t, *flagPeersRules)
	peers := selectPeers(t, *flagPeers)
	bins := PeerBinDir(t)
	root := testbed.ModuleRoot(t)
	res := &PeerResults{Started: time.Now().UTC(), Kernel: kernel(), CPUs: runtime.NumCPU(), Rounds: *flagRounds, Duration: flagDuration.String()}
	defer writeResults(t, res, *flagPeersOut, *flagPeersTable)
	for _, p := range peers {
		r := PeerResult{Name: p.Name}
		var err error
		if r.Version, err = PeerVersion(root, p.Module); err != nil {
			t.Fatal(err)
		}
		// Each peer gets a cluster of its own, gone when its subtest ends.
		t.Run(p.Name, func(t *testing.T) { benchPeer(t, p, filepath.Join(bins, p.Name), rules, &r) })
		res.Peers = append(res.Peers, r)
	}
}

func parseRules(t *testing.T, list string) []int {
	var rules []int
	for f := range strings.SplitSeq(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n%RulesPerPol != 0 {
			t.Fatalf("rules: %q is not a multiple of %d", f, RulesPerPol)
		}
		rules = append(rules, n)
	}
	if !slices.ContainsFunc(rules, func(n int) bool { return n > 0 }) {
		t.Fatalf("rules %q: enforcement is verified on a configuration with rules; none has any", list)
	}
	return rules
}

func selectPeers(t *testing.T, list string) []Peer {
	var out []Peer
	for name := range strings.SplitSeq(list, ",") {
		i := slices.IndexFunc(Peers, func(p Peer) bool { return p.Name == strings.TrimSpace(name) })
		if i < 0 {
			t.Fatalf("-peers: unknown peer %q", name)
		}
		out = append(out, Peers[i])
	}
	return out
}

// peerRun is one peer running on its own cluster.
type peerRun struct {
	t        *testing.T
	c        *testbed.Cluster
	p        Peer
	procs    []*testbed.Process // by node
	r        *PeerResult
	policies int
	syncs    [][2]float64 // by node: sync count and sum at the previous sample
}

// benchPeer runs one peer on a cluster without Palisade. A peer that cannot
// start or does not enforce is recorded in r, not failed: the run goes on
// with the next.
func benchPeer(t *testing.T, p Peer, bin string, rules []int, r *PeerResult) {
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, WithoutPalisade: true})
	run := &peerRun{t: t, c: c, p: p, r: r, syncs: make([][2]float64, len(c.Nodes)), procs: startPeers(t, p, bin, c, r)}
	if run.procs == nil {
		return
	}
	run.sample("idle")
	r.SettleSeconds = map[string]float64{}

	// Every pod is outside Palisade (startMeasured's baseline); rules is
	// set afterwards for the rows.
	var configs []*measured
	for _, n := range rules {
		m := startMeasured(t, c, -1, fmt.Sprintf("peer-r%d", n))
		m.rules = n
		configs = append(configs, m)
	}
	prop := startMeasured(t, c, -1, "peer-prop")
	run.sample("pods up, no policies")

	verify := configs[slices.IndexFunc(configs, func(m *measured) bool { return m.rules > 0 })]
	if !run.verify(verify) {
		return
	}
	for _, m := range configs {
		if m != verify && m.rules > 0 {
			run.policies += applyPolicies(t, c, m)
		}
	}
	run.sample("all measured rules applied")
	run.propagation(prop)

	if *flagPeersBulk > 0 {
		bulk := startMeasured(t, c, -1, "peer-bulk")
		bulk.rules = *flagPeersBulk
		run.policies += applyPolicies(t, c, bulk)
		run.sample(fmt.Sprintf("%d bulk rules applied", bulk.rules))
		run.propagation(prop)
	}

	run.settle("datapath")
	t.Run("datapath", func(t *testing.T) { r.Datapath, r.DatapathRun = datapath(t, configs) })
	run.sample("after datapath")
}

// startPeers starts the peer on every node and returns the processes, or
// nil, with r.Error set, when it does not start.
func startPeers(t *testing.T, p Peer, bin string, c *testbed.Cluster, r *PeerResult) []*testbed.Process {
	procs := make([]*testbed.Process, len(c.Nodes))
	for i, n := range c.Nodes {
		bridgeNetfilter(t, n)
		proc, argv, err := startPeer(t, p, bin, c, n)
		if i == 0 {
			r.Command = argv
		}
		if err != nil {
			r.Error = err.Error()
			t.Logf("%s is not runnable here: %v", p.Name, err)
			return nil
		}
		procs[i] = proc
	}
	return procs
}

// verify checks enforcement on m (see verifyEnforcement) and records the
// outcome; false means the peer does not enforce and r says why.
func (run *peerRun) verify(m *measured) bool {
	e, err := verifyEnforcement(run.t, run.c, m)
	if err != nil {
		// Every node runs the same binary and flags; one node's log says why.
		err = fmt.Errorf("%w%s", err, logErrors(run.procs[0]))
		if run.p.diagnose != nil {
			err = fmt.Errorf("%w\n%s", err, run.p.diagnose(run.c.Nodes[0]))
		}
		run.r.Error = err.Error()
		run.t.Logf("%s does not enforce here: %v", run.p.Name, err)
		return false
	}
	run.r.Enforcement, run.r.Runnable = e, true
	run.policies += len(NamespacePolicies(m.namespace, m.rules))
	return true
}

func (run *peerRun) sample(stage string) {
	run.r.Cost = append(run.r.Cost, samplePeer(run.t, run.c, run.p, run.procs, run.syncs, stage, run.policies)...)
}

// settle waits for the peer to finish the work earlier changes left it, so
// that it is not charged to the next measurement, and records how long.
func (run *peerRun) settle(what string) {
	d, err := waitPeersIdle(run.procs, 5*time.Minute)
	if err != nil {
		run.t.Fatalf("before %s: %v", what, err)
	}
	run.r.SettleSeconds[what] = d.Seconds()
}

func (run *peerRun) propagation(prop *measured) {
	run.settle(fmt.Sprintf("propagation at %d policies", run.policies))
	run.t.Run(fmt.Sprintf("propagation/%d policies", run.policies), func(t *testing.T) {
		if run.r.Transients == nil {
			run.r.Transients = map[string]int{}
		}
		run.r.Propagation = append(run.r.Propagation, peerPropagation(t, run.c, prop, run.policies, run.r.Transients)...)
	})
}

// applyPolicies creates m's policies, waits until the measured flow is
// allowed under them, and returns how many it created.
func applyPolicies(t *testing.T, c *testbed.Cluster, m *measured) int {
	pols := NamespacePolicies(m.namespace, m.rules)
	for _, p := range pols {
		createPolicy(t, c, p)
	}
	waitAllowed(t, m)
	return len(pols)
}

// samplePeer reads each peer process's RSS and CPU time from /proc and,
// when the peer exports them, its syncs; prev holds each node's sync count
// and sum at the previous sample.
func samplePeer(t *testing.T, c *testbed.Cluster, p Peer, procs []*testbed.Process, prev [][2]float64, stage string, policies int) []PeerCost {
	pods := countPods(t, c)
	var out []PeerCost
	for i, proc := range procs {
		n := c.Nodes[i]
		s := PeerCost{Stage: stage, Node: n.Name, Policies: policies, Pods: pods}
		var err error
		if s.RSSMiB, err = rssMiB(proc.PID()); err == nil {
			s.CPUSeconds, err = cpuSeconds(proc.PID())
		}
		if err == nil && p.metricsURL != "" {
			var sum float64
			if s.Syncs, sum, err = peerSyncs(n, p); err == nil && s.Syncs > prev[i][0] {
				s.SyncMs = (sum - prev[i][1]) / (s.Syncs - prev[i][0]) * 1000
				prev[i] = [2]float64{s.Syncs, sum}
			}
		}
		if err != nil {
			t.Errorf("sample %s at %s: %v", n.Name, stage, err)
			continue
		}
		out = append(out, s)
	}
	return out
}
