package demo

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// keep leaves the cluster up after the last step until SIGINT or SIGTERM.
var keep = flag.Bool("demo.keep", false, "keep the testbed up after the demo, until ^C")

// terminal says the demo's output ends on a terminal: the binary itself
// writes into scripts/demo's filters, so only the script can tell.
var terminal = flag.Bool("demo.terminal", false, "the output goes to a terminal: colour the matrices (unless NO_COLOR or TERM=dumb)")

// settle bounds how long a step may take to reach the datapath.
const settle = 15 * time.Second

// backupIP is the seeds' database backup host, outside the cluster.
var backupIP = netip.MustParseAddr("198.18.0.250")

type step struct {
	title string
	do    func(t *testing.T)
	// want lists, per source (rows in order), which targets it reaches.
	want [][]bool
}

// TestPrivilegedDemo is `make demo`: three nodes, the seeds' 3-tier app in
// namespace prod (frontend :80, api :5000, db :27017), two pods in dev (one
// of them an api-pod by label), a DNS stand-in in kube-system behind the
// kube-dns Service (UDP/TCP 53, UDP 1053), and a backup host outside the
// cluster; then the seeds' policies step by step, with the matrix after
// each, and last a cluster admin's ClusterNetworkPolicy that overrides an
// allow of prod's own.
func TestPrivilegedDemo(t *testing.T) {
	privileged.Require(t)
	start := time.Now()
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 3, ClusterPolicies: true})
	up := time.Since(start)
	c.CreateNamespace(t, "prod", map[string]string{"name": "prod"})
	c.CreateNamespace(t, "dev", map[string]string{"name": "dev"})
	run := func(ns, name, node string, labels map[string]string, ports ...corev1.ContainerPort) *testbed.Pod {
		p := testbed.MakePod(ns, name, labels, ports...)
		p.Spec.NodeName = node
		return c.RunPod(t, p)
	}
	frontend := run("prod", "frontend", "node-1", map[string]string{"role": "frontend"}, testbed.TCP(80))
	api := run("prod", "api", "node-2", map[string]string{"role": "api", "name": "api-pod"}, testbed.TCP(5000))
	db := run("prod", "db", "node-3", map[string]string{"role": "db"}, testbed.TCP(27017))
	devAPI := run("dev", "api", "node-1", map[string]string{"role": "api", "name": "api-pod"}, testbed.TCP(5000))
	devTester := run("dev", "tester", "node-3", map[string]string{"role": "tester"}, testbed.TCP(80))
	run("kube-system", "coredns", "node-2", map[string]string{"k8s-app": "kube-dns"}, testbed.UDP(53), testbed.TCP(53), testbed.UDP(1053))
	dnsVIP := c.CreateService(t, "kube-system", "kube-dns", map[string]string{"k8s-app": "kube-dns"},
		testbed.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, Target: intstr.FromInt32(53)},
		testbed.ServicePort{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, Target: intstr.FromInt32(53)},
		testbed.ServicePort{Name: "dns-alt", Protocol: corev1.ProtocolUDP, Port: 1053, Target: intstr.FromInt32(1053)})
	backup := c.AddExternalHost(t, "backup (outside)", backupIP)
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	if err := c.WaitEndpoints(ctx, "kube-system", "kube-dns", 1); err != nil {
		t.Fatal(err)
	}

	from := []Source{PodSource(frontend), PodSource(api), PodSource(db), PodSource(devAPI), PodSource(devTester),
		{Name: backup.Name, Probe: backup.Probe}}
	pod := func(p *testbed.Pod, port int) Target {
		return Target{Name: p.String(), IP: p.IP(), Port: port, Proto: corev1.ProtocolTCP, Self: p.String()}
	}
	to := []Target{
		pod(frontend, 80), pod(api, 5000), pod(db, 27017),
		{Name: "svc/kube-dns", IP: dnsVIP, Port: 53, Proto: corev1.ProtocolUDP},
		{Name: "svc/kube-dns", IP: dnsVIP, Port: 1053, Proto: corev1.ProtocolUDP},
		pod(devAPI, 5000), pod(devTester, 80),
	}
	policy := func(name string) string { return filepath.Join(testbed.ModuleRoot(t), "conf", "policies", name) }
	const y, n = true, false
	// Columns: frontend:80 api:5000 db:27017 dns/53 dns/1053 dev/api:5000 dev/tester:80.
	// The backup host has no route to the Service range (it is not a node),
	// so its DNS cells are ✗ throughout.
	steps := []step{
		{"No policy: Flannel alone, everything reaches everything", func(*testing.T) {}, [][]bool{
			{y, y, y, y, y, y, y},
			{y, y, y, y, y, y, y},
			{y, y, y, y, y, y, y},
			{y, y, y, y, y, y, y},
			{y, y, y, y, y, y, y},
			{y, y, y, n, n, y, y},
		}},
		{"default-deny (Ingress+Egress) in prod: prod neither accepts nor opens connections", func(t *testing.T) {
			c.ApplyPolicy(t, "prod", policy("default-deny.yaml"))
		}, [][]bool{
			{y, n, n, n, n, n, n},
			{n, y, n, n, n, n, n},
			{n, n, y, n, n, n, n},
			{n, n, n, y, y, y, y},
			{n, n, n, y, y, y, y},
			{n, n, n, n, n, y, y},
		}},
		{"allow-dns-kube-dns in prod: prod may query kube-dns (through its ClusterIP), nothing more", func(t *testing.T) {
			c.ApplyPolicy(t, "prod", policy("demo/allow-dns-kube-dns.yaml"))
		}, [][]bool{
			{y, n, n, y, y, n, n},
			{n, y, n, y, y, n, n},
			{n, n, y, y, y, n, n},
			{n, n, n, y, y, y, y},
			{n, n, n, y, y, y, y},
			{n, n, n, n, n, y, y},
		}},
		{"tier-frontend, tier-api, db-network-policy: world→frontend:80→api:5000→db:27017; dev's api-pod is not prod's", func(t *testing.T) {
			c.ApplyPolicy(t, "prod", policy("demo/tier-frontend.yaml"))
			c.ApplyPolicy(t, "prod", policy("demo/tier-api.yaml"))
			c.ApplyPolicy(t, "prod", policy("demo/db-network-policy.yaml"))
		}, [][]bool{
			{y, y, n, y, y, n, n},
			{n, y, y, y, y, n, n},
			{n, n, y, y, y, n, n},
			{y, n, n, y, y, y, y},
			{y, n, n, y, y, y, y},
			{y, n, n, n, n, y, y},
		}},
		{"namespace-isolation in dev: dev accepts only dev", func(t *testing.T) {
			c.ApplyPolicy(t, "dev", policy("demo/namespace-isolation.yaml"))
		}, [][]bool{
			{y, y, n, y, y, n, n},
			{n, y, y, y, y, n, n},
			{n, n, y, y, y, n, n},
			{y, n, n, y, y, y, y},
			{y, n, n, y, y, y, y},
			{y, n, n, n, n, n, n},
		}},
		{"db-backup-ipblock: the backup host outside the cluster reaches db:27017 by address", func(t *testing.T) {
			c.ApplyPolicy(t, "prod", policy("demo/db-backup-ipblock.yaml"))
		}, [][]bool{
			{y, y, n, y, y, n, n},
			{n, y, y, y, y, n, n},
			{n, n, y, y, y, n, n},
			{y, n, n, y, y, y, y},
			{y, n, n, y, y, y, y},
			{y, n, y, n, n, n, n},
		}},
		{"admin-deny-dev-to-prod (ClusterNetworkPolicy, Admin tier): dev no longer reaches prod's frontend, though tier-frontend still allows it", func(t *testing.T) {
			c.ApplyClusterPolicy(t, readClusterPolicy(t, filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "cluster", "admin-deny-dev-to-prod.yaml")))
		}, [][]bool{
			{y, y, n, y, y, n, n},
			{n, y, y, y, y, n, n},
			{n, n, y, y, y, n, n},
			{n, n, n, y, y, y, y},
			{n, n, n, y, y, y, y},
			{y, n, y, n, n, n, n},
		}},
	}

	out := os.Stdout
	fmt.Fprintf(out, "\nTestbed up in %s: 3 nodes (kube-proxy, palisade-agent, pod runner each); pods placed in %s\n",
		up.Round(time.Millisecond), (time.Since(start) - up).Round(time.Millisecond))
	fmt.Fprintf(out, "  prod/frontend@node-1 prod/api@node-2 prod/db@node-3 dev/api@node-1 dev/tester@node-3 kube-system/coredns@node-2 (kube-dns %s), backup host %s\n", dnsVIP, backupIP)
	var prev *Matrix
	for i, s := range steps {
		s.do(t)
		want := Matrix{From: from, To: to, OK: s.want}
		got := waitFor(from, to, want)
		fmt.Fprintf(out, "\nStep %d. %s\n", i, s.title)
		got.Print(out, prev, Color(*terminal, os.Getenv))
		if prev != nil {
			fmt.Fprintf(out, "  %d cells changed\n", got.Changed(prev))
		}
		if !got.Equal(want) {
			fmt.Fprintln(out, "  expected:")
			want.Print(out, nil, Color(*terminal, os.Getenv))
			t.Fatalf("step %d: reachability differs from the API's meaning", i)
		}
		prev = &got
	}
	fmt.Fprintf(out, "\n✓ reaches  ✗ dropped  * changed by the step  · itself   (demo ran in %s)\n", time.Since(start).Round(time.Millisecond))
	if *keep {
		kubeDir := testbed.KubeBinDir(t)
		fmt.Fprintf(out, "\nThe testbed stays up until ^C. kubectl runs inside the control plane's namespace:\n"+
			"  ip netns exec %s %s/kubectl --kubeconfig %s get pods -A -o wide\n"+
			"  ip netns exec %s %s/kubectl --kubeconfig %s get networkpolicies -A\n",
			c.NetNS.Name(), kubeDir, c.Kubeconfig(), c.NetNS.Name(), kubeDir, c.Kubeconfig())
		sig, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		<-sig.Done()
		fmt.Fprintln(out, "tearing down")
	}
}

// waitFor probes the matrix until it equals want or settle passes, and
// returns the last one measured.
func waitFor(from []Source, to []Target, want Matrix) Matrix {
	deadline := time.Now().Add(settle)
	for {
		m := measure(from, to)
		if m.Equal(want) || time.Now().After(deadline) {
			return m
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// measure probes every cell in parallel.
func measure(from []Source, to []Target) Matrix {
	m := Matrix{From: from, To: to, OK: make([][]bool, len(from))}
	done := make(chan struct{})
	sem := make(chan struct{}, 32)
	for i, f := range from {
		m.OK[i] = make([]bool, len(to))
		for j, t := range to {
			go func() {
				sem <- struct{}{}
				defer func() { <-sem; done <- struct{}{} }()
				m.OK[i][j] = f.Probe(context.Background(), t.IP, t.Port, t.Proto).Outcome == testbed.Connected
			}()
		}
	}
	for range len(from) * len(to) {
		<-done
	}
	return m
}

// readClusterPolicy reads a ClusterNetworkPolicy manifest, as kubectl
// apply would take it.
func readClusterPolicy(t *testing.T, path string) *cnpv1.ClusterNetworkPolicy {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := &cnpv1.ClusterNetworkPolicy{}
	if err := yaml.UnmarshalStrict(raw, p); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return p
}
