package hostile

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/packet"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

const (
	dbPort     = 5432 // db's responder: answers a TCP connection with "db"
	listenPort = 9999 // the test's own UDP listener in db's sandbox
	settle     = 10 * time.Second
	// spoofs is how many datagrams each spoofed source sends: one lost
	// datagram must not make the test pass.
	spoofs = 5
)

// TestPrivilegedSpoofedSourceGetsNothing is issue 15's "whose packet is
// it": db in namespace victim admits only app=friend. An attacker pod of
// another namespace, on db's node and bridge, sends UDP from friend's
// address and from its node's address through a raw socket, then claims
// friend's address (on its eth0, announced by ARP to db) and connects over
// TCP from it. db must receive none of it, while friend's own datagrams
// arrive, and the agent must count and report the drops as spoofed.
func TestPrivilegedSpoofedSourceGetsNothing(t *testing.T) {
	privileged.Require(t)
	for _, mode := range []testbed.ProxyMode{testbed.ProxyIPTables, testbed.ProxyNFTables} {
		t.Run(string(mode), func(t *testing.T) { spoofedSourceGetsNothing(t, mode) })
	}
}

func spoofedSourceGetsNothing(t *testing.T, mode testbed.ProxyMode) {
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 1, ProxyMode: mode})
	c.CreateNamespace(t, "victim", nil)
	c.CreateNamespace(t, "attacker", nil)
	db := c.RunPod(t, testbed.MakePod("victim", "db", map[string]string{"app": "db"}, testbed.TCP(dbPort)))
	friend := c.RunPod(t, testbed.MakePod("victim", "friend", map[string]string{"app": "friend"}))
	mallory := c.RunPod(t, testbed.MakePod("attacker", "mallory", map[string]string{"app": "mallory"}))
	node := c.Nodes[0]
	createPolicy(t, c.ControlPlane, onlyFriend())

	// The policy is in force: friend connects, mallory does not.
	waitOutcome(t, friend, db.IP(), testbed.Connected)
	waitOutcome(t, mallory, db.IP(), testbed.TimedOut)

	inbox := listen(t, db)
	sendUDP(t, friend, friend.IP(), db.IP(), "from-friend")
	sendUDP(t, mallory, friend.IP(), db.IP(), "spoofed-friend")
	sendUDP(t, mallory, node.IP, db.IP(), "spoofed-node")

	claim(t, mallory, friend.IP(), db.IP())
	reply, err := dialFrom(mallory, friend.IP(), db.IP(), dbPort)
	if err == nil {
		t.Errorf("mallory connected to db from friend's claimed address; db answered %q", reply)
	}
	if mac := neighbour(t, db, friend.IP()); mac != nil && mac.String() == macOf(t, mallory).String() {
		t.Errorf("db resolves friend's address %s to mallory's MAC %s", friend.IP(), mac)
	}

	got := inbox(2 * time.Second)
	if got["from-friend"] == 0 {
		t.Fatalf("friend's own datagrams did not reach db (got %v): the listener proves nothing", got)
	}
	for _, spoofed := range []string{"spoofed-friend", "spoofed-node"} {
		if got[spoofed] > 0 {
			t.Errorf("db received %d %q datagrams from mallory", got[spoofed], spoofed)
		}
	}

	// UDP from two sources, at least one ARP and one SYN.
	if n := spoofedCount(t, node); n < 2*spoofs+2 {
		t.Errorf("palisade_verdicts_total{egress,spoofed} = %d, want at least %d", n, 2*spoofs+2)
	}
	if !flowNamed(t, c.Agents[0].Client(), "attacker/mallory", friend.IP()) {
		t.Errorf("no dropped flow of attacker/mallory from %s with reason spoofed", friend.IP())
	}
}

// onlyFriend isolates victim/db for ingress, admitting app=friend only.
func onlyFriend() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "victim", Name: "db-only-friend"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "friend"}}}},
			}},
		},
	}
}

func createPolicy(t *testing.T, cp *testbed.ControlPlane, pol *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cp.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create networkpolicy: %v", err)
	}
	t.Cleanup(func() {
		_ = cp.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Delete(context.Background(), pol.Name, metav1.DeleteOptions{})
	})
}

// waitOutcome probes from's TCP connection to db until it gets want.
func waitOutcome(t *testing.T, from *testbed.Pod, to netip.Addr, want testbed.Outcome) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		v := testbed.Probe(context.Background(), from, to, dbPort, corev1.ProtocolTCP)
		if v.Outcome == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s -> %s tcp/%d: %s, want %s", from, to, dbPort, v, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listen opens a UDP socket in p's sandbox; the function it returns reads
// for d and counts the payloads that arrived.
func listen(t *testing.T, p *testbed.Pod) func(d time.Duration) map[string]int {
	t.Helper()
	conn, err := p.NetNS.ListenPacket("udp4", ":"+strconv.Itoa(listenPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return func(d time.Duration) map[string]int {
		got := map[string]int{}
		buf := make([]byte, 1500)
		_ = conn.SetReadDeadline(time.Now().Add(d))
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return got
			}
			got[string(buf[:n])]++
			t.Logf("db received %q from %s", buf[:n], from)
		}
	}
}

// sendUDP sends spoofs datagrams from inside p's sandbox with source src,
// through a raw socket that writes the IP header itself, as an attacker
// with CAP_NET_RAW in its pod can.
func sendUDP(t *testing.T, p *testbed.Pod, src, dst netip.Addr, payload string) {
	t.Helper()
	ip := packet.Packet{Src: src, Dst: dst, Proto: packet.UDP, SrcPort: 40000, DstPort: listenPort, Payload: []byte(payload)}.IP()
	err := p.NetNS.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		for range spoofs {
			if err := unix.Sendto(fd, ip, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
				return fmt.Errorf("send from %s: %w", src, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// claim puts addr on p's eth0, so that p's kernel answers ARP for it and
// terminates TCP to it, and tells victim so with ARP requests from addr
// (a request to a host makes it learn the sender). They are repeated past
// the kernel's 1 s ARP lock time, which protects a fresh entry.
func claim(t *testing.T, p *testbed.Pod, addr, victim netip.Addr) {
	t.Helper()
	err := p.NetNS.Do(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("find eth0: %w", err)
		}
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: netipNet(netip.PrefixFrom(addr, 32))}); err != nil {
			return fmt.Errorf("claim %s: %w", addr, err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		mac := [6]byte(eth0.Attrs().HardwareAddr)
		frame := packet.ARP(packet.ARPRequest, mac, addr, victim)
		to := &unix.SockaddrLinklayer{Ifindex: eth0.Attrs().Index, Protocol: htons(unix.ETH_P_ARP), Halen: 6,
			Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
		for range 8 {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				return fmt.Errorf("send ARP claiming %s: %w", addr, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// dialFrom connects from src inside p's sandbox and reads the answer.
func dialFrom(p *testbed.Pod, src, dst netip.Addr, port int) (string, error) {
	var reply string
	err := p.NetNS.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err := d.Dial("tcp", net.JoinHostPort(dst.String(), strconv.Itoa(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 64)
		n, err := c.Read(b)
		reply = string(b[:n])
		return err
	})
	return reply, err
}

// neighbour is the MAC p's sandbox resolves addr to, nil when none.
func neighbour(t *testing.T, p *testbed.Pod, addr netip.Addr) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := p.NetNS.Do(func() error {
		ns, err := netlink.NeighList(0, unix.AF_INET)
		if err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range ns {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr {
				mac = n.HardwareAddr
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

func macOf(t *testing.T, p *testbed.Pod) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := p.NetNS.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// spoofedCount reads the node agent's metric of spoofed packets.
func spoofedCount(t *testing.T, node *testbed.Node) int {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: node.NetNS.DialContext}}
	resp, err := hc.Get("http://127.0.0.1:9879/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	const series = `palisade_verdicts_total{direction="egress",reason="spoofed"} `
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", sc.Text(), err)
			}
			return int(n)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	t.Fatalf("no series %s in /metrics", series)
	return 0
}

// flowNamed reports whether the agent's recent flows hold a drop of pod's
// packets from src with reason spoofed, as `palisadectl flows` shows them.
func flowNamed(t *testing.T, client *agentapi.Client, pod string, src netip.Addr) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errFound := errors.New("found")
	err := client.Flows(ctx, agentapi.FlowFilter{Pod: pod, Verdict: agentapi.FlowDropped}, func(f *agentapi.Flow) error {
		if f.Reason == "spoofed" && f.Pod == pod && f.Source.IP == src.String() {
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return true
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read flows: %v", err)
	}
	return false
}

func netipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
