package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// onNode pins a pod to a node, as a DaemonSet or a test would.
func onNode(p *corev1.Pod, node string) *corev1.Pod {
	p.Spec.NodeName = node
	return p
}

// ingressFrom isolates pods labelled role=target for ingress, admitting
// pods labelled role=from on TCP port only.
func ingressFrom(namespace, name, target, from string, port int32) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(port)
	tcp := corev1.ProtocolTCP
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": target}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": from}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
}

// egressOnlyTo isolates pods labelled role=source for egress, admitting
// pods labelled role=to on TCP port only.
func egressOnlyTo(namespace, name, source, to string, port int32) *networkingv1.NetworkPolicy {
	pol := egressTo(name, to, port)
	pol.Namespace = namespace
	pol.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"role": source}}
	return pol
}

// TestPrivilegedMultiNodeCrossNodeLikeSameNode runs one policy set on three
// nodes and checks that every verdict a pod gets from a peer on its own node
// is the verdict it gets from the same kind of peer on another node, for
// ingress and for egress.
func TestPrivilegedMultiNodeCrossNodeLikeSameNode(t *testing.T) {
	privileged.Require(t)
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 3})
	c.CreateNamespace(t, "prod", nil)
	pod := func(name, role, node string) *testbed.Pod {
		return c.RunPod(t, onNode(testbed.MakePod("prod", name, map[string]string{"role": role}, testbed.TCP(80), testbed.TCP(27017), testbed.UDP(53)), node))
	}
	db := pod("db", "db", "node-1")
	apiNear, apiFar := pod("api-near", "api", "node-1"), pod("api-far", "api", "node-2")
	otherNear, otherFar := pod("other-near", "other", "node-1"), pod("other-far", "other", "node-3")
	webNear, webFar := pod("web-near", "web", "node-2"), pod("web-far", "web", "node-3")

	const (
		tcp = corev1.ProtocolTCP
		udp = corev1.ProtocolUDP
		ok  = testbed.Connected
		no  = testbed.TimedOut
	)
	// Each pair is the same question asked from this node and from another.
	pairs := func(want func(near bool) []expect) []expect {
		return append(want(true), want(false)...)
	}
	t.Run("without policy every pair connects", func(t *testing.T) {
		eventually(t, pairs(func(near bool) []expect {
			api, other := apiFar, otherFar
			if near {
				api, other = apiNear, otherNear
			}
			return []expect{{api, db, 27017, tcp, ok}, {other, db, 27017, tcp, ok}, {other, db, 53, udp, ok}}
		})...)
	})
	t.Run("ingress to db admits api pods on 27017 from any node, nothing else from any node", func(t *testing.T) {
		createPolicy(t, c.ControlPlane, ingressFrom("prod", "db-ingress", "db", "api", 27017))
		eventually(t, pairs(func(near bool) []expect {
			api, other := apiFar, otherFar
			if near {
				api, other = apiNear, otherNear
			}
			return []expect{
				{api, db, 27017, tcp, ok},
				{api, db, 80, tcp, no},
				{api, db, 53, udp, no},
				{other, db, 27017, tcp, no},
				{other, db, 53, udp, no},
			}
		})...)
	})
	t.Run("egress of api admits web on 80 on any node, nothing else on any node", func(t *testing.T) {
		createPolicy(t, c.ControlPlane, egressOnlyTo("prod", "api-egress", "api", "web", 80))
		// api-near is on node-1: web-near (node-2) and web-far (node-3)
		// are both remote to it; api-far is on node-2 with web-near.
		eventually(t,
			expect{apiFar, webNear, 80, tcp, ok}, // same node
			expect{apiFar, webFar, 80, tcp, ok},  // other node
			expect{apiNear, webFar, 80, tcp, ok},
			expect{apiFar, webNear, 27017, tcp, no},
			expect{apiFar, webFar, 27017, tcp, no},
			expect{apiFar, webNear, 53, udp, no},
			expect{apiFar, webFar, 53, udp, no},
			expect{apiFar, otherFar, 80, tcp, no},
			expect{apiNear, otherNear, 80, tcp, no},
			// Replies to what others open to web and other still flow.
			expect{webNear, webFar, 80, tcp, ok},
		)
	})
}

// TestPrivilegedMultiNodeServiceTraffic sends to a Service ClusterIP
// through the real kube-proxy of each mode, from the backend's node and
// from another: the backend's ingress policy and the client's egress policy
// apply to the backend pod and its target port, whatever address the
// client dialled.
func TestPrivilegedMultiNodeServiceTraffic(t *testing.T) {
	privileged.Require(t)
	for _, mode := range []testbed.ProxyMode{testbed.ProxyIPTables, testbed.ProxyNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, ProxyMode: mode})
			c.CreateNamespace(t, "prod", nil)
			run := func(name, role, node string, ports ...corev1.ContainerPort) *testbed.Pod {
				return c.RunPod(t, onNode(testbed.MakePod("prod", name, map[string]string{"role": role}, ports...), node))
			}
			run("backend", "backend", "node-2", testbed.TCP(8080), testbed.UDP(5353))
			frontends := []*testbed.Pod{run("frontend-near", "frontend", "node-2"), run("frontend-far", "frontend", "node-1")}
			others := []*testbed.Pod{run("other-near", "other", "node-2"), run("other-far", "other", "node-1")}
			vip := c.CreateService(t, "prod", "backend", map[string]string{"role": "backend"},
				testbed.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, Target: intstr.FromInt32(8080)},
				testbed.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, Target: intstr.FromInt32(5353)})
			ctx, cancel := context.WithTimeout(context.Background(), settle)
			defer cancel()
			if err := c.WaitEndpoints(ctx, "prod", "backend", 1); err != nil {
				t.Fatal(err)
			}
			probeAll := func(t *testing.T, from []*testbed.Pod, port int, proto corev1.Protocol, want testbed.Outcome) {
				t.Helper()
				for _, f := range from {
					probeUntil(t, f, vip, port, proto, want, "backend")
				}
			}

			t.Run("without policy the ClusterIP reaches the backend from both nodes", func(t *testing.T) {
				probeAll(t, append(frontends, others...), 80, corev1.ProtocolTCP, testbed.Connected)
				probeAll(t, append(frontends, others...), 53, corev1.ProtocolUDP, testbed.Connected)
			})
			t.Run("the backend's ingress policy applies to connections through the ClusterIP", func(t *testing.T) {
				createPolicy(t, c.ControlPlane, ingressFrom("prod", "backend-ingress", "backend", "frontend", 8080))
				probeAll(t, others, 80, corev1.ProtocolTCP, testbed.TimedOut)
				probeAll(t, append(frontends, others...), 53, corev1.ProtocolUDP, testbed.TimedOut)
				probeAll(t, frontends, 80, corev1.ProtocolTCP, testbed.Connected)
			})
			t.Run("an ingress rule naming the Service port rather than the target port admits nothing", func(t *testing.T) {
				createPolicy(t, c.ControlPlane, ingressFrom("prod", "backend-ingress-80", "backend", "frontend", 80))
				probeAll(t, frontends, 80, corev1.ProtocolTCP, testbed.TimedOut)
			})
			t.Run("egress", func(t *testing.T) {
				t.Run("a rule for the backend pod and target port admits the ClusterIP", func(t *testing.T) {
					createPolicy(t, c.ControlPlane, egressOnlyTo("prod", "frontend-egress", "frontend", "backend", 8080))
					probeAll(t, frontends, 80, corev1.ProtocolTCP, testbed.Connected)
					probeAll(t, frontends, 53, corev1.ProtocolUDP, testbed.TimedOut)
				})
				t.Run("a rule for the Service port does not admit it", func(t *testing.T) {
					createPolicy(t, c.ControlPlane, egressOnlyTo("prod", "other-egress-80", "other", "backend", 80))
					probeAll(t, others, 80, corev1.ProtocolTCP, testbed.TimedOut)
				})
			})
		})
	}
}

// TestPrivilegedMultiNodePodBornUnderPolicy creates pods that a deny
// already selects and probes them from the instant CNI ADD returns, from
// the pod's node and from another: no probe may ever connect (or even be
// refused, which would mean a packet reached the pod). An admitted peer
// probing alongside shows the pods were reachable all along.
func TestPrivilegedMultiNodePodBornUnderPolicy(t *testing.T) {
	privileged.Require(t)
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 3})
	c.CreateNamespace(t, "prod", nil)
	client := func(name, role, node string) *testbed.Pod {
		return c.RunPod(t, onNode(testbed.MakePod("prod", name, map[string]string{"role": role}), node))
	}
	forbidden := []*testbed.Pod{client("intruder-near", "other", "node-1"), client("intruder-far", "other", "node-2")}
	friend := client("friend", "frontend", "node-3")
	createPolicy(t, c.ControlPlane, ingressFrom("prod", "db-ingress", "db", "frontend", 27017))
	// The policy must be on every node before the pod comes, or "already
	// selects" would be a race against the agents' watches.
	time.Sleep(2 * time.Second)

	for i := range 3 {
		name := fmt.Sprintf("db-%d", i)
		p := c.Nodes[0].PreparePod(t, testbed.MakePod("prod", name, map[string]string{"role": "db"}, testbed.TCP(27017)))
		p.Listen(t)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := p.CNIAdd(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var connected, refused, probes atomic.Int32
		var friendOK atomic.Bool
		var wg sync.WaitGroup
		stop := time.Now().Add(1500 * time.Millisecond)
		for _, from := range forbidden {
			wg.Go(func() {
				for time.Now().Before(stop) {
					v := testbed.Probe(context.Background(), from, p.IP(), 27017, corev1.ProtocolTCP)
					probes.Add(1)
					switch v.Outcome {
					case testbed.Connected:
						connected.Add(1)
					case testbed.Refused:
						refused.Add(1)
					}
				}
			})
		}
		wg.Go(func() {
			for time.Now().Before(stop) && !friendOK.Load() {
				friendOK.Store(testbed.Probe(context.Background(), friend, p.IP(), 27017, corev1.ProtocolTCP).Outcome == testbed.Connected)
			}
		})
		wg.Wait()
		if connected.Load() > 0 || refused.Load() > 0 {
			t.Errorf("pod %s born under a deny: of %d forbidden probes from the moment ADD returned, %d connected and %d were refused", p, probes.Load(), connected.Load(), refused.Load())
		}
		if !friendOK.Load() {
			t.Errorf("pod %s: the admitted peer never connected, so the forbidden probes proved nothing", p)
		}
	}
}

// TestPrivilegedMultiNodeAgentRestart restarts the agents of both ends of
// a long-lived TCP connection, while forbidden probes run from a third
// node: the connection never misses a round trip and no forbidden probe
// gets through.
func TestPrivilegedMultiNodeAgentRestart(t *testing.T) {
	privileged.Require(t)
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 3})
	c.CreateNamespace(t, "prod", nil)
	echo := corev1.ContainerPort{Name: "echo", ContainerPort: 7000, Protocol: corev1.ProtocolTCP}
	server := c.RunPod(t, onNode(testbed.MakePod("prod", "server", map[string]string{"role": "db"}, echo, testbed.TCP(27017)), "node-2"))
	client := c.RunPod(t, onNode(testbed.MakePod("prod", "client", map[string]string{"role": "frontend"}), "node-1"))
	intruder := c.RunPod(t, onNode(testbed.MakePod("prod", "intruder", map[string]string{"role": "other"}), "node-3"))
	createPolicy(t, c.ControlPlane, ingressFrom("prod", "db-ingress", "db", "frontend", 7000))
	eventually(t, expect{intruder, server, 7000, corev1.ProtocolTCP, testbed.TimedOut}, expect{client, server, 7000, corev1.ProtocolTCP, testbed.Connected})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	conn, err := client.NetNS.DialContext(ctx, "tcp4", netip.AddrPortFrom(server.IP(), 7000).String())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if greeting, err := r.ReadString('\n'); err != nil || greeting != "server\n" {
		t.Fatalf("echo greeting: %q, %v", greeting, err)
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	var trips, failedTrips, leaks, probes atomic.Int32
	var firstFailure atomic.Value
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			trips.Add(1)
			if !roundTrip(conn, r, fmt.Sprintf("trip %d", i)) {
				failedTrips.Add(1)
				firstFailure.CompareAndSwap(nil, fmt.Sprintf("trip %d", i))
				return
			}
		}
	})
	for _, port := range []int{7000, 27017} {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				v := testbed.Probe(context.Background(), intruder, server.IP(), port, corev1.ProtocolTCP)
				probes.Add(1)
				if v.Outcome != testbed.TimedOut {
					leaks.Add(1)
				}
			}
		})
	}
	for _, i := range []int{1, 0} { // the server's node, then the client's
		a := c.Agents[i]
		if err := a.Stop(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // traffic while no agent runs
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // and after both agents resynced
	close(done)
	wg.Wait()
	t.Logf("%d round trips, %d forbidden probes during the restarts", trips.Load(), probes.Load())
	if failedTrips.Load() > 0 {
		t.Errorf("the established connection failed at %v during an agent restart", firstFailure.Load())
	}
	if leaks.Load() > 0 {
		t.Errorf("%d of %d forbidden probes were not dropped during agent restarts", leaks.Load(), probes.Load())
	}
	if probes.Load() < 4 || trips.Load() < 10 {
		t.Errorf("too little traffic to judge: %d probes, %d round trips", probes.Load(), trips.Load())
	}
	// A new connection from the admitted peer still works afterwards.
	eventually(t, expect{client, server, 7000, corev1.ProtocolTCP, testbed.Connected})
	if !roundTrip(conn, r, "after") {
		t.Error("the long-lived connection does not work after the restarts")
	}
}
