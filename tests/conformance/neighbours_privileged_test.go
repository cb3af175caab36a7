package conformance

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestPrivilegedFixedIPPodRecreated deletes a pod of the generated
// catalog's fixed IP plan after a pod on its node has talked to it, and
// lets Reset bring it back with the same address and a new MAC. The
// neighbour's entry for the old MAC must be gone, and the two pods must
// talk at once: this is what made a replay fail now and then (a probe right
// after the re-creation timed out on replies flooded to the old MAC).
func TestPrivilegedFixedIPPodRecreated(t *testing.T) {
	privileged.Require(t)
	if *flagCLI || *flagModel != "" {
		t.Skip("scripts/conformance mode")
	}
	dir := filepath.Join(testbed.ModuleRoot(t), "tests", "conformance", "generated")
	cat, err := Load(filepath.Join(dir, "model.json"), filepath.Join(dir, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	env := Setup(t, cat.Model, *flagNodes, false)
	const client, server = "x/b", "y/b"
	if env.NodeOf(client) != env.NodeOf(server) {
		t.Fatalf("the plan puts %s on %s and %s on %s; the test needs them on one node", client, env.NodeOf(client), server, env.NodeOf(server))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dial(t, env.Pods[client], env.Pods[server])
	oldMAC := macOf(t, env.Pods[server])
	if got := neighbourMAC(t, env.Pods[client].NetNS, env.Pods[server].IP()); got.String() != oldMAC.String() {
		t.Fatalf("%s's neighbour entry for %s is %q after talking to it, want %s", client, server, got, oldMAC)
	}
	if err := env.DeletePod(ctx, ObjectRef{Namespace: "y", Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := env.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	newMAC := macOf(t, env.Pods[server])
	if newMAC.String() == oldMAC.String() {
		t.Fatalf("re-created %s kept its MAC %s: the test proves nothing", server, oldMAC)
	}
	for name, ns := range map[string]*testbed.NetNS{client: env.Pods[client].NetNS, "node " + env.NodeOf(server): env.Pods[server].Node.NetNS} {
		if got := neighbourMAC(t, ns, env.Pods[server].IP()); got.String() == oldMAC.String() {
			t.Errorf("%s still sends %s's packets to its old MAC %s (new %s)", name, server, oldMAC, newMAC)
		}
	}
	dial(t, env.Pods[client], env.Pods[server])
}

// dial opens a TCP connection from pod from to pod to's port 80.
func dial(t *testing.T, from, to *testbed.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := from.NetNS.DialContext(ctx, "tcp", net.JoinHostPort(to.IP().String(), "80"))
	if err != nil {
		t.Fatalf("%s to %s: %v", from, to, err)
	}
	conn.Close()
}

// macOf is the MAC of p's interface.
func macOf(t *testing.T, p *testbed.Pod) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := p.NetNS.Do(func() error {
		link, err := netlink.LinkByName(testbed.PodIfName)
		if err != nil {
			return err
		}
		mac = link.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatalf("MAC of %s: %v", p, err)
	}
	return mac
}

// neighbourMAC is the MAC ns's neighbour table gives ip (nil: none).
func neighbourMAC(t *testing.T, ns *testbed.NetNS, ip netip.Addr) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := ns.Do(func() error {
		neighs, err := netlink.NeighList(0, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, n := range neighs {
			if n.IP.Equal(net.IP(ip.AsSlice())) {
				mac = n.HardwareAddr
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("neighbours in %s: %v", ns.Name(), err)
	}
	return mac
}
