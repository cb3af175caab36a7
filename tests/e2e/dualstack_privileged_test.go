package e2e

import (
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestPrivilegedDualStack runs pods with an IPv4 and an IPv6 address
// (host-local with two ranges) and checks that a policy means the same for
// both families: default deny stops IPv6 as it stops IPv4, a podSelector
// admits the peer's IPv6 address, and neighbour discovery keeps working
// on isolated pods (an IPv6 connection needs it first).
func TestPrivilegedDualStack(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	node.StartAgent(t, testbed.AgentOptions{})
	cp.CreateNamespace(t, "prod", nil)
	add := func(name, role string) *testbed.Pod {
		return node.AddPod(t, testbed.MakePod("prod", name, map[string]string{"role": role},
			testbed.TCP(6379), testbed.UDP(6379), testbed.TCP(80)), testbed.WithDualStack())
	}
	backend, frontend, other := add("backend", "backend"), add("frontend", "frontend"), add("other", "other")
	for _, p := range []*testbed.Pod{backend, frontend, other} {
		if _, ok := p.IPv6(); !ok {
			t.Fatalf("%s got no IPv6 address", p)
		}
	}
	b6, _ := backend.IPv6()
	b4 := backend.IP()
	type pr struct {
		from *testbed.Pod
		port int
		want testbed.Outcome
	}
	check := func(t *testing.T, cases ...pr) {
		t.Helper()
		for _, c := range cases {
			for _, to := range []string{b4.String(), b6.String()} {
				addr := b4
				if to == b6.String() {
					addr = b6
				}
				probeUntil(t, c.from, addr, c.port, corev1.ProtocolTCP, c.want, "backend")
			}
		}
	}
	check(t, pr{frontend, 6379, testbed.Connected}, pr{other, 80, testbed.Connected})
	deny := cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "default-deny-ingress.yaml"))
	check(t, pr{frontend, 6379, testbed.TimedOut}, pr{other, 80, testbed.TimedOut})
	cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
	check(t, pr{frontend, 6379, testbed.Connected}, pr{frontend, 80, testbed.TimedOut}, pr{other, 6379, testbed.TimedOut})
	cp.DeletePolicy(t, "prod", deny)
}
