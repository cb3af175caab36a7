package testbed

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// ExternalHost is a machine outside the cluster on the node network, such
// as the seeds' database backup host: a namespace on the underlay with
// host-gw routes to the pod CIDRs of the nodes that existed when it was
// added. An ipBlock policy names its address.
type ExternalHost struct {
	Name  string
	IP    netip.Addr
	NetNS *NetNS
}

// AddExternalHost plugs a host with address ip (inside the underlay) into
// the underlay bridge. Cleanup deletes its namespace and link.
func (cp *ControlPlane) AddExternalHost(tb TB, name string, ip netip.Addr) *ExternalHost {
	tb.Helper()
	if !UnderlayPrefix.Contains(ip) {
		tb.Fatalf("external host %s: %s is outside the underlay %s", name, ip, UnderlayPrefix)
	}
	h := &ExternalHost{Name: name, IP: ip, NetNS: NewNetNS(tb, "pal-ext")}
	if err := cp.plugUnderlay(fmt.Sprintf("ulx%d", ip.As4()[3]), h.NetNS, ip); err != nil {
		tb.Fatalf("external host %s: %v", name, err)
	}
	cp.mu.Lock()
	nodes := append([]*Node(nil), cp.nodes...)
	cp.mu.Unlock()
	err := h.NetNS.Do(func() error {
		for _, n := range nodes {
			if err := addRoute(n.PodCIDR, n.IP); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("external host %s: %v", name, err)
	}
	return h
}

func (h *ExternalHost) String() string { return h.Name }

// Probe connects from the host to to:port; see Probe.
func (h *ExternalHost) Probe(ctx context.Context, to netip.Addr, port int, proto corev1.Protocol) Verdict {
	return probeFrom(ctx, h.NetNS, to, port, proto)
}
