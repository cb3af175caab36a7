package bench

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

var (
	flagCNPOut      = flag.String("cnp-out", "", "write the ClusterNetworkPolicy scale run's results as JSON here; it runs only with it")
	flagCNPPods     = flag.Int("cnp-pods", 10000, "total pods in the cluster for the ClusterNetworkPolicy scale run (most simulated)")
	flagCNPPolicies = flag.Int("cnp-policies", 100, "ClusterNetworkPolicies over the simulated namespaces")
	flagCNPIters    = flag.Int("cnp-iterations", 10, "ClusterNetworkPolicy changes measured per event kind")
	flagCNPDuration = flag.Duration("cnp-duration", 2*time.Second, "traffic per load generator while the programs' run statistics are read")
)

// CNPScaleResults is what TestPrivilegedBenchScaleCNP measured.
type CNPScaleResults struct {
	Started     time.Time        `json:"started"`
	Kernel      string           `json:"kernel"`
	CPUs        int              `json:"cpus"`
	Load        string           `json:"load"`
	Pods        int              `json:"pods"`
	Policies    int              `json:"cluster_policies"`
	GrowSeconds float64          `json:"grow_seconds"`
	Cost        []CNPCostRow     `json:"bpf_cost"`
	Propagation []PropagationRow `json:"propagation"`
}

// CNPCostRow is the programs' kernel run statistics while the measured
// pair carried the load generators' traffic, with n cluster policies.
type CNPCostRow struct {
	Policies  int     `json:"cluster_policies"`
	Placement string  `json:"placement"`
	Runs      uint64  `json:"runs"`
	NsPerRun  float64 `json:"ns_per_run"`
}

// TestPrivilegedBenchScaleCNP is issue 20, item 3: at -cnp-pods pods (most
// simulated), the per-packet cost of the programs with only the measured
// namespace's own cluster policy and then with -cnp-policies more over the
// simulated namespaces, and the propagation of a ClusterNetworkPolicy
// change to the measured pair's traffic. The measured namespace is
// admitted by an Admin Accept (so its pods are judged by the cluster
// tiers), and the changes are an Admin Deny of higher priority created,
// its action switched to Pass (which skips the Accept too and hands the
// pair to NetworkPolicy, none of which selects it: allowed) and back, and
// deleted.
func TestPrivilegedBenchScaleCNP(t *testing.T) {
	if *flagCNPOut == "" {
		t.Skip("the ClusterNetworkPolicy scale run runs with -cnp-out")
	}
	privileged.Require(t)
	res := &CNPScaleResults{Started: time.Now().UTC(), Kernel: kernel(), CPUs: runtime.NumCPU(), Policies: *flagCNPPolicies}
	defer func() {
		res.Load = loadAvg()
		b, err := json.MarshalIndent(res, "", "  ")
		if err == nil {
			err = os.WriteFile(*flagCNPOut, b, 0o644)
		}
		if err != nil {
			t.Errorf("write results: %v", err)
		}
	}()

	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, ClusterPolicies: true})
	const ns = "cnp-prop"
	m := startMeasured(t, c, 0, ns)
	own := map[string]string{corev1.LabelMetadataName: ns}
	base := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "measured-accept"}}
	base.Spec.Tier, base.Spec.Priority = cnpv1.AdminTier, 900
	base.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: own}
	base.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "accept-own", Action: cnpv1.ClusterNetworkPolicyRuleActionAccept,
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: own}}}}}
	c.ApplyClusterPolicy(t, base)

	realPods := countPods(t, c)
	sim := c.NewSimulated(t, testbed.SimulatedOptions{})
	t.Cleanup(func() { deleteSimulatedPods(t, c, sim) })
	res.GrowSeconds = growTo(t, sim, max(0, *flagCNPPods-realPods))
	res.Pods = realPods + sim.Pods()
	settle(t, c, res.Pods, anyPolicies)
	waitAllowed(t, m)

	cost := func(policies int) {
		stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
		if err != nil {
			t.Fatalf("enable BPF run statistics: %v", err)
		}
		defer stats.Close()
		progs, err := agentPrograms(c)
		if err != nil {
			t.Fatal(err)
		}
		defer closeAll(progs)
		for _, pl := range []string{"same-node", "cross-node"} {
			runs, ns, err := measureCost(progs, m, pl, *flagCNPDuration)
			if err != nil {
				t.Fatal(err)
			}
			row := CNPCostRow{Policies: policies, Placement: pl, Runs: runs, NsPerRun: float64(ns) / float64(runs)}
			res.Cost = append(res.Cost, row)
			t.Logf("%d pods, %d cluster policies, %s: %.0f ns per run over %d runs", res.Pods, policies, pl, row.NsPerRun, runs)
		}
	}
	cost(1)

	start := time.Now()
	for _, p := range ScaleClusterPolicies(sim.Namespaces(), *flagCNPPolicies) {
		c.ApplyClusterPolicy(t, p)
	}
	t.Logf("created %d cluster policies in %v", *flagCNPPolicies, time.Since(start).Round(time.Millisecond))
	settle(t, c, res.Pods, anyPolicies)
	waitAllowed(t, m)
	cost(*flagCNPPolicies + 1)

	res.Propagation = cnpPropagation(t, c, m, res.Pods, *flagCNPPolicies+1)
	for _, r := range res.Propagation {
		t.Logf("%s: p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d, %d failures)", r.Event, r.P50ms, r.P99ms, r.MaxMs, r.N, r.Failures)
	}
}

// cnpPropagation times an Admin Deny above the measured namespace's
// Accept: created, switched to Pass (no NetworkPolicy selects the pair:
// allowed), switched back to Deny, deleted; each until the probe loop sees
// the new verdict.
func cnpPropagation(t *testing.T, c *testbed.Cluster, m *measured, pods, policies int) []PropagationRow {
	own := map[string]string{corev1.LabelMetadataName: m.namespace}
	deny := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "measured-deny"}}
	deny.Spec.Tier, deny.Spec.Priority = cnpv1.AdminTier, 10
	deny.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: own}
	deny.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "deny-bench", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
		From:      []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: own}}},
		Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: BenchTCPPort}}}}}}
	api := c.CNP.PolicyV1beta1().ClusterNetworkPolicies()
	ctx := context.Background()
	t.Cleanup(func() { _ = api.Delete(ctx, deny.Name, metav1.DeleteOptions{}) })
	setAction := func(a cnpv1.ClusterNetworkPolicyRuleAction) error {
		cur, err := api.Get(ctx, deny.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec.Ingress[0].Action = a
		_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	}
	pr := &prober{from: m.cross, to: m.server.IP()}
	times := map[string][]time.Duration{}
	record := func(event string, allowed bool, change func() error) {
		if err := change(); err != nil {
			t.Fatalf("%s: %v", event, err)
		}
		acked := time.Now()
		if err := pr.await(allowed, acked); err != nil {
			t.Fatalf("%s: %v", event, err)
		}
		times[event] = append(times[event], pr.seen.Sub(acked))
	}
	events := []string{"cluster policy create (deny)", "cluster policy update (pass)", "cluster policy update (deny)", "cluster policy delete"}
	for range *flagCNPIters {
		record(events[0], false, func() error { _, err := api.Create(ctx, deny, metav1.CreateOptions{}); return err })
		record(events[1], true, func() error { return setAction(cnpv1.ClusterNetworkPolicyRuleActionPass) })
		record(events[2], false, func() error { return setAction(cnpv1.ClusterNetworkPolicyRuleActionDeny) })
		record(events[3], true, func() error { return api.Delete(ctx, deny.Name, metav1.DeleteOptions{}) })
	}
	var rows []PropagationRow
	for _, ev := range events {
		d := times[ev]
		rows = append(rows, PropagationRow{Policies: policies + 1, Pods: pods, Event: ev, N: len(d),
			P50ms: Millis(Percentile(d, 50)), P99ms: Millis(Percentile(d, 99)), MaxMs: Millis(Percentile(d, 100))})
	}
	return rows
}
