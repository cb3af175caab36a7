package testbed

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxNodeIndex keeps 198.18.0.(10+index) inside the underlay /24.
const maxNodeIndex = 244

// nodeUplink is the node's underlay interface, named as on a real node.
const nodeUplink = "eth0"

// Node is a namespace standing in for a Kubernetes node: an underlay address,
// IP forwarding, routes to every other node's pod CIDR (flanneld's, or the
// testbed's own host-gw routes on the bridge chain), and a Node object in
// the API.
type Node struct {
	Name    string
	Index   int
	IP      netip.Addr
	PodCIDR netip.Prefix
	NetNS   *NetNS
	// Network is what connects its pods; AddNode's nodes run BridgeChain.
	Network PodNetwork
	// DualStack: the node and its pods have IPv6 addresses too
	// (DualStackNode); IP6 is its IPv6 underlay address.
	DualStack bool
	IP6       netip.Addr

	cp     *ControlPlane
	runner *PodRunner
	dir    string
	// view is a Flannel node's mount namespace (see mountView), nil on
	// the bridge chain.
	view *mountView
}

// AddNode creates node name with underlay address 198.18.0.(10+index) and pod
// CIDR 10.244.<index>.0/24, on the bridge chain. Cleanup deletes the Node
// object and the namespace (which takes its underlay veth with it).
func (cp *ControlPlane) AddNode(tb TB, name string, index int) *Node {
	tb.Helper()
	return cp.AddNetworkNode(tb, name, index, BridgeChain)
}

// AddNetworkNode is AddNode for a node on network. A Flannel node gets its
// mount view; flanneld is started by StartFlanneld, once every node exists.
func (cp *ControlPlane) AddNetworkNode(tb TB, name string, index int, network PodNetwork, opts ...NodeOption) *Node {
	tb.Helper()
	if index < 0 || index > maxNodeIndex {
		tb.Fatalf("add node %s: index %d outside 0..%d", name, index, maxNodeIndex)
	}
	n := &Node{
		Name:    name,
		Index:   index,
		IP:      netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + index)}),
		PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(index), 0}), 24),
		NetNS:   NewNetNS(tb, "pal-node"),
		Network: network,
		cp:      cp,
		dir:     tb.TempDir(),
	}
	for _, opt := range opts {
		opt(n)
	}
	if n.DualStack {
		n.IP6 = nodeIP6(index)
	}
	if network.Flannel() {
		// A node's /opt/cni/bin and /etc/cni/net.d exist before any
		// DaemonSet runs; the installers expect them.
		for _, dir := range []string{n.CNIBinDir(), n.CNIConfDir()} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				tb.Fatalf("add node %s: %v", name, err)
			}
		}
		// The node's view is a copy taken now: the host's bpffs must be
		// there before it, for palisade to open the agent's pins.
		if err := hostBPFFS(); err != nil {
			tb.Fatalf("add node %s: %v", name, err)
		}
		v, err := newMountView(n.dir)
		if err != nil {
			tb.Fatalf("add node %s: %v", name, err)
		}
		n.view = v
		tb.Cleanup(func() {
			if err := v.close(); err != nil {
				tb.Errorf("node %s: close mount view: %v", name, err)
			}
		})
	}
	if err := cp.plugNode(n); err != nil {
		tb.Fatalf("add node %s: %v", name, err)
	}
	// Per-netns sysctls: forwarding makes the node a router for its pods;
	// no ICMP rate limit keeps "port unreachable" answers (a Refused probe)
	// deterministic when a test probes many closed ports at once.
	sysctls := map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/icmp_ratelimit": "0"}
	if n.DualStack {
		sysctls["net/ipv6/conf/all/forwarding"] = "1"
		sysctls["net/ipv6/icmp/ratelimit"] = "0"
		// No duplicate address detection on the links made later (cni0,
		// the host veths): the testbed's addresses are planned, and a
		// bridge whose gateway address is still tentative drops the
		// first second of a pod's IPv6 traffic.
		sysctls["net/ipv6/conf/default/accept_dad"] = "0"
	}
	for key, val := range sysctls {
		if err := n.NetNS.Sysctl(key, val); err != nil {
			tb.Fatalf("add node %s: %v", name, err)
		}
	}
	if err := cp.routeNodes(n); err != nil {
		tb.Fatalf("add node %s: %v", name, err)
	}
	tb.Cleanup(func() { cp.forgetNode(n) })
	if err := n.register(context.Background()); err != nil {
		tb.Fatalf("add node %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := cp.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			tb.Errorf("delete node %s: %v", name, err)
		}
	})
	return n
}

// Do runs fn inside the node's namespace; see NetNS.Do.
func (n *Node) Do(fn func() error) error { return n.NetNS.Do(fn) }

// doCNI runs fn where the node's CNI plugins must run: its network
// namespace and, on a Flannel node, its mount view, so that kube-flannel's
// unmodified conflist finds the node's own /run/flannel/subnet.env,
// /var/lib/cni and /run/palisade/agent.sock.
func (n *Node) doCNI(fn func() error) error {
	if n.view != nil {
		return n.view.do(n.NetNS, fn)
	}
	return n.Do(fn)
}

// AgentSocket is where this node's palisade-agent listens, whether or not an
// agent runs: the node's /run/palisade/agent.sock, where palisade dials by
// default on a Flannel node and where the bridge chain's entry points.
func (n *Node) AgentSocket() string { return filepath.Join(n.dir, "run", "palisade", "agent.sock") }

// plugNode joins the node to ul0 as eth0 with its underlay address.
func (cp *ControlPlane) plugNode(n *Node) error {
	if err := cp.plugUnderlay(fmt.Sprintf("ulv%d", n.Index), n.NetNS, n.IP); err != nil {
		return err
	}
	if !n.IP6.IsValid() {
		return nil
	}
	return n.Do(func() error {
		l, err := netlink.LinkByName(nodeUplink)
		if err != nil {
			return fmt.Errorf("find %s: %w", nodeUplink, err)
		}
		// No duplicate address detection: the address is usable at
		// once (flanneld reads it at start) and the plan has no clash.
		addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(n.IP6, UnderlayPrefix6.Bits())), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, nodeUplink, err)
		}
		return nil
	})
}

// prefixNet is p as a net.IPNet (the address kept, not masked).
func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// plugUnderlay joins netns to ul0 with a veth whose far end is created
// directly in netns as eth0, and gives that end ip on the underlay.
func (cp *ControlPlane) plugUnderlay(hostEnd string, netns *NetNS, ip netip.Addr) error {
	err := cp.NetNS.Do(func() error {
		br, err := netlink.LinkByName(underlayIf)
		if err != nil {
			return fmt.Errorf("find %s: %w", underlayIf, err)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: hostEnd, MasterIndex: br.Attrs().Index},
			PeerName:      nodeUplink,
			PeerNamespace: netlink.NsFd(int(netns.ns.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", hostEnd, err)
		}
		return linkUp(hostEnd)
	})
	if err != nil {
		return fmt.Errorf("plug into %s: %w", underlayIf, err)
	}
	return netns.Do(func() error {
		l, err := netlink.LinkByName(nodeUplink)
		if err != nil {
			return fmt.Errorf("find %s: %w", nodeUplink, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(UnderlayPrefix.Bits(), 32)}}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, nodeUplink, err)
		}
		return linkUp(nodeUplink)
	})
}

// routeNodes adds host-gw routes between n and every bridge-chain node
// already plugged in, as Flannel's host-gw backend does: each pod CIDR via
// its node's address. A Flannel node gets its routes from flanneld.
func (cp *ControlPlane) routeNodes(n *Node) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, m := range cp.nodes {
		if m.PodCIDR.Overlaps(n.PodCIDR) {
			return fmt.Errorf("pod CIDR %s overlaps node %s", n.PodCIDR, m.Name)
		}
		if n.Network.Flannel() || m.Network.Flannel() {
			continue
		}
		if err := n.Do(func() error { return addRoute(m.PodCIDR, m.IP) }); err != nil {
			return err
		}
		if err := m.Do(func() error { return addRoute(n.PodCIDR, n.IP) }); err != nil {
			return fmt.Errorf("on node %s: %w", m.Name, err)
		}
		if !n.DualStack || !m.DualStack {
			continue
		}
		if err := n.Do(func() error { return addRoute(m.PodCIDR6(), m.IP6) }); err != nil {
			return err
		}
		if err := m.Do(func() error { return addRoute(n.PodCIDR6(), n.IP6) }); err != nil {
			return fmt.Errorf("on node %s: %w", m.Name, err)
		}
	}
	cp.nodes = append(cp.nodes, n)
	return nil
}

// forgetNode drops n from the route table of the nodes that outlive it.
func (cp *ControlPlane) forgetNode(n *Node) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.nodes = slices.DeleteFunc(cp.nodes, func(m *Node) bool { return m == n })
	for _, m := range cp.nodes {
		// Best effort: the route dies with m's namespace anyway.
		_ = m.Do(func() error { return netlink.RouteDel(hostGWRoute(n.PodCIDR, n.IP)) })
		if n.DualStack && m.DualStack {
			_ = m.Do(func() error { return netlink.RouteDel(hostGWRoute(n.PodCIDR6(), n.IP6)) })
		}
	}
}

func addRoute(dst netip.Prefix, via netip.Addr) error {
	if err := netlink.RouteAdd(hostGWRoute(dst, via)); err != nil {
		return fmt.Errorf("add route %s via %s: %w", dst, via, err)
	}
	return nil
}

func hostGWRoute(dst netip.Prefix, via netip.Addr) *netlink.Route {
	return &netlink.Route{
		Dst: prefixNet(dst),
		Gw:  via.AsSlice(),
	}
}

// podCIDRs is the node's spec.podCIDRs: IPv4 first, as kube-controller-
// manager allocates them on an IPv4-primary dual-stack cluster.
func (n *Node) podCIDRs() []string {
	if n.DualStack {
		return []string{n.PodCIDR.String(), n.PodCIDR6().String()}
	}
	return []string{n.PodCIDR.String()}
}

// register creates the Node object. Its status (addresses, Ready) is written
// separately because the API ignores status on create.
func (n *Node) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nodes := n.cp.Client.CoreV1().Nodes()
	obj, err := nodes.Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   n.Name,
			Labels: map[string]string{corev1.LabelHostname: n.Name, corev1.LabelOSStable: "linux"},
			// A kubelet registers its Node with this annotation; flanneld
			// v0.25.7 writes its own into the map and panics on a Node
			// that has none.
			Annotations: map[string]string{"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
		},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: n.podCIDRs()},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node object: %w", err)
	}
	now := metav1.Now()
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.IP.String()},
		{Type: corev1.NodeHostName, Address: n.Name},
	}
	if n.IP6.IsValid() {
		obj.Status.Addresses = slices.Insert(obj.Status.Addresses, 1, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: n.IP6.String()})
	}
	obj.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "TestbedNode",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if _, err := nodes.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write node status: %w", err)
	}
	return nil
}
