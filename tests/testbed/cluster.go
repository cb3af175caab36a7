package testbed

import (
	"fmt"
	"sync"
	"time"
)

// ClusterOptions shapes StartCluster's cluster.
type ClusterOptions struct {
	// Nodes is how many nodes (default 3), named node-1 … node-N with
	// pod CIDRs 10.244.1.0/24 … 10.244.N.0/24.
	Nodes int
	// ProxyMode is kube-proxy's mode on every node (default iptables).
	ProxyMode ProxyMode
	// WithoutPalisade runs the pod network alone: no palisade in the
	// chain and no agent, the baseline Flannel gives.
	WithoutPalisade bool
	// Agent tunes each node's palisade-agent.
	Agent AgentOptions
	// ClusterPolicies installs the ClusterNetworkPolicy CRD before the
	// agents start (an agent looks for the resource once, at start).
	ClusterPolicies bool
	// Network connects the pods: FlannelVXLAN (the default),
	// FlannelHostGW, or BridgeChain for CNI 1.x.
	Network PodNetwork
	// DualStack makes every node a DualStackNode: pods get an IPv4 and
	// an IPv6 address, on Flannel as on the bridge chain.
	DualStack bool
}

// Cluster is a whole testbed: control plane (etcd, kube-apiserver,
// kube-controller-manager, a scheduler) and nodes each running flanneld,
// kube-proxy, palisade-agent and a pod runner.
type Cluster struct {
	*ControlPlane
	Nodes  []*Node
	Agents []*Agent // by node; empty WithoutPalisade
	// Proxies are the nodes' kube-proxy processes.
	Proxies []*Process
	// Flanneld are the nodes' flanneld processes; empty on BridgeChain.
	Flanneld []*Process
	Options  ClusterOptions
}

// StartCluster brings a cluster up. Nodes come up in parallel: each waits
// for its own kube-proxy and agent. Cleanup removes all of it.
func StartCluster(tb TB, opts ClusterOptions) *Cluster {
	tb.Helper()
	start := time.Now()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.ProxyMode == "" {
		opts.ProxyMode = ProxyIPTables
	}
	if opts.Network == "" {
		opts.Network = FlannelVXLAN
	}
	c := &Cluster{ControlPlane: StartControlPlane(tb), Options: opts}
	if opts.ClusterPolicies {
		c.InstallClusterPolicyCRD(tb)
	}
	c.StartControllerManager(tb)
	c.StartScheduler(tb)
	for i := range opts.Nodes {
		var nodeOpts []NodeOption
		if opts.DualStack {
			nodeOpts = append(nodeOpts, DualStackNode())
		}
		c.Nodes = append(c.Nodes, c.AddNetworkNode(tb, fmt.Sprintf("node-%d", i+1), i+1, opts.Network, nodeOpts...))
	}
	if opts.Network.Flannel() {
		c.Flanneld = StartFlannel(tb, c.Nodes, !opts.WithoutPalisade)
	}
	c.Proxies = make([]*Process, opts.Nodes)
	if !opts.WithoutPalisade {
		c.Agents = make([]*Agent, opts.Nodes)
		// Build once before the parallel starts race to do it.
		Binaries(tb).Agent(tb)
		Binaries(tb).Plugin(tb)
	}
	// Fatal must not be called from another goroutine, so the parallel
	// part returns errors and a sub-TB collects them.
	var wg sync.WaitGroup
	errs := make([]error, opts.Nodes)
	for i, n := range c.Nodes {
		wg.Go(func() {
			errs[i] = collectFatal(tb, func(tb TB) {
				c.Proxies[i] = n.StartKubeProxy(tb, opts.ProxyMode)
				if !opts.WithoutPalisade {
					c.Agents[i] = n.StartAgent(tb, opts.Agent)
				}
			})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
	var cni []CNIOption
	if opts.WithoutPalisade && !opts.Network.Flannel() {
		cni = append(cni, WithoutPalisade())
	}
	for _, n := range c.Nodes {
		n.StartPodRunner(tb, cni...)
	}
	tb.Logf("cluster of %d nodes (%s, kube-proxy %s, palisade %v) up in %v", opts.Nodes, opts.Network, opts.ProxyMode, !opts.WithoutPalisade, time.Since(start).Round(time.Millisecond))
	return c
}

// collectFatal runs fn with a TB that passes everything to tb except that a
// Fatal ends fn on its own goroutine and comes back as an error.
func collectFatal(tb TB, fn func(TB)) (err error) {
	g := &goroutineTB{TB: tb}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(goroutineFatal)
			if !ok {
				panic(r)
			}
			err = f.err
		}
	}()
	fn(g)
	return nil
}

type goroutineFatal struct{ err error }

type goroutineTB struct{ TB }

func (g *goroutineTB) Fatal(args ...any) {
	panic(goroutineFatal{fmt.Errorf("%s", fmt.Sprint(args...))})
}
func (g *goroutineTB) Fatalf(format string, args ...any) {
	panic(goroutineFatal{fmt.Errorf(format, args...)})
}

// Record passes on to tb, so a Harness still learns what was created.
func (g *goroutineTB) Record(kind, value string) { record(g.TB, kind, value) }
