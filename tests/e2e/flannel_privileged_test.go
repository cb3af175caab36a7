package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestPrivilegedFlannelInstallUninstall is the whole life of Palisade on a
// Flannel cluster, with each backend: two nodes running flanneld with
// kube-flannel's conflist in place; the DaemonSet's install-cni command
// chains palisade into it; pods start through the installed file; a default
// deny cuts a probe that connected before, while the pod's own node still
// reaches it and another node's host, arriving from its flannel.1 address
// (VXLAN) or its InternalIP (host-gw), is judged as that node; the uninstall
// manifest's command gives Flannel's bytes back.
func TestPrivilegedFlannelInstallUninstall(t *testing.T) {
	privileged.Require(t)
	for _, network := range []testbed.PodNetwork{testbed.FlannelVXLAN, testbed.FlannelHostGW} {
		t.Run(string(network), func(t *testing.T) { flannelInstallUninstall(t, network) })
	}
}

func flannelInstallUninstall(t *testing.T, network testbed.PodNetwork) {
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, Network: network, WithoutPalisade: true})
	root := testbed.ModuleRoot(t)
	flannel := readFile(t, filepath.Join(root, "conf", "10-flannel.conflist"))
	installed := readFile(t, filepath.Join(root, "daemon", "install", "testdata", "10-flannel.conflist.want"))
	bin := testbed.Binaries(t).Agent(t)
	plugin := testbed.Binaries(t).Plugin(t)
	conflist := func(n *testbed.Node) []byte { return readFile(t, filepath.Join(n.CNIConfDir(), "10-flannel.conflist")) }

	// Flannel's file, and pods wired through it, before Palisade.
	c.CreateNamespace(t, "prod", nil)
	before := c.RunPod(t, onNode(testbed.MakePod("prod", "before", map[string]string{"app": "before"}, testbed.TCP(80)), "node-1"))
	for _, n := range c.Nodes {
		if got := conflist(n); !bytes.Equal(got, flannel) {
			t.Fatalf("node %s starts with\n%s\nwant kube-flannel's file", n.Name, got)
		}
	}
	if got := before.Conflist(); !bytes.Equal(got, flannel) {
		t.Errorf("pod %s ran\n%s\nwant kube-flannel's file", before, got)
	}

	// The DaemonSet: install-cni, then the agent, on every node.
	ds := daemonSet(t, "palisade.yaml")
	install := container(t, ds.Spec.Template.Spec.InitContainers, "install-cni")
	agents := make([]*testbed.Agent, len(c.Nodes))
	for i, n := range c.Nodes {
		argv := append(dsCommand(t, install, bin, map[string]string{"--cni-bin-dir": n.CNIBinDir(), "--cni-conf-dir": n.CNIConfDir()}), "--plugin-src="+plugin)
		runToEnd(t, n, "install-cni-"+n.Name, argv)
		if got := conflist(n); !bytes.Equal(got, installed) {
			t.Fatalf("node %s after install-cni:\n%s\nwant\n%s", n.Name, got, installed)
		}
		agents[i] = n.StartAgent(t, testbed.AgentOptions{Args: []string{"--cni-cache-dir=" + n.CNICacheDir()}})
	}

	server := c.RunPod(t, onNode(testbed.MakePod("prod", "server", map[string]string{"app": "server"}, testbed.TCP(80)), "node-1"))
	client := c.RunPod(t, onNode(testbed.MakePod("prod", "client", map[string]string{"app": "client"}), "node-2"))
	for _, p := range []*testbed.Pod{server, client} {
		if got := p.Conflist(); !bytes.Equal(got, installed) {
			t.Errorf("pod %s ran\n%s\nwant the installed file", p, got)
		}
	}
	local, remote := c.Nodes[0], c.Nodes[1]
	eventually(t, expect{client, server, 80, corev1.ProtocolTCP, testbed.Connected})
	nodeProbes(t, server, map[*testbed.Node]testbed.Outcome{local: testbed.Connected, remote: testbed.Connected})

	c.ApplyPolicy(t, "prod", filepath.Join(root, "conf", "policies", "default-deny-ingress.yaml"))
	eventually(t, expect{client, server, 80, corev1.ProtocolTCP, testbed.TimedOut})
	// The own node is always allowed; another node is not, and it is
	// known as that node although it sends from flannel.1 (10.244.2.0).
	nodeProbes(t, server, map[*testbed.Node]testbed.Outcome{local: testbed.Connected, remote: testbed.TimedOut})
	// The agent gives flannel.1's address the identity of the node's
	// InternalIP, and the datapath dropped the probe under it: sent from
	// flannel.1 over VXLAN, from the InternalIP with host-gw.
	vtep := remote.PodCIDR.Addr().String()
	asVTEP, asNode := explainFrom(t, agents[0], vtep), explainFrom(t, agents[0], remote.IP.String())
	if asVTEP.Identity != asNode.Identity || asVTEP.Identity == identity.World || asVTEP.Description != asNode.Description {
		t.Errorf("%s is %+v, %s is %+v: want the same node identity", vtep, asVTEP, remote.IP, asNode)
	}
	src := vtep
	if network == testbed.FlannelHostGW {
		src = remote.IP.String()
	}
	var seen []agentapi.Flow
	deadline := time.Now().Add(settle)
	for !slices.ContainsFunc(seen, func(f agentapi.Flow) bool {
		return f.Verdict == agentapi.FlowDropped && f.Source.IP == src && f.Source.Identity == asNode.Identity
	}) {
		if time.Now().After(deadline) {
			t.Fatalf("no drop of %s as node %s (identity %d) in server's flows:\n%+v", src, remote.Name, asNode.Identity, seen)
		}
		time.Sleep(100 * time.Millisecond)
		seen = flows(t, agents[0], "prod/server")
	}

	// Uninstall, as conf/kubernetes/uninstall.yaml runs it, once the
	// agents are gone.
	un := container(t, daemonSet(t, "uninstall.yaml").Spec.Template.Spec.Containers, "uninstall")
	for i, n := range c.Nodes {
		if err := agents[i].Stop(); err != nil {
			t.Fatal(err)
		}
		argv := dsCommand(t, un, bin, map[string]string{
			"--cni-bin-dir": n.CNIBinDir(), "--cni-conf-dir": n.CNIConfDir(),
			"--bpf-root": agents[i].BPFRoot(), "--state-dir": agents[i].StateDir(),
		})
		argv = slices.DeleteFunc(argv, func(a string) bool { return a == "--stay" })
		runToEnd(t, n, "uninstall-"+n.Name, argv)
		if got := conflist(n); !bytes.Equal(got, flannel) {
			t.Errorf("node %s after uninstall:\n%s\nwant kube-flannel's file byte for byte", n.Name, got)
		}
		if _, err := os.Stat(filepath.Join(n.CNIBinDir(), "palisade")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("node %s: palisade binary after uninstall: %v", n.Name, err)
		}
	}
	eventually(t, expect{client, server, 80, corev1.ProtocolTCP, testbed.Connected})
}

// runToEnd runs argv in the node's namespace and fails the test unless it
// exits 0.
func runToEnd(t *testing.T, n *testbed.Node, name string, argv []string) {
	t.Helper()
	p := testbed.NewProcess(t, n.NetNS, name, argv...)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	<-p.Exited()
	if err := p.ExitErr(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, p.LogTail(20))
	}
}

// nodeProbes probes to's port 80 from each node's host network until every
// outcome is the wanted one.
func nodeProbes(t *testing.T, to *testbed.Pod, want map[*testbed.Node]testbed.Outcome) {
	t.Helper()
	for n, outcome := range want {
		var last testbed.Verdict
		deadline := time.Now().Add(settle)
		for {
			if last = n.Probe(context.Background(), to.IP(), 80, corev1.ProtocolTCP); last.Outcome == outcome {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %s -> %s: %s, want %s", n.Name, to, last, outcome)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// explainFrom is how the agent sees address from, as the source of a flow
// to the server.
func explainFrom(t *testing.T, a *testbed.Agent, from string) agentapi.Peer {
	t.Helper()
	ex, err := a.Client().Explain(context.Background(), &agentapi.ExplainRequest{From: from, To: "prod/server", Port: 80})
	if err != nil || len(ex) == 0 {
		t.Fatalf("explain from %s: %v (%d answers)", from, err, len(ex))
	}
	return ex[0].From
}

// flows are the recent flows the agent reports for pod.
func flows(t *testing.T, a *testbed.Agent, pod string) []agentapi.Flow {
	t.Helper()
	var out []agentapi.Flow
	err := a.Client().Flows(context.Background(), agentapi.FlowFilter{Pod: pod}, func(f *agentapi.Flow) error {
		out = append(out, *f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
