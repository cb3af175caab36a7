package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// scripts/bench passes these after the main benchmark; without
// -scale-out the scale run does not run.
var (
	flagScaleOut      = flag.String("scale-out", "", "write the scale run's results as JSON here; it runs only with it")
	flagScaleTable    = flag.String("scale-table", "", "also write the scale run's Markdown table here")
	flagScalePods     = flag.String("scale", "1000,5000,10000", "total pods in the cluster at each scale stage (most simulated)")
	flagScaleAgentEnv = flag.String("scale-agent-env", "", "KEY=value pairs, comma-separated, for the agents' environment (e.g. GOMEMLIMIT=90MiB)")
	flagScalePolicies = flag.String("scale-policies", "100,1000", "policies over the simulated namespaces at each scale stage")
	flagScaleIters    = flag.Int("scale-iterations", 10, "policy changes measured per event kind and scale stage")
)

// settleTimeout bounds the wait for both agents to take in a stage's
// pods and policies; at 10 000 pods each sync recompiles against all.
const settleTimeout = 5 * time.Minute

// TestPrivilegedBenchScale grows a simulated population through the
// (pods × policies) stages and at each measures policy propagation to a
// real measured pod pair and what the agents cost, then fits each cost
// against pods and policies (issue #8, items 2 and 4).
func TestPrivilegedBenchScale(t *testing.T) {
	if *flagScaleOut == "" {
		t.Skip("the scale benchmark runs from scripts/bench (make bench), which passes -scale-out")
	}
	privileged.Require(t)
	podStages, err := ParseCounts(*flagScalePods)
	if err != nil {
		t.Fatalf("-scale: %v", err)
	}
	polStages, err := ParseCounts(*flagScalePolicies)
	if err != nil {
		t.Fatalf("-scale-policies: %v", err)
	}
	res := &ScaleResults{Started: time.Now().UTC(), Kernel: kernel(), CPUs: runtime.NumCPU(), Iterations: *flagScaleIters}
	defer writeResults(t, res, *flagScaleOut, *flagScaleTable)

	var agentEnv []string
	if *flagScaleAgentEnv != "" {
		agentEnv = strings.Split(*flagScaleAgentEnv, ",")
	}
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, Agent: testbed.AgentOptions{Env: agentEnv}})
	m := startMeasured(t, c, 0, "scale-prop")
	realPods := countPods(t, c)
	sim := c.NewSimulated(t, testbed.SimulatedOptions{})
	pols := &scalePolicies{c: c, have: map[string]*networkingv1.NetworkPolicy{}}
	// Registered after the population's cleanup, so they run first: the
	// pods go gently (see deleteSimulatedPods), then the policies, before
	// their namespaces.
	t.Cleanup(func() { pols.apply(t, nil) })
	t.Cleanup(func() { deleteSimulatedPods(t, c, sim) })

	for _, pods := range podStages {
		grow := growTo(t, sim, max(0, pods-realPods))
		for _, n := range polStages {
			s := ScaleStage{Pods: realPods + sim.Pods(), SimPods: sim.Pods(), Namespaces: len(sim.Namespaces()), Policies: n, GrowSeconds: grow}
			grow = 0
			start := time.Now()
			pols.apply(t, ScalePolicies(sim.Namespaces(), n))
			s.PolicySeconds = time.Since(start).Seconds()
			start = time.Now()
			settle(t, c, s.Pods, n)
			s.SettleSeconds = time.Since(start).Seconds()
			t.Run(fmt.Sprintf("%d pods/%d policies", s.Pods, n), func(t *testing.T) { measureStage(t, c, m, &s) })
			res.Stages = append(res.Stages, s)
			t.Logf("stage %d pods, %d policies: grow %.1f s, policies %.1f s, settle %.1f s", s.Pods, n, s.GrowSeconds, s.PolicySeconds, s.SettleSeconds)
		}
	}
	res.Growth = FitStages(res.Stages)
}

// growTo grows the simulated pods to n and returns how long it took.
func growTo(t *testing.T, sim *testbed.Simulated, n int) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	if err := sim.Grow(ctx, n); err != nil {
		t.Fatalf("grow simulated pods to %d: %v", n, err)
	}
	d := time.Since(start)
	t.Logf("grew to %d simulated pods in %d namespaces in %v", n, len(sim.Namespaces()), d.Round(time.Millisecond))
	return d.Seconds()
}

// deleteSimulatedPods deletes the simulated pods a namespace at a time on a
// few workers, retrying, before the population's own cleanup runs. That
// cleanup sends a DeleteCollection per namespace on 32 workers at once;
// at 10 000 pods on a loaded 2-core machine the API server reset some of
// those streams ("stream error: INTERNAL_ERROR") and, with no retry, the
// pods stayed and the cleanup failed after its 5 minutes.
func deleteSimulatedPods(t *testing.T, c *testbed.Cluster, sim *testbed.Simulated) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	zero := int64(0)
	sel := metav1.ListOptions{LabelSelector: testbed.SimulatedLabel + "=true"}
	namespaces := sim.Namespaces()
	start := time.Now()
	err := forEach(len(namespaces), func(i int) error {
		var err error
		for range 5 {
			pods := c.Client.CoreV1().Pods(namespaces[i])
			if err = pods.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, sel); err == nil {
				return nil
			}
			time.Sleep(time.Second)
		}
		return fmt.Errorf("delete simulated pods of %s: %w", namespaces[i], err)
	})
	if err != nil {
		t.Error(err)
	}
	t.Logf("deleted the simulated pods of %d namespaces in %v", len(namespaces), time.Since(start).Round(time.Millisecond))
}

// scalePolicies is the simulated namespaces' policies this test created.
type scalePolicies struct {
	c    *testbed.Cluster
	have map[string]*networkingv1.NetworkPolicy
}

// apply creates and deletes policies until exactly want exist.
func (p *scalePolicies) apply(t *testing.T, want []*networkingv1.NetworkPolicy) {
	t.Helper()
	create, del := DiffPolicies(p.have, want)
	ctx := context.Background()
	err := forEach(len(create), func(i int) error {
		q := create[i]
		if _, err := p.c.Client.NetworkingV1().NetworkPolicies(q.Namespace).Create(ctx, q, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create policy %s: %w", PolicyKey(q), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = forEach(len(del), func(i int) error {
		ns, name, _ := strings.Cut(del[i], "/")
		if err := p.c.Client.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete policy %s: %w", del[i], err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range create {
		p.have[PolicyKey(q)] = q
	}
	for _, k := range del {
		delete(p.have, k)
	}
}

// forEach runs fn(0…n-1) on 4 workers, enough to keep the API server
// busy without starving the agents of the 2-core machine, and returns the
// first error.
func forEach(n int, fn func(int) error) error {
	next := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	return <-errs // nil when closed empty
}

// anyPolicies tells settle not to count NetworkPolicies: a stage made of
// ClusterNetworkPolicies has none.
const anyPolicies = -1

// settle waits until both agents count the cluster's policies (unless
// policies is anyPolicies), hold an ipcache entry per pod, and have stopped
// syncing for two seconds: the stage is absorbed and propagation measures
// one change, not a backlog.
func settle(t *testing.T, c *testbed.Cluster, pods, policies int) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(settleTimeout)
	syncs := make([]float64, len(c.Agents))
	quietSince := time.Now()
	for {
		ready := true
		for i := range c.Agents {
			mt, err := AgentMetrics(ctx, c.Nodes[i])
			if err != nil {
				t.Fatalf("settle: %v", err)
			}
			n := mt["palisade_policy_compile_duration_seconds_count"]
			if n != syncs[i] {
				syncs[i], quietSince = n, time.Now()
			}
			counted := policies == anyPolicies || mt["palisade_policies"] == float64(policies)
			ready = ready && counted && mt[`palisade_map_entries{map="ipcache"}`] >= float64(pods)
		}
		if ready && time.Since(quietSince) >= 2*time.Second {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents did not settle at %d pods, %d policies within %v", pods, policies, settleTimeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// measureStage runs the propagation measurements and samples the agents
// around them.
func measureStage(t *testing.T, c *testbed.Cluster, m *measured, s *ScaleStage) {
	before := make([]map[string]float64, len(c.Agents))
	cpu := make([]float64, len(c.Agents))
	for i, a := range c.Agents {
		before[i], cpu[i] = agentCounters(t, a, c.Nodes[i])
	}
	// The first agent's CPU profile while the changes propagate: where a
	// change's time goes (agent-prop-PODSxPOLICIES.pprof).
	profiled := cpuProfile(t, c.Agents[0], filepath.Join(filepath.Dir(*flagScaleOut), fmt.Sprintf("agent-prop-%dx%d.pprof", s.Pods, s.Policies)), propProfileSeconds)
	s.Propagation = propagation(t, c, m, s.Policies, propOptions{iterations: *flagScaleIters})
	// Still inside propagation's default deny and egress allow, which this
	// subtest's cleanup removes.
	s.Propagation = append(s.Propagation, namespaceLabelPropagation(t, c, m, s.Policies+2)...)
	<-profiled
	for i, a := range c.Agents {
		after, cpuAfter := agentCounters(t, a, c.Nodes[i])
		sample, err := SampleAgent(context.Background(), a, c.Nodes[i])
		if err != nil {
			t.Fatalf("sample agent: %v", err)
		}
		sample.Stage, sample.Pods, sample.Policies = s.Stage(), s.Pods, s.Policies
		if i == 0 {
			heapProfile(t, a, filepath.Join(filepath.Dir(*flagScaleOut), fmt.Sprintf("agent-heap-%dx%d.pprof", s.Pods, s.Policies)))
		}
		sa := ScaleAgent{AgentSample: sample, StageCPUSeconds: cpuAfter - cpu[i], StageChanges: changes(s.Propagation)}
		sa.StageCompileMs, sa.StageSyncs = HistogramDelta(before[i], after, "palisade_policy_compile_duration_seconds")
		sa.StageApplyMs, sa.StageApplies = HistogramDelta(before[i], after, "palisade_map_sync_duration_seconds")
		s.Agents = append(s.Agents, sa)
	}
}

// heapProfile writes agent a's heap profile (live objects at the last GC)
// to path, for what the agent's RSS is made of.
func heapProfile(t *testing.T, a *testbed.Agent, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Errorf("create heap profile: %v", err)
		return
	}
	defer f.Close()
	if err := a.Client().Profile(context.Background(), "heap", 0, f); err != nil {
		t.Errorf("heap profile of the agent: %v", err)
	}
}

// propProfileSeconds is how long the CPU profile during propagation runs:
// long enough to cover the policy and pod label changes at 10 changes each.
const propProfileSeconds = 30 * time.Second

// cpuProfile writes agent a's CPU profile over the next d to path, in the
// background; the channel closes when it is written.
func cpuProfile(t *testing.T, a *testbed.Agent, path string, d time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f, err := os.Create(path)
		if err != nil {
			t.Errorf("create CPU profile: %v", err)
			return
		}
		defer f.Close()
		if err := a.Client().Profile(context.Background(), "profile", d, f); err != nil {
			t.Errorf("CPU profile of the agent: %v", err)
		}
	}()
	return done
}

// changes counts the API changes the propagation rows made.
func changes(rows []PropagationRow) int {
	n := 0
	for _, r := range rows {
		n += r.N + r.Failures
	}
	return n
}

// Stage names the stage in agent samples.
func (s *ScaleStage) Stage() string { return fmt.Sprintf("%d pods, %d policies", s.Pods, s.Policies) }

func agentCounters(t *testing.T, a *testbed.Agent, node *testbed.Node) (map[string]float64, float64) {
	t.Helper()
	mt, err := AgentMetrics(context.Background(), node)
	if err != nil {
		t.Fatalf("agent counters: %v", err)
	}
	cpu, err := cpuSeconds(a.Process().PID())
	if err != nil {
		t.Fatalf("agent counters: %v", err)
	}
	return mt, cpu
}
