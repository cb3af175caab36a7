package testbed

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// controllers are the kube-controller-manager loops the testbed needs:
// EndpointSlices for Services with selectors (what kube-proxy and the
// agent's Service translation read), namespace deletion (which empties a
// namespace), and garbage collection (which deletes the EndpointSlices a
// deleted Service owns). The service-account controllers stay off: the
// API server admits pods without ServiceAccounts (see StartControlPlane).
var controllers = []string{
	"endpointslice-controller",
	"endpointslice-mirroring-controller",
	"namespace-controller",
	"garbage-collector-controller",
}

// StartControllerManager runs kube-controller-manager in the control plane's
// namespace, without leader election and without a serving port, and waits
// until the EndpointSlice controller has written the slice of the
// `kubernetes` Service. Cleanup stops it.
func (cp *ControlPlane) StartControllerManager(tb TB) *Process {
	tb.Helper()
	start := time.Now()
	kcm := StartProcess(tb, cp.NetNS, "kube-controller-manager", filepath.Join(KubeBinDir(tb), "kube-controller-manager"),
		"--kubeconfig="+cp.kubeconfig,
		"--leader-elect=false",
		"--controllers="+strings.Join(controllers, ","),
		// Nothing scrapes or probes it; no port, no delegated authn.
		"--secure-port=0",
		"--use-service-account-credentials=false",
		// The defaults (a few seconds) are tuned for large clusters;
		// tests want namespace deletion and slices promptly.
		"--endpointslice-updates-batch-period=0s",
		"--namespace-sync-period=1m",
		"--v=1",
	)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	// A Service selecting nothing still gets an (empty) EndpointSlice from
	// the controller: its appearance proves the controller is syncing.
	const probe = "palisade-kcm-probe"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: probe},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"palisade.dev/nothing": "selected"},
			Ports:    []corev1.ServicePort{{Port: 1, Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := cp.Client.CoreV1().Services(metav1.NamespaceDefault).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create service %s: %v", probe, err)
	}
	for {
		slices, err := cp.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + probe})
		if err == nil && len(slices.Items) > 0 {
			break
		}
		select {
		case <-kcm.Exited():
			tb.Fatalf("kube-controller-manager exited while starting: %v\n%s", kcm.ExitErr(), kcm.LogTail(logTailLines))
		case <-ctx.Done():
			tb.Fatalf("wait for kube-controller-manager to write an EndpointSlice (%v): err %v\n%s", readyTimeout, err, kcm.LogTail(logTailLines))
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The garbage collector deletes the slice with its owner.
	if err := cp.Client.CoreV1().Services(metav1.NamespaceDefault).Delete(ctx, probe, metav1.DeleteOptions{}); err != nil {
		tb.Fatalf("delete service %s: %v", probe, err)
	}
	tb.Logf("kube-controller-manager syncing in %v", time.Since(start).Round(time.Millisecond))
	return kcm
}

// kubeProxyHealthAddr is per node: each node namespace has its own loopback.
const kubeProxyHealthAddr = "127.0.0.1:10256"

// ProxyMode is kube-proxy's --proxy-mode.
type ProxyMode string

// The kube-proxy modes the testbed runs.
const (
	ProxyIPTables ProxyMode = "iptables"
	ProxyNFTables ProxyMode = "nftables"
)

// StartKubeProxy runs kube-proxy in the node's namespace in mode and waits
// until its health check says its rules are synced. Cleanup stops it; its
// rules die with the namespace.
func (n *Node) StartKubeProxy(tb TB, mode ProxyMode) *Process {
	tb.Helper()
	start := time.Now()
	// Replies from a backend to a client on the same bridge are bridged,
	// not routed: without this (per-netns on this kernel) they skip
	// netfilter, are never un-DNATed, and the client drops them.
	bridgeNF := []string{"net/bridge/bridge-nf-call-iptables"}
	clusterCIDR := ClusterCIDR.String()
	if n.DualStack {
		// The same for IPv6 Services, and one cluster CIDR per family,
		// as kube-proxy wants on a dual-stack node.
		bridgeNF = append(bridgeNF, "net/bridge/bridge-nf-call-ip6tables")
		clusterCIDR += "," + ClusterCIDR6.String()
	}
	for _, key := range bridgeNF {
		if err := n.NetNS.Sysctl(key, "1"); err != nil {
			tb.Fatalf("node %s: %v (is br_netfilter loaded?)", n.Name, err)
		}
	}
	p := StartProcess(tb, n.NetNS, "kube-proxy-"+n.Name, filepath.Join(KubeBinDir(tb), "kube-proxy"),
		"--kubeconfig="+n.cp.kubeconfig,
		"--hostname-override="+n.Name,
		"--cluster-cidr="+clusterCIDR,
		"--proxy-mode="+string(mode),
		// 0 leaves the conntrack sysctls alone: nf_conntrack_max is
		// global, and the host's is not the testbed's to change.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address="+kubeProxyHealthAddr,
		// Every Service change is programmed at once: tests wait for it.
		"--iptables-min-sync-period=0",
		"--v=1",
	)
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := waitHTTP(ctx, n.NetNS, "http://"+kubeProxyHealthAddr+"/healthz", p); err != nil {
		tb.Fatalf("kube-proxy on node %s: %v\n%s", n.Name, err, p.LogTail(logTailLines))
	}
	tb.Logf("kube-proxy (%s) on node %s synced in %v", mode, n.Name, time.Since(start).Round(time.Millisecond))
	return p
}

// waitHTTP polls url from inside netns until it answers 200, p exits or ctx
// ends.
func waitHTTP(ctx context.Context, netns *NetNS, url string, p *Process) error {
	client := httpClientIn(netns)
	var last error
	for {
		req, err := newGet(ctx, url)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		last = err
		select {
		case <-p.Exited():
			return fmt.Errorf("exited (%v) while waiting for %s: %w", p.ExitErr(), url, last)
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %v)", url, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
