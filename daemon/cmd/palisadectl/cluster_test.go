package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/palisade-cni/palisade/daemon/nodestatus"
)

func runWithKube(client kubernetes.Interface, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	c := &cli{out: &out, errOut: &errb, newKube: func() (kubernetes.Interface, error) { return client, nil }}
	code := c.run(context.Background(), args)
	return code, out.String(), errb.String()
}

func TestStatusAllNodes(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}},
	)
	publish := func(node string, s nodestatus.Summary) {
		p := &nodestatus.Publisher{Client: client, Namespace: "palisade-system", Node: node, Log: log}
		if err := p.Publish(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	publish("node-1", nodestatus.Summary{Version: "v1.2.0", Ready: true, Endpoints: 12, Policies: 3, Revision: 9, LastSync: time.Now()})

	// node-2 has no agent: not every node is ready.
	code, out, errOut := runWithKube(client, "status", "--all-nodes")
	if code != exitNotReady || !strings.Contains(errOut, "node-2") {
		t.Errorf("with a node without agent: exit %d, stderr %q; want %d naming node-2", code, errOut, exitNotReady)
	}
	for _, s := range []string{"NODE", "node-1", "yes", "v1.2.0", "12", "node-2", "no agent"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}

	publish("node-2", nodestatus.Summary{Version: "v1.2.0", Ready: true, Endpoints: 1, Unmanaged: 2})
	code, out, _ = runWithKube(client, "-o", "wide", "status", "-A")
	if code != exitOK || !strings.Contains(out, "REVISION") || !strings.Contains(out, "RENEWED") {
		t.Errorf("all ready, -o wide: exit %d, output:\n%s", code, out)
	}
	code, out, _ = runWithKube(client, "status", "--all-nodes", "-o", "json")
	var sts []nodestatus.NodeStatus
	if err := json.Unmarshal([]byte(out), &sts); err != nil || code != exitOK {
		t.Fatalf("-o json: exit %d, %v:\n%s", code, err, out)
	}
	if len(sts) != 2 || sts[1].Unmanaged != 2 || !sts[0].Healthy() {
		t.Errorf("-o json: %+v", sts)
	}
	code, out, _ = runWithKube(client, "status", "--all-nodes", "-o", "yaml")
	if code != exitOK || !strings.Contains(out, "unmanagedPods: 2") {
		t.Errorf("-o yaml: exit %d:\n%s", code, out)
	}

	publish("node-2", nodestatus.Summary{Version: "v1.2.0", Ready: false, Reason: "waiting for the Kubernetes caches to sync"})
	code, out, _ = runWithKube(client, "status", "--all-nodes")
	if code != exitNotReady || !strings.Contains(out, "no: waiting for the Kubernetes caches to sync") {
		t.Errorf("node-2 not ready: exit %d:\n%s", code, out)
	}
	// Another namespace holds no agent.
	code, _, errOut = runWithKube(fake.NewClientset(), "status", "--all-nodes", "--agent-namespace", "kube-system")
	if code != exitNotReady || !strings.Contains(errOut, "kube-system") {
		t.Errorf("no leases: exit %d, stderr %q", code, errOut)
	}
}

func TestStatusAllNodesStale(t *testing.T) {
	client := fake.NewClientset()
	p := &nodestatus.Publisher{Client: client, Namespace: "palisade-system", Node: "node-1", Duration: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := p.Publish(context.Background(), nodestatus.Summary{Ready: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the Lease's whole duration: not a timing assertion
	code, out, _ := runWithKube(client, "status", "--all-nodes")
	if code != exitNotReady || !strings.Contains(out, "stale: not renewed for") {
		t.Errorf("expired lease: exit %d:\n%s", code, out)
	}
}
