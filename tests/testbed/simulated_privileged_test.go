package testbed

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedSimulatedPods grows 200 simulated pods on a one-node
// cluster and checks that the real node's agent puts their addresses in its
// ipcache as the pods they are, that the node's pod runner leaves them alone,
// and that cleanup takes them out of the API and the agent's ipcache again.
func TestPrivilegedSimulatedPods(t *testing.T) {
	privileged.Require(t)
	c := StartCluster(t, ClusterOptions{Nodes: 1})
	a := c.Agents[0]
	ctx := context.Background()
	// Explain answers only for flows with an end on its node.
	local := c.Nodes[0].AddPod(t, MakePod("default", "local", map[string]string{"app": "local"}, TCP(80)))
	before := ipcacheEntries(t, a)
	const n = 200
	t.Run("grow", func(t *testing.T) {
		s := c.NewSimulated(t, SimulatedOptions{PodsPerNode: 50, PodsPerNamespace: 40})
		start := time.Now()
		if err := s.Grow(ctx, n/2); err != nil {
			t.Fatal(err)
		}
		if err := s.Grow(ctx, n); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d simulated pods in %d namespaces created in %v", s.Pods(), len(s.Namespaces()), time.Since(start).Round(time.Millisecond))
		if got := len(s.Namespaces()); got != 5 {
			t.Errorf("namespaces: %d, want 5 (40 pods each)", got)
		}
		if err := s.Grow(ctx, n-1); err == nil {
			t.Errorf("Grow to fewer pods succeeded")
		}

		waitUntil(t, 30*time.Second, "agent's ipcache holds the simulated pods", func() bool {
			return ipcacheEntries(t, a) >= before+n
		})
		for _, i := range []int{0, 1, 49, 50, 99, 150, n - 1} {
			p := SimPodAt(s.Options(), i)
			xs, err := a.Client().Explain(ctx, &agentapi.ExplainRequest{From: p.IP.String(), To: local.Namespace + "/" + local.Name, Port: 80})
			if err != nil {
				t.Fatalf("explain %s -> %s: %v", p.IP, local, err)
			}
			from := xs[0].From
			if from.Pod != p.Namespace+"/"+p.Name || from.Node != p.Node || from.Local {
				t.Errorf("agent sees %s as pod %q on %q (local %v), want %s/%s on %s", p.IP, from.Pod, from.Node, from.Local, p.Namespace, p.Name, p.Node)
			}
			if from.Identity == identity.World || from.Identity == identity.RemoteNode {
				t.Errorf("agent's ipcache gives %s identity %d, want a pod identity", p.IP, from.Identity)
			}
		}
		// Bound at create to nodes with no runner: nothing wired them.
		if eps, err := a.Client().List(ctx); err != nil || len(eps) != 1 {
			t.Errorf("agent endpoints: %d (err %v), want only the local pod's", len(eps), err)
		}
		pods, err := c.Client.CoreV1().Pods(SimNamespace(0)).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Status.Phase != "Running" || p.Status.PodIP == "" || p.Spec.NodeName == c.Nodes[0].Name {
				t.Errorf("pod %s/%s: phase %s, IP %q, node %s", p.Namespace, p.Name, p.Status.Phase, p.Status.PodIP, p.Spec.NodeName)
			}
		}
	})
	// The subtest's cleanup deleted them.
	l, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: SimulatedLabel + "=true"})
	if err != nil || len(l.Items) != 0 {
		t.Errorf("simulated pods after cleanup: %d (err %v), want none", len(l.Items), err)
	}
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 1 {
		t.Errorf("nodes after cleanup: %d (err %v), want only the real one", len(nodes.Items), err)
	}
	waitUntil(t, 30*time.Second, "agent's ipcache back to its size before", func() bool {
		return ipcacheEntries(t, a) == before
	})
}

func ipcacheEntries(t *testing.T, a *Agent) int {
	t.Helper()
	st, err := a.Client().StatusDetail(context.Background())
	if err != nil {
		t.Fatalf("agent status: %v", err)
	}
	for _, m := range st.Maps {
		if m.Map == "ipcache" {
			return m.Entries
		}
	}
	t.Fatalf("agent status names no ipcache map: %+v", st.Maps)
	return 0
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
