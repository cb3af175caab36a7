package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestPrivilegedCNIVersions runs ADD, CHECK and DEL through libcni, as a
// container runtime does, with the conflist at every version a main plugin
// writes. Stock Flannel's 0.3.1 broke every pod's ADD and DEL before
// palisade accepted it.
func TestPrivilegedCNIVersions(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	agent := node.StartAgent(t, testbed.AgentOptions{})
	cp.CreateNamespace(t, "versions", nil)
	client := agent.Client()
	ctx := context.Background()

	for _, tc := range []struct {
		ver       string
		withCheck bool // CHECK came with 0.4.0
	}{
		{"0.3.0", false}, {"0.3.1", false}, {"0.4.0", true}, {"1.0.0", true}, {"1.1.0", true},
	} {
		t.Run(tc.ver, func(t *testing.T) {
			name := "pod-" + strings.ReplaceAll(tc.ver, ".", "-")
			p := node.PreparePod(t, testbed.MakePod("versions", name, nil, testbed.TCP(80)), testbed.WithCNIVersion(tc.ver))
			if err := p.CNIAdd(ctx); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if got := p.ResultVersion(); got != tc.ver {
				t.Errorf("ADD answered in CNI version %s, want the conflist's %s", got, tc.ver)
			}
			id := agentapi.EndpointID(p.ContainerID, testbed.PodIfName)
			ep, err := client.Get(ctx, id)
			if err != nil {
				t.Fatalf("endpoint after ADD: %v", err)
			}
			if len(ep.IPs) != 1 || ep.IPs[0] != p.IP() {
				t.Errorf("endpoint IPs %v, want the pod's %s", ep.IPs, p.IP())
			}
			_, ifindex := p.HostVeth()
			if err := node.Do(func() error { return bpf.Attached(ifindex) }); err != nil {
				t.Errorf("programs on the host veth after ADD: %v", err)
			}

			err = p.CNICheck(ctx)
			switch {
			case tc.withCheck && err != nil:
				t.Errorf("CHECK: %v", err)
			case !tc.withCheck && (err == nil || !strings.Contains(err.Error(), "CHECK")):
				t.Errorf("CHECK on a %s conflist: %v, want libcni to refuse the verb", tc.ver, err)
			}

			for i := range 2 {
				if err := p.CNIDel(ctx); err != nil {
					t.Fatalf("DEL %d: %v", i+1, err)
				}
			}
			if _, err := client.Get(ctx, id); !errors.Is(err, agentapi.ErrEndpointNotFound) {
				t.Errorf("endpoint after DEL: %v, want not found", err)
			}
		})
	}
}
