package hostile

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

const (
	// otherTable is the agent's deliberately small conntrack table of
	// non-TCP flows, which floodFlows overfills four times over.
	otherTable = 1024
	floodFlows = 4 * otherTable
	echoPort   = 7000
)

// TestPrivilegedUDPFloodKeepsOtherPodsTCP has a pod flood the node with new
// UDP flows, two datagrams each, into an agent whose table of non-TCP flows
// holds a fraction of them. Another pod, isolated for ingress, has an open
// TCP connection whose replies pass only because conntrack remembers it:
// the connection keeps working after the flood, and after a policy change
// that makes the datapath re-judge it. The agent counts what the flood made
// the LRU reclaim, in the other table only.
func TestPrivilegedUDPFloodKeepsOtherPodsTCP(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	agent := node.StartAgent(t, testbed.AgentOptions{Args: []string{fmt.Sprintf("--conntrack-other-max=%d", otherTable)}})
	cp.CreateNamespace(t, "prod", nil)
	server := node.AddPod(t, testbed.MakePod("prod", "server", map[string]string{"role": "server"}, testbed.UDP(80)))
	victim := node.AddPod(t, testbed.MakePod("prod", "victim", map[string]string{"role": "victim"}))
	flooder := node.AddPod(t, testbed.MakePod("prod", "flooder", map[string]string{"role": "flooder"}))
	server.ServeEcho(t, echoPort)

	if got, err := agent.Metric("palisade_map_capacity", map[string]string{"map": "conntrack-other"}); err != nil || got != otherTable {
		t.Fatalf("capacity of the other conntrack table: %v (%v), want %d from the flag", got, err, otherTable)
	}
	apply(t, cp, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "victim-accepts-nothing"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "victim"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	})
	// Once the server cannot open a connection to the victim, the victim
	// is isolated: its own connection's replies pass as replies only.
	probeUntil(t, server, victim.IP(), 80, corev1.ProtocolUDP, testbed.TimedOut)

	conn := dialEcho(t, victim, server.IP())
	conn.check(t, "before the flood")

	flood(t, flooder, server.IP())
	conn.check(t, "after the flood")
	reclaimed, err := agent.Metric("palisade_conntrack_reclaimed_total", map[string]string{"table": "other"})
	if err != nil {
		t.Fatal(err)
	}
	if min := float64(floodFlows - otherTable); reclaimed < min {
		t.Errorf("the other table reclaimed %v entries, want at least %v", reclaimed, min)
	}
	if got, err := agent.Metric("palisade_conntrack_reclaimed_total", map[string]string{"table": "tcp"}); err != nil || got != 0 {
		t.Errorf("the TCP table reclaimed %v entries (%v), want none", got, err)
	}

	// Isolating the victim's egress too, allowing its connection: the new
	// policy revision makes the datapath re-judge the open flow, which
	// needs its entry.
	port := intstr.FromInt32(echoPort)
	tcp := corev1.ProtocolTCP
	apply(t, cp, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "victim-reaches-echo"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "victim"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	})
	probeUntil(t, victim, server.IP(), 80, corev1.ProtocolUDP, testbed.TimedOut)
	conn.check(t, "after the policy change")
}

// flood sends floodFlows new UDP flows from pod to dst, two datagrams each
// (an entry used twice is one the LRU prefers to keep), to ports nothing
// listens on.
func flood(t *testing.T, pod *testbed.Pod, dst netip.Addr) {
	t.Helper()
	c, err := pod.NetNS.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range floodFlows {
		to := &net.UDPAddr{IP: dst.AsSlice(), Port: 20000 + i}
		for range 2 {
			if _, err := c.WriteTo([]byte("flood"), to); err != nil {
				t.Fatalf("flood datagram %d: %v", i, err)
			}
		}
	}
}

// echoConn is an open connection to a ServeEcho server.
type echoConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialEcho(t *testing.T, from *testbed.Pod, to netip.Addr) *echoConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := from.NetNS.DialContext(ctx, "tcp", net.JoinHostPort(to.String(), fmt.Sprint(echoPort)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &echoConn{c: c, r: bufio.NewReader(c)}
}

// check sends a line and fails the test unless it comes back in time.
func (e *echoConn) check(t *testing.T, when string) {
	t.Helper()
	_ = e.c.SetDeadline(time.Now().Add(3 * time.Second))
	line := "ping " + when
	if _, err := fmt.Fprintln(e.c, line); err != nil {
		t.Fatalf("%s: send on the open connection: %v", when, err)
	}
	got, err := e.r.ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("%s: the open connection echoed %q, %v", when, got, err)
	}
}
