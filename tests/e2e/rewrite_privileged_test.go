package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestPrivilegedConflistRewrite is Flannel's pod restarting on a node where
// Palisade runs: kube-flannel's init container copies its conflist over the
// chained one, without palisade, and pods that start before install-cni puts
// palisade back run unprotected. The DaemonSet's cni-watch container must
// re-chain at once and the agent must adopt what started in between, so
// that afterwards no pod runs unmanaged and a default deny holds for all.
//
// First the window is forced open (cni-watch stopped, one pod started
// through Flannel's own file), so the adoption half is always exercised;
// then the file is rewritten again and again while pods start.
func TestPrivilegedConflistRewrite(t *testing.T) {
	privileged.Require(t)
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 1, WithoutPalisade: true})
	n := c.Nodes[0]
	root := testbed.ModuleRoot(t)
	flannel := readFile(t, filepath.Join(root, "conf", "10-flannel.conflist"))
	installed := readFile(t, filepath.Join(root, "daemon", "install", "testdata", "10-flannel.conflist.want"))
	path := filepath.Join(n.CNIConfDir(), "10-flannel.conflist")
	// What kube-flannel's install-cni does: cp -f, in place.
	flannelRestarts := func() {
		if err := os.WriteFile(path, flannel, 0o644); err != nil {
			t.Error(err)
		}
	}

	ds := daemonSet(t, "palisade.yaml")
	bin, plugin := testbed.Binaries(t).Agent(t), testbed.Binaries(t).Plugin(t)
	dirs := map[string]string{"--cni-bin-dir": n.CNIBinDir(), "--cni-conf-dir": n.CNIConfDir()}
	install := container(t, ds.Spec.Template.Spec.InitContainers, "install-cni")
	runToEnd(t, n, "install-cni", append(dsCommand(t, install, bin, dirs), "--plugin-src="+plugin))
	agent := n.StartAgent(t, testbed.AgentOptions{Args: []string{"--cni-cache-dir=" + n.CNICacheDir()}})
	watch := testbed.NewProcess(t, n.NetNS, "cni-watch",
		append(dsCommand(t, container(t, ds.Spec.Template.Spec.Containers, "cni-watch"), bin, dirs), "--plugin-src="+plugin)...)
	chained := func() bool { return bytes.Equal(readFile(t, path), installed) }
	startWatch := func() {
		if err := watch.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "cni-watch to chain palisade", chained)
	}
	startWatch()

	c.CreateNamespace(t, "prod", nil)
	c.CreateNamespace(t, "lab", nil)
	client := c.RunPod(t, testbed.MakePod("lab", "client", nil))
	var pods []*testbed.Pod
	run := func(name string) *testbed.Pod {
		p := c.RunPod(t, testbed.MakePod("prod", name, map[string]string{"app": name}, testbed.TCP(80)))
		pods = append(pods, p)
		return p
	}

	// The window held open: this pod runs without palisade.
	if err := watch.Stop(); err != nil {
		t.Fatal(err)
	}
	flannelRestarts()
	if p := run("in-window"); !bytes.Equal(p.Conflist(), flannel) {
		t.Fatalf("pod %s ran\n%s\nwant Flannel's own file", p, p.Conflist())
	}
	startWatch()

	// The race as it happens: rewrites while pods start.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
				flannelRestarts()
			}
		}
	})
	for i := range 8 {
		run(fmt.Sprintf("racing-%d", i))
	}
	close(stop)
	wg.Wait()
	waitFor(t, "cni-watch to re-chain after the last rewrite", chained)

	waitFor(t, "every pod to have an endpoint and palisade_unmanaged_pods to be 0", func() bool {
		return managedAll(t, agent, append(pods, client)) && unmanaged(t, agent) == 0
	})
	c.ApplyPolicy(t, "prod", filepath.Join(root, "conf", "policies", "default-deny-ingress.yaml"))
	var exps []expect
	for _, p := range pods {
		exps = append(exps, expect{client, p, 80, corev1.ProtocolTCP, testbed.TimedOut})
	}
	eventually(t, exps...)
	unchained := 0
	for _, p := range pods {
		if bytes.Equal(p.Conflist(), flannel) {
			unchained++
		}
	}
	t.Logf("%d of %d pods started through Flannel's file without palisade; all adopted", unchained, len(pods))
}

// managedAll says whether the agent holds an endpoint with each pod's IP.
func managedAll(t *testing.T, a *testbed.Agent, pods []*testbed.Pod) bool {
	t.Helper()
	eps, err := a.Client().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := map[netip.Addr]bool{}
	for _, ep := range eps {
		for _, ip := range ep.IPs {
			held[ip] = true
		}
	}
	for _, p := range pods {
		if !held[p.IP()] {
			return false
		}
	}
	return true
}

// unmanaged is the agent's palisade_unmanaged_pods.
func unmanaged(t *testing.T, a *testbed.Agent) float64 {
	t.Helper()
	v, err := a.Metric("palisade_unmanaged_pods", nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
