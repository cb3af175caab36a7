package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// settle bounds how long a policy change may take to reach the datapath.
const settle = 15 * time.Second

// oneNode is a control plane, one node running palisade-agent, three pods
// in namespace prod: backend (TCP/UDP 6379, TCP 8080), frontend and other
// (TCP/UDP 80 each), and one pod, outsider (TCP/UDP 80), in namespace lab.
type oneNode struct {
	cp                                 *testbed.ControlPlane
	node                               *testbed.Node
	agent                              *testbed.Agent
	backend, frontend, other, outsider *testbed.Pod
}

func newOneNode(t *testing.T, attachMode string) *oneNode {
	return setUpOneNode(t, testbed.AgentOptions{AttachMode: attachMode})
}

// newOneNodeArgs is newOneNode with extra agent flags.
func newOneNodeArgs(t *testing.T, args ...string) *oneNode {
	return setUpOneNode(t, testbed.AgentOptions{Args: args})
}

func setUpOneNode(t *testing.T, opts testbed.AgentOptions) *oneNode {
	return setUpOneNodeWith(t, opts, nil)
}

// setUpOneNodeWith is setUpOneNode with prepare run on the control plane
// before the agent starts.
func setUpOneNodeWith(t *testing.T, opts testbed.AgentOptions, prepare func(*testbed.ControlPlane)) *oneNode {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	if prepare != nil {
		prepare(cp)
	}
	node := cp.AddNode(t, "node-1", 1)
	env := &oneNode{cp: cp, node: node, agent: node.StartAgent(t, opts)}
	cp.CreateNamespace(t, "prod", map[string]string{"team": "prod"})
	env.backend = node.AddPod(t, testbed.MakePod("prod", "backend", map[string]string{"role": "backend"},
		testbed.TCP(6379), testbed.UDP(6379), testbed.TCP(8080)))
	env.frontend = node.AddPod(t, testbed.MakePod("prod", "frontend", map[string]string{"role": "frontend"},
		testbed.TCP(80), testbed.UDP(80)))
	env.other = node.AddPod(t, testbed.MakePod("prod", "other", map[string]string{"role": "other"},
		testbed.TCP(80), testbed.UDP(80)))
	cp.CreateNamespace(t, "lab", nil)
	env.outsider = node.AddPod(t, testbed.MakePod("lab", "outsider", map[string]string{"role": "frontend"},
		testbed.TCP(80), testbed.UDP(80)))
	return env
}

type expect struct {
	from  *testbed.Pod
	to    *testbed.Pod
	port  int
	proto corev1.Protocol
	want  testbed.Outcome
}

// eventually probes until every expectation holds or settle passes; policy
// changes are asynchronous, so the test polls instead of sleeping.
func eventually(t *testing.T, exps ...expect) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		var wrong []string
		specs := make([]testbed.ProbeSpec, len(exps))
		for i, e := range exps {
			specs[i] = testbed.ProbeSpec{From: e.from, To: e.to.IP(), Port: e.port, Protocol: e.proto}
		}
		got := testbed.ProbeMatrix(context.Background(), specs)
		for i, e := range exps {
			if got[i].Outcome != e.want {
				wrong = append(wrong, fmt.Sprintf("%s -> %s %s/%d: %s, want %s", e.from, e.to, e.proto, e.port, got[i], e.want))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s:\n%s", settle, strings.Join(wrong, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPrivilegedOneNode runs the scenarios once per hook: TCX, and the
// legacy tc path that kernels before 6.6 use.
func TestPrivilegedOneNode(t *testing.T) {
	for _, mode := range []string{"tcx", "tc"} {
		t.Run(mode, func(t *testing.T) { oneNodeScenarios(t, newOneNode(t, mode)) })
	}
}

func oneNodeScenarios(t *testing.T, env *oneNode) {
	const (
		tcp = corev1.ProtocolTCP
		udp = corev1.ProtocolUDP
		ok  = testbed.Connected
		no  = testbed.TimedOut
	)
	policy := func(name string) string {
		return filepath.Join(testbed.ModuleRoot(t), "conf", "policies", name)
	}

	t.Run("without policy every pod reaches every pod", func(t *testing.T) {
		var exps []expect
		for _, from := range []*testbed.Pod{env.backend, env.frontend, env.other} {
			for _, to := range []*testbed.Pod{env.frontend, env.other} {
				if from != to {
					exps = append(exps, expect{from, to, 80, tcp, ok}, expect{from, to, 80, udp, ok})
				}
			}
		}
		exps = append(exps, expect{env.frontend, env.backend, 6379, tcp, ok}, expect{env.other, env.backend, 6379, udp, ok})
		eventually(t, exps...)
	})

	t.Run("default deny for ingress stops new connections but not the pod's own", func(t *testing.T) {
		name := env.cp.ApplyPolicy(t, "prod", policy("default-deny-ingress.yaml"))
		eventually(t,
			expect{env.frontend, env.backend, 6379, tcp, no},
			expect{env.frontend, env.backend, 6379, udp, no},
			expect{env.other, env.frontend, 80, tcp, no},
			expect{env.outsider, env.other, 80, udp, no},
			// What the isolated pods open works, and the replies come back.
			expect{env.backend, env.outsider, 80, tcp, ok},
			expect{env.backend, env.outsider, 80, udp, ok},
		)
		env.cp.DeletePolicy(t, "prod", name)
		eventually(t, expect{env.frontend, env.backend, 6379, tcp, ok}, expect{env.backend, env.frontend, 80, udp, ok})
	})

	t.Run("backend-access admits only frontends on TCP 6379", func(t *testing.T) {
		name := env.cp.ApplyPolicy(t, "prod", policy("backend-access.yaml"))
		eventually(t,
			expect{env.frontend, env.backend, 6379, tcp, ok},
			expect{env.frontend, env.backend, 8080, tcp, no},
			expect{env.frontend, env.backend, 6379, udp, no},
			expect{env.other, env.backend, 6379, tcp, no},
			// backend is isolated for ingress only: what it opens still works.
			expect{env.backend, env.other, 80, tcp, ok},
			expect{env.backend, env.other, 80, udp, ok},
			// A frontend of another namespace is not the policy's frontend.
			expect{env.outsider, env.backend, 6379, tcp, no},
			// Pods the policy does not select are untouched.
			expect{env.other, env.frontend, 80, tcp, ok},
		)

		t.Run("a label change moves a pod into and out of the allow", func(t *testing.T) {
			env.cp.SetPodLabels(t, env.other, map[string]string{"role": "frontend"})
			eventually(t, expect{env.other, env.backend, 6379, tcp, ok})
			env.cp.SetPodLabels(t, env.other, map[string]string{"role": "other"})
			eventually(t, expect{env.other, env.backend, 6379, tcp, no})
		})

		t.Run("deleting the policy opens traffic again", func(t *testing.T) {
			env.cp.DeletePolicy(t, "prod", name)
			eventually(t, expect{env.other, env.backend, 8080, tcp, ok}, expect{env.frontend, env.backend, 6379, udp, ok})
		})
	})
}

func TestPrivilegedEndpointLifecycle(t *testing.T) {
	env := newOneNode(t, "")
	ctx := context.Background()
	client := env.agent.Client()

	t.Run("the health endpoints answer inside the node", func(t *testing.T) {
		for path, want := range map[string]int{"/healthz": http.StatusOK, "/readyz": http.StatusOK, "/nothing": http.StatusNotFound} {
			if got := healthStatus(t, env.node, path); got != want {
				t.Errorf("GET %s: %d, want %d", path, got, want)
			}
		}
	})

	t.Run("DEL removes the endpoint and its map entries, and a second DEL succeeds", func(t *testing.T) {
		p := env.node.PreparePod(t, testbed.MakePod("prod", "short-lived", nil, testbed.TCP(80)))
		if err := p.CNIAdd(ctx); err != nil {
			t.Fatal(err)
		}
		id := agentapi.EndpointID(p.ContainerID, testbed.PodIfName)
		_, ifindex := p.HostVeth()
		if _, err := client.Get(ctx, id); err != nil {
			t.Fatalf("endpoint after ADD: %v", err)
		}
		if !pinnedHas(t, env.agent, "pal_ep", uint32(ifindex)) {
			t.Fatal("no endpoint map entry after ADD")
		}
		if !pinnedHas(t, env.agent, "pal_ipcache", bpf.NewIPCacheKey(netip.PrefixFrom(p.IP(), 32))) {
			t.Fatal("no ipcache entry after ADD")
		}
		if err := p.CNIDel(ctx); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if _, err := client.Get(ctx, id); !errors.Is(err, agentapi.ErrEndpointNotFound) {
			t.Errorf("endpoint after DEL: %v, want not found", err)
		}
		if pinnedHas(t, env.agent, "pal_ep", uint32(ifindex)) {
			t.Error("endpoint map entry survived DEL")
		}
		waitFor(t, "the pod's ipcache entry to go", func() bool {
			return !pinnedHas(t, env.agent, "pal_ipcache", bpf.NewIPCacheKey(netip.PrefixFrom(p.IP(), 32)))
		})
		if err := p.CNIDel(ctx); err != nil {
			t.Errorf("second DEL: %v", err)
		}
	})

	t.Run("CHECK passes after ADD and fails once the programs are detached", func(t *testing.T) {
		p := env.node.AddPod(t, testbed.MakePod("prod", "checked", nil, testbed.TCP(80)))
		if err := p.CNICheck(ctx); err != nil {
			t.Fatalf("CHECK after ADD: %v", err)
		}
		_, ifindex := p.HostVeth()
		if err := bpf.Detach(env.agent.BPFRoot(), ifindex, agentapi.EndpointID(p.ContainerID, testbed.PodIfName)); err != nil {
			t.Fatal(err)
		}
		err := p.CNICheck(ctx)
		if err == nil || !strings.Contains(err.Error(), "not attached") {
			t.Errorf("CHECK after detach: %v, want an error saying the programs are not attached", err)
		}
	})

	t.Run("a stopped agent leaves the policy enforced and ADD fails naming the socket", func(t *testing.T) {
		env.cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
		enforced := []expect{
			{env.frontend, env.backend, 6379, corev1.ProtocolTCP, testbed.Connected},
			{env.other, env.backend, 6379, corev1.ProtocolTCP, testbed.TimedOut},
		}
		eventually(t, enforced...)
		if err := env.agent.Stop(); err != nil {
			t.Fatal(err)
		}
		eventually(t, enforced...)
		p := env.node.PreparePod(t, testbed.MakePod("prod", "early", nil, testbed.TCP(80)))
		err := p.CNIAdd(ctx)
		if err == nil || !strings.Contains(err.Error(), env.agent.Socket()) {
			t.Errorf("ADD with the agent stopped: %v, want an error naming %s", err, env.agent.Socket())
		}
		if err := env.agent.Start(); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := env.agent.WaitReady(wctx); err != nil {
			t.Fatal(err)
		}
		// The restarted agent still knows and protects the pods it had.
		if _, err := client.Get(ctx, agentapi.EndpointID(env.backend.ContainerID, testbed.PodIfName)); err != nil {
			t.Errorf("backend after restart: %v", err)
		}
		eventually(t, enforced...)
	})
}

// pinnedHas reports whether the agent's pinned map name holds key.
func pinnedHas(t *testing.T, a *testbed.Agent, name string, key any) bool {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.BPFRoot(), "maps", name), nil)
	if err != nil {
		t.Fatalf("open pinned map %s: %v", name, err)
	}
	defer m.Close()
	val := make([]byte, m.ValueSize())
	err = m.Lookup(key, &val)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("look up %s: %v", name, err)
	}
	return err == nil
}

// healthStatus GETs path from the agent's health address inside the node.
func healthStatus(t *testing.T, node *testbed.Node, path string) int {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: node.NetNS.DialContext}}
	resp, err := hc.Get("http://127.0.0.1:9879" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
