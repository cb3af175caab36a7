package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/nodestatus"
	"github.com/palisade-cni/palisade/daemon/policyevents"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// kubectlPalisade runs `kubectl palisade ARGS` through the testbed's real
// kubectl, inside a node's namespace where the kubeconfig's address is
// reachable: kubectl finds palisadectl as the plugin kubectl-palisade on
// $PATH and hands it $KUBECONFIG. It returns the exit code and stdout.
func kubectlPalisade(t *testing.T, node *testbed.Node, kubeconfig, pluginDir string, args ...string) (int, string, string) {
	t.Helper()
	kubectl := filepath.Join(testbed.KubeBinDir(t), "kubectl")
	var stdout, stderr bytes.Buffer
	err := node.NetNS.Do(func() error {
		cmd := exec.Command(kubectl, append([]string{"palisade"}, args...)...)
		cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+pluginDir+":"+os.Getenv("PATH"))
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		return cmd.Run()
	})
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	}
	t.Fatalf("kubectl palisade %s: %v", strings.Join(args, " "), err)
	return 0, "", ""
}

// buildPlugin builds palisadectl as kubectl-palisade into a directory of its own.
func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-palisade"), "./daemon/cmd/palisadectl")
	build.Dir = testbed.ModuleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build palisadectl: %v\n%s", err, out)
	}
	return dir
}

// TestPrivilegedClusterStatus runs two nodes with agents and a third
// without, and reads the cluster's state the way an operator does: kubectl
// palisade status --all-nodes, explain --all-nodes against each agent's
// own verdict, and the Events on a policy the agents do not understand.
func TestPrivilegedClusterStatus(t *testing.T) {
	privileged.Require(t)
	// With strict CIDR validation off, as on clusters before 1.36 and for
	// objects stored then, the API keeps an ipBlock Palisade cannot parse.
	cp := testbed.StartControlPlane(t, "--feature-gates=StrictIPCIDRValidation=false")
	cp.CreateNamespace(t, nodestatus.DefaultNamespace, nil)
	n1, n2 := cp.AddNode(t, "node-1", 1), cp.AddNode(t, "node-2", 2)
	cp.AddNode(t, "node-3", 3) // no agent
	opts := testbed.AgentOptions{Args: []string{"--status-lease-duration=8s", "--namespace=" + nodestatus.DefaultNamespace}}
	a1, a2 := n1.StartAgent(t, opts), n2.StartAgent(t, opts)
	cp.CreateNamespace(t, "prod", nil)
	n1.AddPod(t, testbed.MakePod("prod", "frontend", map[string]string{"role": "frontend"}, testbed.TCP(80)))
	n2.AddPod(t, testbed.MakePod("prod", "backend", map[string]string{"role": "backend"}, testbed.TCP(6379), testbed.TCP(8080)))
	cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
	plugins := buildPlugin(t)
	kc := cp.Kubeconfig()

	t.Run("every node's agent in one command", func(t *testing.T) {
		var sts []nodestatus.NodeStatus
		var code int
		waitFor(t, "both agents' leases ready with their pods and policy", func() bool {
			var out string
			code, out, _ = kubectlPalisade(t, n1, kc, plugins, "status", "--all-nodes", "-o", "json")
			sts = nil
			if json.Unmarshal([]byte(out), &sts) != nil || len(sts) != 3 {
				return false
			}
			return sts[0].Ready && sts[0].Endpoints == 1 && sts[0].Policies == 1 && sts[1].Ready && sts[1].Endpoints == 1
		})
		if code != 3 {
			t.Errorf("exit %d with node-3 running no agent, want 3", code)
		}
		if !sts[2].NoAgent || sts[2].Node != "node-3" {
			t.Errorf("node-3: %+v, want no agent", sts[2])
		}
		for _, s := range sts[:2] {
			if s.Stale || s.Version == "" || s.LastSync.IsZero() || s.Revision == 0 {
				t.Errorf("%s: %+v, want current with a version, a sync and a revision", s.Node, s)
			}
		}
		_, table, _ := kubectlPalisade(t, n2, kc, plugins, "status", "-A")
		for _, w := range []string{"NODE", "node-1", "node-2", "node-3", "no agent", "LAST SYNC"} {
			if !strings.Contains(table, w) {
				t.Errorf("table lacks %q:\n%s", w, table)
			}
		}
		t.Logf("kubectl palisade status --all-nodes\n%s", table)
	})

	t.Run("explain judges both sides as each node's agent does", func(t *testing.T) {
		for _, port := range []string{"6379", "8080"} {
			code, out, errOut := kubectlPalisade(t, n1, kc, plugins, "explain", "--all-nodes", "--from", "prod/frontend", "--to", "prod/backend:"+port+"/TCP", "-o", "json")
			var xs []agentapi.Explanation
			if err := json.Unmarshal([]byte(out), &xs); err != nil || code != 0 || len(xs) != 1 {
				t.Fatalf("explain --all-nodes to %s: exit %d, %v\n%s%s", port, code, err, out, errOut)
			}
			x := xs[0]
			if x.Egress == nil || x.Ingress == nil {
				t.Fatalf("port %s: egress %v ingress %v, want both sides judged", port, x.Egress, x.Ingress)
			}
			// Each agent judges its own side: the cluster-wide answer must agree.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			req := &agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: x.Port, Protocol: "TCP"}
			src, err := a1.Client().Explain(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			dst, err := a2.Client().Explain(ctx, req)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if src[0].Egress == nil || dst[0].Ingress == nil {
				t.Fatalf("the agents did not judge their sides: %+v %+v", src[0], dst[0])
			}
			if x.Egress.Allowed != src[0].Egress.Allowed || x.Ingress.Allowed != dst[0].Ingress.Allowed {
				t.Errorf("port %s: --all-nodes says egress %v ingress %v; node-1's agent says egress %v, node-2's ingress %v",
					port, x.Egress.Allowed, x.Ingress.Allowed, src[0].Egress.Allowed, dst[0].Ingress.Allowed)
			}
			// backend-access admits role=frontend on 6379 only.
			if want := port == "6379"; x.Allowed != want {
				t.Errorf("port %s: allowed %v, want %v", port, x.Allowed, want)
			}
		}
	})

	t.Run("a policy the agents do not understand gets one Event", func(t *testing.T) {
		ctx := context.Background()
		pol := writePolicy(t, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: leading-zeros
spec:
  podSelector:
    matchLabels:
      role: frontend
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 010.0.0.0/8
`)
		cp.ApplyPolicy(t, "prod", pol)
		var evs []corev1.Event
		waitFor(t, "a PolicyNotUnderstood event on prod/leading-zeros", func() bool {
			list, err := cp.Client.CoreV1().Events("prod").List(ctx, metav1.ListOptions{FieldSelector: "reason=" + policyevents.Reason})
			if err != nil {
				return false
			}
			evs = list.Items
			return len(evs) > 0
		})
		// Once both agents have synced the policy, give the slower one a
		// few of its checks for new problems: a second Event would be the
		// duplicate this test is about.
		waitFor(t, "both agents synced the policy", func() bool {
			sts, err := nodestatus.List(ctx, cp.Client, nodestatus.DefaultNamespace, time.Now())
			return err == nil && len(sts) == 3 && sts[0].Policies == 2 && sts[1].Policies == 2
		})
		time.Sleep(6 * time.Second)
		list, err := cp.Client.CoreV1().Events("prod").List(ctx, metav1.ListOptions{FieldSelector: "reason=" + policyevents.Reason})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 {
			t.Errorf("%d events, want 1 (two agents, deduplicated)", len(list.Items))
		}
		ev := list.Items[0]
		if ev.InvolvedObject.Kind != "NetworkPolicy" || ev.InvolvedObject.Name != "leading-zeros" || ev.Type != corev1.EventTypeWarning ||
			!strings.Contains(ev.Message, "010.0.0.0/8") {
			t.Errorf("event: %+v", ev)
		}
		t.Logf("event: %s %s: %s", ev.Type, ev.Reason, ev.Message)
	})

	t.Run("a stopped agent's lease goes stale", func(t *testing.T) {
		if err := a2.Stop(); err != nil {
			t.Fatal(err)
		}
		// A clean stop writes its last word before the process exits: read
		// at once, the Lease already says so, long before it goes stale.
		sts, err := nodestatus.List(context.Background(), cp.Client, nodestatus.DefaultNamespace, time.Now())
		if err != nil || len(sts) != 3 {
			t.Fatalf("leases right after node-2's agent stopped: %d, %v", len(sts), err)
		}
		if s := sts[1]; s.Ready || !strings.Contains(s.Reason, "agent stopped") {
			t.Errorf("node-2 right after its agent stopped: ready %v, reason %q; want not ready, \"agent stopped\"", s.Ready, s.Reason)
		}
		var out string
		var code int
		// The lease holds 8s (--status-lease-duration) after its last renewal.
		waitFor(t, "node-2's lease stale", func() bool {
			code, out, _ = kubectlPalisade(t, n1, kc, plugins, "status", "--all-nodes")
			return strings.Contains(out, "stale: not renewed for")
		})
		if code != 3 {
			t.Errorf("exit %d, want 3", code)
		}
		t.Logf("after stopping node-2's agent:\n%s", out)
	})
}
