// Package kernel gives privileged tests a private network namespace with
// veths whose host ends stand in for pods' host-side interfaces, so that
// programs run through BPF_PROG_TEST_RUN see real ifindexes.
package kernel

import (
	"fmt"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// NetNSWithVeths creates a network namespace holding n veth pairs and
// returns it with the ifindexes of the first end of each. Cleanup removes
// the namespace and with it the veths.
func NetNSWithVeths(tb testing.TB, n int) (ns.NetNS, []int) {
	tb.Helper()
	privileged.Require(tb)
	netns, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() {
		netns.Close()
		_ = testutils.UnmountNS(netns)
	})
	var ifindexes []int
	err = netns.Do(func(ns.NetNS) error {
		for i := range n {
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("pal-ep%d", i)}, PeerName: fmt.Sprintf("pal-pod%d", i)}
			if err := netlink.LinkAdd(veth); err != nil {
				return fmt.Errorf("add veth %d: %w", i, err)
			}
			l, err := netlink.LinkByName(veth.Name)
			if err != nil {
				return err
			}
			ifindexes = append(ifindexes, l.Attrs().Index)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return netns, ifindexes
}
