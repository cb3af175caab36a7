package hostile

import (
	"bytes"
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
	// bigDatagram does not fit a pod's 1 500-byte MTU: the client's kernel
	// sends it in three fragments, of which only the first has ports.
	bigDatagram = 4000
	bigPort     = 9000 // the server's port, the Service's target
	bigSvcPort  = 900  // the Service's port
)

// TestPrivilegedFragmentedDatagramsThroughAClusterIP sends 4 000-byte UDP
// datagrams to a ClusterIP, IPv4 and IPv6, from a dual-stack client to a
// dual-stack server, with no kube-proxy: Palisade translates every fragment
// and judges the first. Under policies that allow the flow (the client's
// egress to the server, the server's ingress from the client, on the
// target port) each datagram arrives whole and its echo, fragmented too,
// comes back from the Service address. Under an ingress policy that allows
// another port, nothing arrives: the first fragment is denied and the
// others are dropped as fragments of a denied datagram.
func TestPrivilegedFragmentedDatagramsThroughAClusterIP(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	agent := node.StartAgent(t, testbed.AgentOptions{})
	cp.CreateNamespace(t, "prod", nil)
	server := node.AddPod(t, testbed.MakePod("prod", "server", map[string]string{"role": "server"}), testbed.WithDualStack())
	client := node.AddPod(t, testbed.MakePod("prod", "client", map[string]string{"role": "client"}), testbed.WithDualStack())
	received := echoDatagrams(t, server, bigPort)

	s6, ok := server.IPv6()
	if !ok {
		t.Fatalf("%s got no IPv6 address", server)
	}
	vips := map[string]netip.Addr{}
	for _, s := range []struct {
		family, name string
		backend      netip.Addr
	}{{"IPv4", "big-v4", server.IP()}, {"IPv6", "big-v6", s6}} {
		vips[s.family] = cp.CreateServiceTo(t, "prod", s.name, s.backend,
			testbed.ServicePort{Name: "big", Protocol: corev1.ProtocolUDP, Port: bigSvcPort, Target: intstr.FromInt32(bigPort)})
	}

	apply(t, cp, udpPolicy("client-egress", "client", networkingv1.PolicyTypeEgress, "server", bigPort))
	ingress := apply(t, cp, udpPolicy("server-ingress", "server", networkingv1.PolicyTypeIngress, "client", bigPort))
	for family, vip := range vips {
		t.Run(family+": allowed datagrams arrive whole, and so do their echoes", func(t *testing.T) {
			deadline := time.Now().Add(settle)
			for {
				err := roundTrip(client, vip, received)
				if err == nil {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s -> %s:%d: %v", client, vip, bigSvcPort, err)
				}
			}
		})
	}

	update(t, cp, ingress, udpPolicy("server-ingress", "server", networkingv1.PolicyTypeIngress, "client", bigPort+1))
	before, err := agent.Metric("palisade_verdicts_total", map[string]string{"direction": "ingress", "reason": "fragment"})
	if err != nil {
		t.Fatal(err)
	}
	for family, vip := range vips {
		t.Run(family+": denied datagrams do not arrive, not even in part", func(t *testing.T) {
			// Wait for the policy: until a datagram gets no echo.
			deadline := time.Now().Add(settle)
			for roundTrip(client, vip, received) == nil {
				if time.Now().After(deadline) {
					t.Fatalf("%s -> %s:%d still arrives %s after the deny", client, vip, bigSvcPort, settle)
				}
			}
			drain(received)
			for range 3 {
				if err := roundTrip(client, vip, received); err == nil {
					t.Fatalf("%s -> %s:%d: a denied datagram arrived", client, vip, bigSvcPort)
				}
			}
			select {
			case n := <-received:
				t.Errorf("the server received %d bytes of a denied flow", n)
			default:
			}
		})
	}
	after, err := agent.Metric("palisade_verdicts_total", map[string]string{"direction": "ingress", "reason": "fragment"})
	if err != nil {
		t.Fatal(err)
	}
	// Three datagrams a family, each with two later fragments.
	if after-before < 2*3*2 {
		t.Errorf("fragment drops went from %v to %v, want 12 more: the later fragments must reach the datapath and be dropped as such", before, after)
	}
}

// echoDatagrams serves UDP on port inside pod, both families: it reports the
// size of each datagram it receives and sends it back.
func echoDatagrams(t *testing.T, pod *testbed.Pod, port int) <-chan int {
	t.Helper()
	c, err := pod.NetNS.ListenPacket("udp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	got := make(chan int, 64)
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- n:
			default:
			}
			_, _ = c.WriteTo(buf[:n], from)
		}
	}()
	return got
}

// roundTrip sends one bigDatagram from pod to vip and checks that the
// server got it whole and that its echo came back whole from vip.
func roundTrip(pod *testbed.Pod, vip netip.Addr, received <-chan int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := pod.NetNS.DialContext(ctx, "udp", net.JoinHostPort(vip.String(), fmt.Sprint(bigSvcPort)))
	if err != nil {
		return err
	}
	defer c.Close()
	drain(received)
	msg := bytes.Repeat([]byte{byte(time.Now().UnixNano())}, bigDatagram)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf) // a connected socket takes only what comes from vip
	if err != nil {
		return fmt.Errorf("no echo: %w", err)
	}
	if !bytes.Equal(buf[:n], msg) {
		return fmt.Errorf("echo of %d bytes differs from the %d sent", n, len(msg))
	}
	select {
	case got := <-received:
		if got != bigDatagram {
			return fmt.Errorf("the server received %d bytes, want %d", got, bigDatagram)
		}
	default:
		return fmt.Errorf("an echo came back but the server reported nothing")
	}
	return nil
}

func drain(c <-chan int) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

// udpPolicy isolates pods with role=subject for typ, allowing pods with
// role=peer on UDP port.
func udpPolicy(name, subject string, typ networkingv1.PolicyType, peer string, port int32) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(port)
	udp := corev1.ProtocolUDP
	ports := []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &p}}
	peers := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": peer}}}}
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": subject}},
			PolicyTypes: []networkingv1.PolicyType{typ},
		},
	}
	if typ == networkingv1.PolicyTypeIngress {
		pol.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}
	} else {
		pol.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: ports}}
	}
	return pol
}
