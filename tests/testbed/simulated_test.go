package testbed

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
)

// TestSimPodAt checks the simulated population's address and label plan at
// the bench's largest size: every IP unique, inside the cluster CIDR and its
// node's /24, clear of the real nodes' CIDRs; identities bounded by
// namespaces, not pods.
func TestSimPodAt(t *testing.T) {
	const n = 10000
	opts := SimulatedOptions{}
	opts.defaults()
	realCIDRs := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("10.244.3.0/24")}
	seen := map[netip.Addr]string{}
	names := map[string]bool{}
	labelSets := map[string]bool{}
	perNode := map[string]int{}
	for i := range n {
		p := SimPodAt(opts, i)
		id := p.Namespace + "/" + p.Name
		if prev, ok := seen[p.IP]; ok {
			t.Fatalf("pod %s: IP %s already %s's", id, p.IP, prev)
		}
		seen[p.IP] = id
		if names[id] {
			t.Fatalf("pod %s twice", id)
		}
		names[id] = true
		if !ClusterCIDR.Contains(p.IP) {
			t.Errorf("pod %s: IP %s outside %s", id, p.IP, ClusterCIDR)
		}
		for _, r := range realCIDRs {
			if r.Contains(p.IP) {
				t.Errorf("pod %s: IP %s inside real node CIDR %s", id, p.IP, r)
			}
		}
		var k int
		if _, err := fmt.Sscanf(p.Node, "sim-node-%d", &k); err != nil {
			t.Fatalf("pod %s: node %q: %v", id, p.Node, err)
		}
		if c := simNodeCIDR(opts, k); !c.Contains(p.IP) || p.IP == c.Addr() {
			t.Errorf("pod %s: IP %s not a host address of its node's %s", id, p.IP, c)
		}
		perNode[p.Node]++
		keys := slices.Sorted(maps.Keys(p.Labels))
		set := p.Namespace
		for _, k := range keys {
			set += "," + k + "=" + p.Labels[k]
		}
		labelSets[set] = true
	}
	for node, c := range perNode {
		if c > opts.PodsPerNode {
			t.Errorf("node %s: %d pods, want at most %d", node, c, opts.PodsPerNode)
		}
	}
	namespaces := n / opts.PodsPerNamespace
	if got, want := len(labelSets), namespaces*12; got != want {
		t.Errorf("distinct (namespace, labels): %d, want %d (12 per full namespace)", got, want)
	}
	if got := SimPodAt(opts, 0).Labels["app"]; got != "db" {
		t.Errorf("pod 0 app %q, want db (the first app of a namespace)", got)
	}
}
