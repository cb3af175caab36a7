package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// settle bounds how long a step may take to reach the datapath.
const settle = 15 * time.Second

type step struct {
	title string
	do    func(t *testing.T)
	// want lists, per source pod (rows in order), which targets it reaches.
	want [][]bool
}

// TestPrivilegedDemo is `make demo`: the one-node scenario of the seeds
// (default deny, then backend-access, then a label change, then removal),
// with the reachability matrix after each step.
func TestPrivilegedDemo(t *testing.T) {
	privileged.Require(t)
	start := time.Now()
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	node.StartAgent(t, testbed.AgentOptions{})
	cp.CreateNamespace(t, "prod", map[string]string{"team": "prod"})
	cp.CreateNamespace(t, "lab", nil)
	frontend := node.AddPod(t, testbed.MakePod("prod", "frontend", map[string]string{"role": "frontend"}, testbed.TCP(80)))
	backend := node.AddPod(t, testbed.MakePod("prod", "backend", map[string]string{"role": "backend"}, testbed.TCP(6379), testbed.UDP(6379)))
	other := node.AddPod(t, testbed.MakePod("prod", "other", map[string]string{"role": "other"}, testbed.TCP(80)))
	outsider := node.AddPod(t, testbed.MakePod("lab", "outsider", nil, testbed.TCP(80)))

	from := []*testbed.Pod{frontend, backend, other, outsider}
	to := []Target{
		{frontend, 80, corev1.ProtocolTCP}, {backend, 6379, corev1.ProtocolTCP}, {backend, 6379, corev1.ProtocolUDP},
		{other, 80, corev1.ProtocolTCP}, {outsider, 80, corev1.ProtocolTCP},
	}
	policy := func(name string) string { return filepath.Join(testbed.ModuleRoot(t), "conf", "policies", name) }
	var denyIngress, backendAccess string
	const y, n = true, false
	steps := []step{
		{"No policy: Flannel alone, every pod reaches every pod", func(*testing.T) {}, [][]bool{
			{y, y, y, y, y}, {y, y, y, y, y}, {y, y, y, y, y}, {y, y, y, y, y}}},
		{"default-deny-ingress in prod: nothing gets into prod, prod still gets out", func(t *testing.T) {
			denyIngress = cp.ApplyPolicy(t, "prod", policy("default-deny-ingress.yaml"))
		}, [][]bool{
			{y, n, n, n, y}, {n, y, y, n, y}, {n, n, n, y, y}, {n, n, n, n, y}}},
		{"backend-access: frontends of prod reach backend on TCP 6379, nothing else does", func(t *testing.T) {
			backendAccess = cp.ApplyPolicy(t, "prod", policy("backend-access.yaml"))
		}, [][]bool{
			{y, y, n, n, y}, {n, y, y, n, y}, {n, n, n, y, y}, {n, n, n, n, y}}},
		{"other relabelled role=frontend: it joins the allow", func(t *testing.T) {
			cp.SetPodLabels(t, other, map[string]string{"role": "frontend"})
		}, [][]bool{
			{y, y, n, n, y}, {n, y, y, n, y}, {n, y, n, y, y}, {n, n, n, n, y}}},
		{"both policies deleted: open again", func(t *testing.T) {
			cp.DeletePolicy(t, "prod", backendAccess)
			cp.DeletePolicy(t, "prod", denyIngress)
		}, [][]bool{
			{y, y, y, y, y}, {y, y, y, y, y}, {y, y, y, y, y}, {y, y, y, y, y}}},
	}

	out := os.Stdout
	fmt.Fprintf(out, "\nTestbed up in %s: control plane, node-1 with palisade-agent, pods %v\n", time.Since(start).Round(time.Millisecond), from)
	var prev *Matrix
	for i, s := range steps {
		s.do(t)
		want := Matrix{From: from, To: to, OK: s.want}
		got := waitFor(from, to, want)
		fmt.Fprintf(out, "\nStep %d. %s\n", i, s.title)
		got.Print(out, prev)
		if !got.Equal(want) {
			fmt.Fprintln(out, "  expected:")
			want.Print(out, nil)
			t.Fatalf("step %d: reachability differs from the API's meaning", i)
		}
		prev = &got
	}
	fmt.Fprintf(out, "\n✓ reaches  ✗ dropped  * changed by the step   (demo ran in %s)\n", time.Since(start).Round(time.Millisecond))
}

// waitFor probes the matrix until it equals want or settle passes, and
// returns the last one measured.
func waitFor(from []*testbed.Pod, to []Target, want Matrix) Matrix {
	deadline := time.Now().Add(settle)
	for {
		m := measure(from, to)
		if m.Equal(want) || time.Now().After(deadline) {
			return m
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func measure(from []*testbed.Pod, to []Target) Matrix {
	var specs []testbed.ProbeSpec
	for _, f := range from {
		for _, t := range to {
			specs = append(specs, testbed.ProbeSpec{From: f, To: t.Pod.IP(), Port: t.Port, Protocol: t.Proto})
		}
	}
	verdicts := testbed.ProbeMatrix(context.Background(), specs)
	m := Matrix{From: from, To: to, OK: make([][]bool, len(from))}
	for i := range from {
		m.OK[i] = make([]bool, len(to))
		for j := range to {
			m.OK[i][j] = verdicts[i*len(to)+j].Outcome == testbed.Connected
		}
	}
	return m
}
