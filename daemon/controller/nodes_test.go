package controller

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, podCIDRs []string, addrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	return n
}

func TestNodeAddresses(t *testing.T) {
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	legacy := node("node-3", nil, "198.18.0.13")
	legacy.Spec.PodCIDR = "10.244.3.0/24"
	tests := []struct {
		name       string
		nodes      []*corev1.Node
		own, other []netip.Addr
	}{
		{
			name:  "a remote node's VXLAN address is that node, ours is us",
			nodes: []*corev1.Node{node("node-1", []string{"10.244.1.0/24"}, "198.18.0.11"), node("node-2", []string{"10.244.2.0/24"}, "198.18.0.12")},
			own:   addrs("198.18.0.11", "10.244.1.0"),
			other: addrs("198.18.0.12", "10.244.2.0"),
		},
		{
			name:  "dual stack gives both families' first addresses",
			nodes: []*corev1.Node{node("node-2", []string{"10.244.2.0/24", "fd00:10:244:2::/64"}, "198.18.0.12")},
			other: addrs("198.18.0.12", "10.244.2.0", "fd00:10:244:2::"),
		},
		{
			name:  "spec.podCIDR alone counts",
			nodes: []*corev1.Node{legacy},
			other: addrs("198.18.0.13", "10.244.3.0"),
		},
		{
			name:  "a host name or a broken CIDR is skipped",
			nodes: []*corev1.Node{node("node-2", []string{"10.244.2.0/33"}, "node-2", "198.18.0.12")},
			other: addrs("198.18.0.12"),
		},
		{
			name:  "a node without pod CIDR is known by its status",
			nodes: []*corev1.Node{node("node-1", nil, "198.18.0.11")},
			own:   addrs("198.18.0.11"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			own, other := nodeAddresses(tc.nodes, "node-1")
			if diff := cmp.Diff(tc.own, own, cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("own (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.other, other, cmpopts.EquateEmpty(), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
				t.Errorf("remote (-want +got):\n%s", diff)
			}
		})
	}
}
