package testbed

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedFlannel runs real Flannel on two nodes with each backend:
// flanneld writes each node's subnet.env from its Node's podCIDR and routes
// the other node's pods (through flannel.1 with VXLAN, via the node's
// address with host-gw), and pods wired by kube-flannel's own conflist get
// addresses of their node's range and reach each other across nodes.
func TestPrivilegedFlannel(t *testing.T) {
	privileged.Require(t)
	for _, network := range []PodNetwork{FlannelVXLAN, FlannelHostGW} {
		t.Run(string(network), func(t *testing.T) {
			cp := StartControlPlane(t)
			nodes := []*Node{cp.AddNetworkNode(t, "node-1", 1, network), cp.AddNetworkNode(t, "node-2", 2, network)}
			StartFlannel(t, nodes, false)
			for _, n := range nodes {
				env, err := os.ReadFile(n.SubnetEnv())
				if err != nil {
					t.Fatal(err)
				}
				for _, want := range []string{"FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_SUBNET=10.244." + string(rune('0'+n.Index)) + ".1/24", "FLANNEL_IPMASQ=true"} {
					if !strings.Contains(string(env), want) {
						t.Errorf("node %s subnet.env lacks %s:\n%s", n.Name, want, env)
					}
				}
				var vxlan bool
				if err := n.Do(func() error {
					_, err := netlink.LinkByName("flannel.1")
					vxlan = err == nil
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if vxlan != (network == FlannelVXLAN) {
					t.Errorf("node %s: flannel.1 exists %v with %s", n.Name, vxlan, network)
				}
			}
			a := nodes[0].AddPod(t, MakePod("default", "a", nil, TCP(80)), WithoutPalisade())
			b := nodes[1].AddPod(t, MakePod("default", "b", nil, TCP(80)), WithoutPalisade())
			ctx := context.Background()
			for _, p := range []*Pod{a, b} {
				if !p.Node.PodCIDR.Contains(p.IP()) {
					t.Errorf("pod %s got %s, outside node %s's %s", p, p.IP(), p.Node.Name, p.Node.PodCIDR)
				}
			}
			for _, pair := range [][2]*Pod{{a, b}, {b, a}} {
				if v := Probe(ctx, pair[0], pair[1].IP(), 80, corev1.ProtocolTCP); v.Outcome != Connected {
					t.Errorf("%s -> %s across nodes: %s, want connected", pair[0], pair[1], v)
				}
			}
		})
	}
}

// TestPrivilegedFlannelDualStack runs real Flannel dual-stack (VXLAN) on two
// nodes: flanneld, given EnableIPv6 and the nodes' IPv6 podCIDRs, writes
// both subnets to subnet.env and routes the other node's IPv6 pods through
// flannel-v6.1; kube-flannel's unmodified conflist gives every pod an
// address of each family, a fixed IPv6 address is honoured, the pod's
// status lists both, and IPv6 connects across nodes.
func TestPrivilegedFlannelDualStack(t *testing.T) {
	privileged.Require(t)
	cp := StartControlPlane(t)
	nodes := []*Node{
		cp.AddNetworkNode(t, "node-1", 1, FlannelVXLAN, DualStackNode()),
		cp.AddNetworkNode(t, "node-2", 2, FlannelVXLAN, DualStackNode()),
	}
	StartFlannel(t, nodes, false)
	for _, n := range nodes {
		env, err := os.ReadFile(n.SubnetEnv())
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"FLANNEL_IPV6_NETWORK=" + ClusterCIDR6.String(), "FLANNEL_IPV6_SUBNET=" + n.PodCIDR6().Addr().Next().String() + "/64"} {
			if !strings.Contains(string(env), want) {
				t.Errorf("node %s subnet.env lacks %s:\n%s", n.Name, want, env)
			}
		}
		if err := n.Do(func() error { _, err := netlink.LinkByName("flannel-v6.1"); return err }); err != nil {
			t.Errorf("node %s: no IPv6 VXLAN device: %v", n.Name, err)
		}
	}
	fixed := netip.MustParseAddr("fd00:10:244:2::14")
	a := nodes[0].AddPod(t, MakePod("default", "a", nil, TCP(80)), WithoutPalisade())
	b := nodes[1].AddPod(t, MakePod("default", "b", nil, TCP(80)), WithoutPalisade(), WithIP(fixed))
	ctx := context.Background()
	for _, p := range []*Pod{a, b} {
		ip6, ok := p.IPv6()
		if !ok || !p.Node.PodCIDR6().Contains(ip6) {
			t.Fatalf("pod %s got IPv6 %s (%v), want one in node %s's %s", p, ip6, ok, p.Node.Name, p.Node.PodCIDR6())
		}
		obj, err := cp.Client.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(obj.Status.PodIPs) != 2 || obj.Status.PodIPs[1].IP != ip6.String() {
			t.Errorf("pod %s status podIPs %v, want %s and %s", p, obj.Status.PodIPs, p.IP(), ip6)
		}
	}
	if got, _ := b.IPv6(); got != fixed {
		t.Errorf("pod b got %s, asked for %s", got, fixed)
	}
	for _, pair := range [][2]*Pod{{a, b}, {b, a}} {
		to, _ := pair[1].IPv6()
		if v := Probe(ctx, pair[0], to, 80, corev1.ProtocolTCP); v.Outcome != Connected {
			t.Errorf("%s -> %s over IPv6 across nodes: %s, want connected", pair[0], to, v)
		}
	}
}
