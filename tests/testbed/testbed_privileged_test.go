package testbed

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedTestbed brings up a control plane and two nodes, wires pods
// with the conflist minus palisade (the baseline pod network), checks that
// probes see exactly what the kernel does, and that cleanup leaves nothing.
func TestPrivilegedTestbed(t *testing.T) {
	privileged.Require(t)
	var created []string
	var pids []int
	t.Run("cluster", func(t *testing.T) {
		cp := StartControlPlane(t)
		nodeA := cp.AddNode(t, "node-a", 1)
		nodeB := cp.AddNode(t, "node-b", 2)
		ports := []corev1.ContainerPort{
			{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
			{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
		}
		start := time.Now()
		a := nodeA.AddPod(t, MakePod("default", "a", map[string]string{"pod": "a"}, ports...), WithoutPalisade())
		b := nodeA.AddPod(t, MakePod("default", "b", map[string]string{"pod": "b"}, ports...), WithoutPalisade())
		c := nodeB.AddPod(t, MakePod("default", "c", map[string]string{"pod": "c"}, ports...), WithoutPalisade())
		t.Logf("3 pods up in %v", time.Since(start).Round(time.Millisecond))
		created = append(created, cp.NetNS.Name(), nodeA.NetNS.Name(), nodeB.NetNS.Name(),
			a.NetNS.Name(), b.NetNS.Name(), c.NetNS.Name())
		pids = append(pids, cp.Etcd.PID(), cp.APIServer.PID())
		// So that the leftover check below cannot pass by seeing nothing.
		if kids := children(t); len(kids) < 2 {
			t.Errorf("children of the test while running: %v, want etcd and kube-apiserver", kids)
		}

		for _, p := range []*Pod{a, b, c} {
			if !p.Node.PodCIDR.Contains(p.IP()) {
				t.Errorf("pod %s: IP %s outside node %s's pod CIDR %s", p, p.IP(), p.Node.Name, p.Node.PodCIDR)
			}
			if name, index := p.HostVeth(); name == "" || index <= 0 {
				t.Errorf("pod %s: host veth %q index %d", p, name, index)
			}
		}

		ctx := context.Background()
		tests := []struct {
			name  string
			probe ProbeSpec
			want  Outcome
			reply string
		}{
			{"tcp to a served port connects and gets the pod name", ProbeSpec{a, b.IP(), 80, corev1.ProtocolTCP}, Connected, "b"},
			{"udp to a served port gets the pod name back", ProbeSpec{a, b.IP(), 53, corev1.ProtocolUDP}, Connected, "b"},
			{"tcp works the other way", ProbeSpec{b, a.IP(), 80, corev1.ProtocolTCP}, Connected, "a"},
			{"tcp crosses nodes through host-gw routes", ProbeSpec{a, c.IP(), 80, corev1.ProtocolTCP}, Connected, "c"},
			{"udp crosses nodes through host-gw routes", ProbeSpec{c, a.IP(), 53, corev1.ProtocolUDP}, Connected, "a"},
			{"tcp to a closed port is refused", ProbeSpec{a, b.IP(), 81, corev1.ProtocolTCP}, Refused, ""},
			{"udp to a closed port is refused", ProbeSpec{a, b.IP(), 54, corev1.ProtocolUDP}, Refused, ""},
			{"tcp to an address nobody has times out", ProbeSpec{a, netip.MustParseAddr("10.244.1.250"), 80, corev1.ProtocolTCP}, TimedOut, ""},
		}
		specs := make([]ProbeSpec, len(tests))
		for i, tc := range tests {
			specs[i] = tc.probe
		}
		// Through the matrix, so that its parallelism is tested too.
		verdicts := ProbeMatrix(ctx, specs)
		for i, tc := range tests {
			if v := verdicts[i]; v.Outcome != tc.want || v.Reply != tc.reply {
				t.Errorf("%s: %s: got %s, want %s %q", tc.name, tc.probe, v, tc.want, tc.reply)
			}
		}

		got, err := cp.Client.CoreV1().Pods("default").Get(ctx, "b", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get pod b: %v", err)
		}
		if got.Status.PodIP != b.IP().String() || got.Status.Phase != corev1.PodRunning || !podReady(got) || got.Spec.NodeName != "node-a" {
			t.Errorf("pod b: status ip %q phase %s ready %v node %q; want ip %s, Running, ready, node-a",
				got.Status.PodIP, got.Status.Phase, podReady(got), got.Spec.NodeName, b.IP())
		}
		node, err := cp.Client.CoreV1().Nodes().Get(ctx, "node-b", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get node node-b: %v", err)
		}
		if node.Spec.PodCIDR != "10.244.2.0/24" || len(node.Status.Addresses) == 0 || node.Status.Addresses[0].Address != "198.18.0.12" {
			t.Errorf("node-b: podCIDR %q addresses %v", node.Spec.PodCIDR, node.Status.Addresses)
		}

		if err := a.CNICheck(ctx); err != nil {
			t.Errorf("check of a wired pod: %v", err)
		}
		d := nodeA.PreparePod(t, MakePod("default", "d", nil), WithoutPalisade())
		if err := d.CNIAdd(ctx); err != nil {
			t.Fatalf("add d: %v", err)
		}
		for i := range 2 {
			if err := d.CNIDel(ctx); err != nil {
				t.Errorf("del #%d of d: %v", i+1, err)
			}
		}
	})

	for _, name := range created {
		if _, err := os.Stat(filepath.Join(netnsDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("netns %s left behind (stat: %v)", name, err)
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d left behind (kill 0: %v)", pid, err)
		}
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("child processes left behind: %v", kids)
	}
	assertHostUntouched(t)
}

// children lists the processes whose parent is the test process.
func children(t *testing.T) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces, so split after ')'.
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			kids = append(kids, s[:strings.LastIndexByte(s, ')')+1])
		}
	}
	return kids
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// assertHostUntouched checks the rule the testbed lives by: no testbed
// address or route in the host's own namespace.
func assertHostUntouched(t *testing.T) {
	t.Helper()
	ranges := []netip.Prefix{UnderlayPrefix, ClusterCIDR, ServiceCIDR}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list host addresses: %v", err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		for _, r := range ranges {
			if r.Contains(ip) {
				t.Errorf("host namespace has testbed address %s on link %d", a.IPNet, a.LinkIndex)
			}
		}
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list host routes: %v", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		for _, p := range ranges {
			if p.Contains(dst) {
				t.Errorf("host namespace has a route to %s", r.Dst)
			}
		}
	}
}
