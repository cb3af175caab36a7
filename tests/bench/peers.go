package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// Peer is a NetworkPolicy engine the benchmark runs in place of Palisade,
// one process per node, as its own documentation deploys it.
type Peer struct {
	Name string
	// Module is the Go module tests/peers/go.mod pins it from.
	Module string
	// argv is its command line on node n; env holds files it needs there.
	argv func(bin string, c *testbed.Cluster, n *testbed.Node, env peerEnv) []string
	// readyURL answers 200 inside the node once the peer is up.
	readyURL string
	// metricsURL and syncHistogram, when set, give the time of the
	// peer's own syncs (Prometheus text format).
	metricsURL, syncHistogram string
	// diagnose, when set, says what on this machine keeps the peer from
	// enforcing, checked independently of the peer.
	diagnose func(n *testbed.Node) string
	// inCluster: it reads only the in-cluster config (a service account
	// token and CA under /var/run/secrets), no kubeconfig flag.
	inCluster bool
}

// peerEnv is what the test prepares for a peer on a node.
type peerEnv struct {
	// secrets holds token and ca.crt for in-cluster configuration.
	secrets string
}

// Peers are the engines a Flannel user would otherwise install.
var Peers = []Peer{
	{
		Name:   "kube-router",
		Module: "github.com/cloudnativelabs/kube-router/v2",
		// Firewall only, as docs/user-guide.md "running as agent" and
		// daemonset/kube-router-firewall-daemonset.yaml run it: the pod
		// network stays the testbed's bridge.
		argv: func(bin string, c *testbed.Cluster, n *testbed.Node, _ peerEnv) []string {
			return []string{bin,
				"--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
				"--kubeconfig=" + c.Kubeconfig(),
				"--hostname-override=" + n.Name,
				"--service-cluster-ip-range=" + testbed.ServiceCIDR.String(),
				"--health-port=20244",
				// docs/metrics.md: for the time of its iptables syncs.
				"--metrics-port=20241",
			}
		},
		readyURL:      "http://127.0.0.1:20244/healthz",
		metricsURL:    "http://127.0.0.1:20241/metrics",
		syncHistogram: "kube_router_controller_iptables_sync_time",
	},
	{
		Name:   "kube-network-policies",
		Module: "sigs.k8s.io/kube-network-policies",
		// The flags of its install.yaml, plus --disable-nri: the testbed has
		// no container runtime, hence no NRI socket. It only reads the
		// in-cluster config, so it runs in a mount namespace of its own
		// whose /run holds the service account files a kubelet would
		// mount; the host's /run is untouched.
		argv: func(bin string, c *testbed.Cluster, n *testbed.Node, env peerEnv) []string {
			const sa = "/run/secrets/kubernetes.io/serviceaccount"
			script := `mount -t tmpfs tmpfs /run && mkdir -p ` + sa + ` && cp "$0/token" "$0/ca.crt" ` + sa + `/ && exec "$@"`
			return []string{"/usr/bin/env",
				"KUBERNETES_SERVICE_HOST=" + testbed.APIServerIP.String(), "KUBERNETES_SERVICE_PORT=6443",
				"unshare", "--mount", "--propagation", "private", "--",
				"sh", "-c", script, env.secrets,
				bin, "--hostname-override=" + n.Name, "--v=2", "--nfqueue-id=98",
				"--disable-nri", "--metrics-bind-address=127.0.0.1:9080",
			}
		},
		readyURL:  "http://127.0.0.1:9080/metrics",
		inCluster: true,
		diagnose:  nftQueueCheck,
	},
}

// PeerBinDir runs scripts/peers-build, which builds the peers once, and
// returns the directory holding them.
func PeerBinDir(tb testbed.TB) string {
	tb.Helper()
	root := testbed.ModuleRoot(tb)
	cmd := exec.Command(filepath.Join(root, "scripts", "peers-build"))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("scripts/peers-build: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// PeerVersion reads the version of module pinned in tests/peers/go.mod.
func PeerVersion(root, module string) (string, error) {
	f, err := os.Open(filepath.Join(root, "tests", "peers", "go.mod"))
	if err != nil {
		return "", fmt.Errorf("read peer versions: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) >= 2 && fields[0] == module {
			return fields[1], nil
		}
	}
	return "", fmt.Errorf("read peer versions: %s not in tests/peers/go.mod", module)
}

// startPeer runs the peer inside node n and waits until it answers on its
// ready URL. An error (exit, or no answer in time) carries the lines of its
// log that say why.
func startPeer(t testbed.TB, p Peer, bin string, c *testbed.Cluster, n *testbed.Node) (*testbed.Process, []string, error) {
	t.Helper()
	env := peerEnv{}
	if p.inCluster {
		dir, err := writeServiceAccount(c, n, t.TempDir())
		if err != nil {
			return nil, nil, err
		}
		env.secrets = dir
	}
	argv := p.argv(bin, c, n, env)
	proc := testbed.NewProcess(t, n.NetNS, p.Name+"-"+n.Name, argv...)
	if err := proc.Start(); err != nil {
		return nil, argv, err
	}
	for _, url := range []string{p.readyURL, p.metricsURL} {
		if url == "" {
			continue
		}
		if err := waitPeerReady(proc, n, url, 60*time.Second); err != nil {
			return proc, argv, fmt.Errorf("start %s on %s: %w%s", p.Name, n.Name, err, logErrors(proc))
		}
	}
	return proc, argv, nil
}

func waitPeerReady(proc *testbed.Process, n *testbed.Node, url string, timeout time.Duration) error {
	client := nodeHTTPClient(n)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-proc.Exited():
			return fmt.Errorf("exited (%v)", proc.ExitErr())
		default:
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready within %v: %w", url, timeout, last)
}

func nodeHTTPClient(n *testbed.Node) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.NetNS.DialContext(ctx, network, addr)
		}},
	}
}

// peerSyncs reads the count and sum (seconds) of the peer's sync histogram.
func peerSyncs(n *testbed.Node, p Peer) (count, sum float64, err error) {
	client := nodeHTTPClient(n)
	defer client.CloseIdleConnections()
	resp, err := client.Get(p.metricsURL)
	if err != nil {
		return 0, 0, fmt.Errorf("fetch %s metrics on %s: %w", p.Name, n.Name, err)
	}
	defer resp.Body.Close()
	m, err := ParseMetrics(resp.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("fetch %s metrics on %s: %w", p.Name, n.Name, err)
	}
	return m[p.syncHistogram+"_count"], m[p.syncHistogram+"_sum"], nil
}

// waitPeersIdle waits until every process has used less than idleCPU of CPU in
// each of two consecutive seconds, so that a backlog of syncs left by the
// last changes is not charged to the next measurement. It returns how long
// that took.
func waitPeersIdle(procs []*testbed.Process, timeout time.Duration) (time.Duration, error) {
	const idleCPU = 0.05 // seconds of CPU per second
	start := time.Now()
	last := make([]float64, len(procs))
	quiet := 0
	for quiet < 2 {
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("peer still busy after %v", timeout)
		}
		busy := false
		for i, proc := range procs {
			cpu, err := cpuSeconds(proc.PID())
			if err != nil {
				return time.Since(start), err
			}
			busy = busy || cpu-last[i] >= idleCPU
			last[i] = cpu
		}
		if busy {
			quiet = 0
		} else {
			quiet++
		}
		time.Sleep(time.Second)
	}
	return time.Since(start), nil
}
