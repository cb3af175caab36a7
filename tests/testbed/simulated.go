package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Simulated pods are API objects only: Pods bound (spec.nodeName set at
// create) to Node objects no process stands behind, with an IP, phase
// Running and Ready written to their status as a kubelet would. Agents see
// them as remote pods, which is all a remote pod is to an agent: labels,
// a namespace and an address for the ipcache. They let the testbed hold
// 10 000 pods without 10 000 network namespaces (issue #8 allows this).
//
// The testbed's kube-controller-manager runs no node-lifecycle controller
// (see controllers in kcm.go), so nothing marks a simulated node NotReady
// for its missing heartbeats; the pods still tolerate the not-ready and
// unreachable taints, so that they would stay bound were it ever enabled.

// SimulatedLabel marks every simulated Node, Namespace and Pod.
const SimulatedLabel = "testbed.palisade.dev/simulated"

// SimulatedOptions shape a Simulated population.
type SimulatedOptions struct {
	// PodsPerNode is the pods of one simulated node, at most 250 (they
	// share its /24); default 110, the kubelet's default maximum.
	PodsPerNode int
	// PodsPerNamespace is how many pods fill one namespace before the next
	// is created, so namespaces grow with the cluster; default 100.
	PodsPerNamespace int
	// FirstNodeIndex is the pod CIDR index of the first simulated node
	// (10.244.<index>.0/24); default 100, far above the real nodes'
	// 1, 2, 3 …. Simulated node k has index FirstNodeIndex+k, at most 255.
	FirstNodeIndex int
	// Workers bounds the API requests in flight; default 32.
	Workers int
}

func (o *SimulatedOptions) defaults() {
	if o.PodsPerNode == 0 {
		o.PodsPerNode = 110
	}
	if o.PodsPerNamespace == 0 {
		o.PodsPerNamespace = 100
	}
	if o.FirstNodeIndex == 0 {
		o.FirstNodeIndex = 100
	}
	if o.Workers == 0 {
		o.Workers = 32
	}
}

// Simulated is a growing population of simulated nodes, namespaces and
// pods. Pod i always gets the same node, namespace, name, labels and IP
// (SimPodAt), so growing it is adding pods len..n.
type Simulated struct {
	opts   SimulatedOptions
	cp     *ControlPlane
	client kubernetes.Interface

	mu         sync.Mutex
	pods       int
	nodes      int
	namespaces int
}

// SimPod is where simulated pod i lives and what it looks like.
type SimPod struct {
	Index     int
	Node      string
	Namespace string
	Name      string
	IP        netip.Addr
	Labels    map[string]string
}

// simApps is the pool of app names; each namespace runs simAppsPerNS of
// them, so an app name recurs across namespaces as it does across teams.
const (
	simApps      = 40
	simAppsPerNS = 8
	simTeams     = 7 // team t0…t6, the teams bench's Filler policies name
)

// SimNamespace names simulated namespace k.
func SimNamespace(k int) string { return fmt.Sprintf("sim-%03d", k) }

// SimNamespaceLabels are namespace k's labels: a team (t0…t6) and an
// environment.
func SimNamespaceLabels(k int) map[string]string {
	env := "prod"
	if k%3 == 2 {
		env = "staging"
	}
	return map[string]string{"team": fmt.Sprintf("t%d", k%simTeams), "env": env, SimulatedLabel: "true"}
}

// SimNodeName names simulated node k.
func SimNodeName(k int) string { return fmt.Sprintf("sim-node-%03d", k) }

// SimPodAt is simulated pod i under opts. Within a namespace pod m runs
// app m%8 of the namespace's eight (the first is always "db"), tier
// f<m%8>, and version v2 for every tenth pod (a canary), so a full
// namespace holds 12 distinct label sets: identities grow with namespaces,
// as in a cluster, not with replicas. IPs are unique up to 256-FirstNodeIndex
// nodes' worth of pods (Grow refuses more).
func SimPodAt(opts SimulatedOptions, i int) SimPod {
	opts.defaults()
	node := i / opts.PodsPerNode
	slot := i % opts.PodsPerNode
	ns := i / opts.PodsPerNamespace
	m := i % opts.PodsPerNamespace
	j := m % simAppsPerNS
	app := "db"
	if j > 0 {
		app = fmt.Sprintf("app-%02d", (ns*3+j)%simApps)
	}
	version := "v1"
	if m%10 == 9 {
		version = "v2"
	}
	cidr := simNodeCIDR(opts, node)
	return SimPod{
		Index:     i,
		Node:      SimNodeName(node),
		Namespace: SimNamespace(ns),
		Name:      fmt.Sprintf("%s-%05d", app, i),
		// .0 is the network, .1 the node's bridge in a Flannel-style
		// node: pods from .2.
		IP:     netip.AddrFrom4([4]byte{10, 244, cidr.Addr().As4()[2], byte(2 + slot)}),
		Labels: map[string]string{"app": app, "tier": fmt.Sprintf("f%d", j), "version": version, SimulatedLabel: "true"},
	}
}

func simNodeCIDR(opts SimulatedOptions, node int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(opts.FirstNodeIndex + node), 0}), 24)
}

// simNodeIP is simulated node k's InternalIP: in 198.19.0.0/16, the
// benchmarking range's second half, which no namespace has addresses in.
func simNodeIP(k int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(k >> 8), byte(k)})
}

// NewSimulated checks opts against the real nodes' pod CIDRs and returns
// an empty population. Cleanup deletes every simulated object it created.
func (cp *ControlPlane) NewSimulated(tb TB, opts SimulatedOptions) *Simulated {
	tb.Helper()
	opts.defaults()
	if opts.PodsPerNode < 1 || opts.PodsPerNode > 250 {
		tb.Fatalf("simulated pods: %d pods per node, want 1..250", opts.PodsPerNode)
	}
	cfg := rest.CopyConfig(cp.RestConfig)
	// Thousands of creates: client-side throttling would dominate.
	cfg.QPS, cfg.Burst = 5000, 10000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatalf("simulated pods: client: %v", err)
	}
	s := &Simulated{opts: opts, cp: cp, client: client}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := s.deleteAll(ctx); err != nil {
			tb.Errorf("delete simulated pods: %v", err)
		}
	})
	return s
}

// Options are the population's options, defaults filled in.
func (s *Simulated) Options() SimulatedOptions { return s.opts }

// Pods is how many simulated pods exist.
func (s *Simulated) Pods() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pods
}

// Namespaces names the simulated namespaces that exist.
func (s *Simulated) Namespaces() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, s.namespaces)
	for k := range out {
		out[k] = SimNamespace(k)
	}
	return out
}

// Grow creates simulated pods until there are n, with the nodes and
// namespaces they need, and returns once every new pod is Running with its
// IP in its status. Shrinking is not supported: n below Pods is an error.
func (s *Simulated) Grow(ctx context.Context, n int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n < s.pods {
		return fmt.Errorf("grow simulated pods to %d: already %d", n, s.pods)
	}
	if n == s.pods {
		return nil
	}
	nodes := (n-1)/s.opts.PodsPerNode + 1
	namespaces := (n-1)/s.opts.PodsPerNamespace + 1
	if idx := s.opts.FirstNodeIndex + nodes - 1; idx > 255 {
		return fmt.Errorf("grow simulated pods to %d: node %s would need pod CIDR index %d > 255", n, SimNodeName(nodes-1), idx)
	}
	if err := s.checkCIDRs(nodes); err != nil {
		return err
	}
	if err := s.parallel(ctx, s.nodes, nodes, s.createNode); err != nil {
		return err
	}
	s.nodes = max(s.nodes, nodes)
	if err := s.parallel(ctx, s.namespaces, namespaces, s.createNamespace); err != nil {
		return err
	}
	s.namespaces = max(s.namespaces, namespaces)
	if err := s.parallel(ctx, s.pods, n, s.createPod); err != nil {
		return err
	}
	s.pods = n
	return nil
}

// checkCIDRs fails when a simulated node's /24 overlaps a real node's.
func (s *Simulated) checkCIDRs(nodes int) error {
	s.cp.mu.Lock()
	defer s.cp.mu.Unlock()
	for k := range nodes {
		c := simNodeCIDR(s.opts, k)
		for _, n := range s.cp.nodes {
			if n.PodCIDR.Overlaps(c) {
				return fmt.Errorf("simulated node %s: pod CIDR %s overlaps real node %s", SimNodeName(k), c, n.Name)
			}
		}
	}
	return nil
}

// parallel runs fn(i) for i in [from, to) on the population's workers and
// returns the first error.
func (s *Simulated) parallel(ctx context.Context, from, to int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range s.opts.Workers {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
						cancel()
					}
					mu.Unlock()
				}
			}
		})
	}
feed:
	for i := from; i < to; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}

func (s *Simulated) createNode(ctx context.Context, k int) error {
	name, cidr := SimNodeName(k), simNodeCIDR(s.opts, k).String()
	nodes := s.client.CoreV1().Nodes()
	obj, err := nodes.Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{corev1.LabelHostname: name, corev1.LabelOSStable: "linux", SimulatedLabel: "true"},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create simulated node %s: %w", name, err)
	}
	now := metav1.Now()
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: simNodeIP(k).String()},
		{Type: corev1.NodeHostName, Address: name},
	}
	obj.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "TestbedSimulatedNode",
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	if _, err := nodes.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write simulated node %s status: %w", name, err)
	}
	return nil
}

func (s *Simulated) createNamespace(ctx context.Context, k int) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: SimNamespace(k), Labels: SimNamespaceLabels(k)}}
	if _, err := s.client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create simulated namespace %s: %w", ns.Name, err)
	}
	return nil
}

func (s *Simulated) createPod(ctx context.Context, i int) error {
	sp := SimPodAt(s.opts, i)
	pod := MakePod(sp.Namespace, sp.Name, sp.Labels, TCP(8080))
	pod.Spec.NodeName = sp.Node
	pod.Spec.Tolerations = []corev1.Toleration{
		{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
	}
	pods := s.client.CoreV1().Pods(sp.Namespace)
	obj, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create simulated pod %s/%s: %w", sp.Namespace, sp.Name, err)
	}
	now := metav1.Now()
	ip := sp.IP.String()
	obj.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    simNodeIP(i / s.opts.PodsPerNode).String(),
		PodIP:     ip,
		PodIPs:    []corev1.PodIP{{IP: ip}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	if _, err := pods.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("write simulated pod %s/%s status: %w", sp.Namespace, sp.Name, err)
	}
	return nil
}

// deleteAll deletes the simulated pods (grace 0: no kubelet will confirm),
// their namespaces and nodes, and waits until the pods are gone.
func (s *Simulated) deleteAll(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	zero := int64(0)
	sel := metav1.ListOptions{LabelSelector: SimulatedLabel + "=true"}
	var errs []error
	err := s.parallel(ctx, 0, s.namespaces, func(ctx context.Context, k int) error {
		ns := SimNamespace(k)
		if err := s.client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, sel); err != nil {
			return fmt.Errorf("delete simulated pods of %s: %w", ns, err)
		}
		if err := s.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete simulated namespace %s: %w", ns, err)
		}
		return nil
	})
	errs = append(errs, err)
	if err := s.client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		errs = append(errs, fmt.Errorf("delete simulated nodes: %w", err))
	}
	for {
		l, err := s.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: sel.LabelSelector, Limit: 1})
		if err != nil {
			errs = append(errs, fmt.Errorf("list simulated pods: %w", err))
			break
		}
		if len(l.Items) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("simulated pods still there: %w", ctx.Err()))
			return errors.Join(errs...)
		case <-time.After(200 * time.Millisecond):
		}
	}
	s.pods, s.nodes, s.namespaces = 0, 0, 0
	return errors.Join(errs...)
}
