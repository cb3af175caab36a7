package soak

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// durationEnv sets how long the faults run; without it the soak is
// skipped, since even a short one costs a whole testbed (`make soak`).
const durationEnv = "PALISADE_SOAK_DURATION"

// reportEnv names a file that receives the figures (scripts/soak).
const reportEnv = "PALISADE_SOAK_REPORT"

// settle bounds the wait for the cluster to converge after the faults
// stop: agents resync, adopt and reconcile within seconds; a loaded
// 2-core machine gets a generous margin.
const settle = 90 * time.Second

// ns is the soak's namespace.
const ns = "soak"

// Ports: echo holds the long-lived flows, web answers short probes.
const (
	echoPort = 7000
	webPort  = 80
)

// maxChurnPods bounds the churned pods alive at once.
const maxChurnPods = 6

func TestPrivilegedSoak(t *testing.T) {
	privileged.Require(t)
	raw := os.Getenv(durationEnv)
	if raw == "" {
		t.Skipf("set %s (e.g. 5m) to run the chaos soak: make soak DURATION=5m", durationEnv)
	}
	duration, err := time.ParseDuration(raw)
	if err != nil {
		t.Fatalf("%s=%q: %v", durationEnv, raw, err)
	}
	s := newSoak(t)
	s.run(duration)
	s.checkEnd()
	s.fig.Duration = duration
	report := s.fig.Report()
	t.Logf("soak figures:\n%s", report)
	if path := os.Getenv(reportEnv); path != "" {
		if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
			t.Error(err)
		}
	}
	if n := s.fig.Violations(); n > 0 {
		t.Errorf("%d invariant violations (see the figures above)", n)
	}
}

type soak struct {
	t   *testing.T
	c   *testbed.Cluster
	fig Figures
	rng *rand.Rand // only the fault loop's goroutine uses it

	dbs, clients, intruders []*testbed.Pod
	flannel                 []byte             // kube-flannel's own conflist
	watchers                []*testbed.Process // each node's cni-watch

	mu sync.Mutex
	// churn holds the churned pods by name: running (set once the runner
	// runs it) or nil while it starts; dying ones are removed first.
	churn    map[string]*testbed.Pod
	nextPod  int
	policies []string // churned policy names
	nextPol  int
}

func newSoak(t *testing.T) *soak {
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, Agent: testbed.AgentOptions{AdoptFromCNICache: true}})
	s := &soak{t: t, c: c, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 17)), churn: map[string]*testbed.Pod{}}
	root := testbed.ModuleRoot(t)
	var err error
	if s.flannel, err = os.ReadFile(filepath.Join(root, "conf", "10-flannel.conflist")); err != nil {
		t.Fatal(err)
	}
	// The DaemonSet's cni-watch container: it puts palisade back into the
	// chain whenever Flannel's file replaces it.
	bins := testbed.Binaries(t)
	for _, n := range c.Nodes {
		w := testbed.NewProcess(t, n.NetNS, "cni-watch-"+n.Name, bins.Agent(t), "install-cni",
			"--cni-bin-dir="+n.CNIBinDir(), "--cni-conf-dir="+n.CNIConfDir(),
			"--wait=10m", "--watch=10s", "--plugin-src="+bins.Plugin(t))
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		s.watchers = append(s.watchers, w)
	}
	c.CreateNamespace(t, ns, nil)
	c.CreateNamespace(t, "lab", nil)
	echo := corev1.ContainerPort{Name: testbed.EchoPortPrefix, ContainerPort: echoPort, Protocol: corev1.ProtocolTCP}
	for i, n := range c.Nodes {
		s.dbs = append(s.dbs, c.RunPod(t, onNode(testbed.MakePod(ns, fmt.Sprintf("db-%d", i+1), map[string]string{"role": "db"}, echo, testbed.TCP(webPort)), n)))
		s.clients = append(s.clients, c.RunPod(t, onNode(testbed.MakePod(ns, fmt.Sprintf("fe-%d", i+1), map[string]string{"role": "frontend"}), n)))
		s.intruders = append(s.intruders, c.RunPod(t, onNode(testbed.MakePod(ns, fmt.Sprintf("in-%d", i+1), map[string]string{"role": "other"}), n)))
	}
	// The fixed policies: db admits frontends on the echo port only;
	// churned pods admit frontends on web only. Nothing the soak ever
	// applies admits role=other to either, so any intruder probe that
	// connects is a violation.
	s.createPolicy(ingressFrom("db-ingress", "db", "frontend", echoPort))
	s.createPolicy(ingressFrom("churn-ingress", "churn", "frontend", webPort))
	s.waitFor("the fixed policies to hold", func() bool {
		ctx := context.Background()
		return testbed.Probe(ctx, s.clients[0], s.dbs[1].IP(), echoPort, corev1.ProtocolTCP).Outcome == testbed.Connected &&
			testbed.Probe(ctx, s.intruders[0], s.dbs[1].IP(), echoPort, corev1.ProtocolTCP).Outcome == testbed.TimedOut &&
			testbed.Probe(ctx, s.intruders[1], s.dbs[0].IP(), webPort, corev1.ProtocolTCP).Outcome == testbed.TimedOut
	})
	return s
}

// run injects faults and churn for d while the probe loops run.
func (s *soak) run(d time.Duration) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, cl := range s.clients {
		for _, db := range s.dbs {
			wg.Go(func() { s.establishedFlow(stop, cl, db) })
		}
	}
	for range 2 {
		wg.Go(func() { s.forbiddenProbes(stop) })
	}
	wg.Go(func() { s.allowedProbes(stop) })
	wg.Go(func() { s.podChurn(stop) })
	wg.Go(func() { s.policyChurn(stop) })
	end := time.Now().Add(d)
	lastLog := time.Now()
	for time.Now().Before(end) {
		if time.Since(lastLog) > time.Minute {
			lastLog = time.Now()
			s.t.Logf("soak: %d iterations, %d faults, %d forbidden probes, %d round trips, %d violations",
				s.fig.Iterations.Load(), s.fig.Faults(), s.fig.ForbiddenProbes.Load(), s.fig.RoundTrips.Load(), s.fig.Violations())
		}
		s.fig.Iterations.Add(1)
		s.fault()
		time.Sleep(time.Duration(500+s.rng.IntN(2500)) * time.Millisecond)
	}
	close(stop)
	wg.Wait()
}

// fault injects one fault, chosen at random.
func (s *soak) fault() {
	switch k := s.rng.IntN(10); {
	case k < 6:
		s.killAgent(s.rng.IntN(len(s.c.Agents)))
	case k < 7:
		s.restartAPIServer()
	default:
		s.rewriteConflist(s.rng.IntN(len(s.c.Nodes)))
	}
}

// killAgent SIGKILLs a node's agent, as the OOM killer or a crash does,
// leaves the node without one for a random while, and starts it again.
func (s *soak) killAgent(i int) {
	a := s.c.Agents[i]
	if err := a.Process().Kill(); err != nil {
		s.t.Error(err)
		return
	}
	s.fig.AgentKills.Add(1)
	time.Sleep(time.Duration(s.rng.IntN(1500)) * time.Millisecond)
	if err := a.Start(); err != nil {
		s.fig.Violate("agent did not come back ready after SIGKILL", "node-%d: %v", i+1, err)
		// One more try: the figures already hold the violation.
		_ = a.Process().Kill()
		if err := a.Start(); err != nil {
			s.t.Fatalf("agent on node-%d does not start: %v\n%s", i+1, err, a.Process().LogTail(40))
		}
	}
}

// restartAPIServer stops kube-apiserver (SIGTERM, or SIGKILL at random),
// keeps it down a random while and starts it again.
func (s *soak) restartAPIServer() {
	api := s.c.APIServer
	var err error
	if s.rng.IntN(2) == 0 {
		err = api.Kill()
	} else {
		err = api.Stop()
	}
	if err != nil {
		s.t.Error(err)
		return
	}
	s.fig.APIRestarts.Add(1)
	time.Sleep(time.Duration(s.rng.IntN(3000)) * time.Millisecond)
	if err := api.Start(); err != nil {
		s.t.Fatalf("restart kube-apiserver: %v", err)
	}
	s.waitFor("kube-apiserver to be ready again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := s.c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil
	})
}

// rewriteConflist is kube-flannel's install-cni running again (its own
// conflist, without palisade, over the chained one: cp -f, in place)
// while Palisade's pod restarts too, so that cni-watch is down for a
// random while: a pod started in between runs unprotected until the agent
// adopts it. With cni-watch up the window is a few milliseconds of inotify
// and the soak never hit it.
func (s *soak) rewriteConflist(i int) {
	n, w := s.c.Nodes[i], s.watchers[i]
	if err := w.Kill(); err != nil {
		s.t.Error(err)
		return
	}
	if err := os.WriteFile(filepath.Join(n.CNIConfDir(), "10-flannel.conflist"), s.flannel, 0o644); err != nil {
		s.t.Error(err)
	}
	s.fig.ConflistRewrites.Add(1)
	s.createChurnPod(n)
	time.Sleep(time.Duration(500+s.rng.IntN(1500)) * time.Millisecond)
	if err := w.Start(); err != nil {
		s.t.Fatalf("cni-watch on %s does not start again: %v", n.Name, err)
	}
}

// podChurn creates and deletes role=churn pods on random nodes.
func (s *soak) podChurn(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 29))
	for !stopped(stop, time.Duration(200+rng.IntN(800))*time.Millisecond) {
		s.mu.Lock()
		live := len(s.churn)
		s.mu.Unlock()
		if live < maxChurnPods && (live == 0 || rng.IntN(2) == 0) {
			s.createChurnPod(s.c.Nodes[rng.IntN(len(s.c.Nodes))])
		} else {
			s.deleteChurnPod(rng)
		}
	}
}

func (s *soak) createChurnPod(n *testbed.Node) {
	s.mu.Lock()
	s.nextPod++
	name := fmt.Sprintf("churn-%d", s.nextPod)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	spec := onNode(testbed.MakePod(ns, name, map[string]string{"role": "churn"}, testbed.TCP(webPort)), n)
	if _, err := s.c.Client.CoreV1().Pods(ns).Create(ctx, spec, metav1.CreateOptions{}); err != nil {
		s.fig.APIErrors.Add(1)
		return
	}
	s.fig.PodsCreated.Add(1)
	s.mu.Lock()
	s.churn[name] = nil
	s.mu.Unlock()
}

func (s *soak) deleteChurnPod(rng *rand.Rand) {
	s.mu.Lock()
	names := make([]string, 0, len(s.churn))
	for name := range s.churn {
		names = append(names, name)
	}
	slices.Sort(names)
	if len(names) == 0 {
		s.mu.Unlock()
		return
	}
	name := names[rng.IntN(len(names))]
	// Out of the probe targets before it starts to go: a pod being torn
	// down answers with RSTs once its responders stop.
	delete(s.churn, name)
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	zero := int64(0)
	err := s.c.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		s.fig.APIErrors.Add(1)
		s.mu.Lock()
		s.churn[name] = nil // still there: delete it another time
		s.mu.Unlock()
		return
	}
	s.fig.PodsDeleted.Add(1)
}

// policyChurn adds and removes policies that never admit role=other to
// role=db or role=churn: more for frontends, and policies in another
// namespace. Each change is a new revision every agent compiles.
func (s *soak) policyChurn(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 31))
	for !stopped(stop, time.Duration(300+rng.IntN(1200))*time.Millisecond) {
		s.mu.Lock()
		n := len(s.policies)
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if n < 4 && (n == 0 || rng.IntN(2) == 0) {
			s.mu.Lock()
			s.nextPol++
			name := fmt.Sprintf("extra-%d", s.nextPol)
			s.mu.Unlock()
			var pol *networkingv1.NetworkPolicy
			switch rng.IntN(3) {
			case 0:
				pol = ingressFrom(name, "db", "frontend", webPort)
			case 1:
				pol = ingressFrom(name, "churn", "frontend", int32(8000+rng.IntN(100)))
			default:
				pol = ingressFrom(name, "anything", "frontend", webPort)
				pol.Namespace = "lab"
				pol.Spec.PodSelector = metav1.LabelSelector{}
			}
			if _, err := s.c.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
				s.fig.APIErrors.Add(1)
			} else {
				s.fig.PolicyChanges.Add(1)
				s.mu.Lock()
				s.policies = append(s.policies, pol.Namespace+"/"+name)
				s.mu.Unlock()
			}
		} else {
			s.mu.Lock()
			i := rng.IntN(len(s.policies))
			key := s.policies[i]
			s.mu.Unlock()
			namespace, name, _ := strings.Cut(key, "/")
			err := s.c.Client.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				s.fig.APIErrors.Add(1)
			} else {
				s.fig.PolicyChanges.Add(1)
				s.mu.Lock()
				s.policies = slices.DeleteFunc(s.policies, func(k string) bool { return k == key })
				s.mu.Unlock()
			}
		}
		cancel()
	}
}

// establishedFlow holds one allowed TCP connection from cl to db's echo
// port and makes a round trip on it every 100 ms. A trip that fails is a
// cut flow, whatever the fault at that moment; the flow is then dialled
// again so that the soak goes on measuring.
func (s *soak) establishedFlow(stop <-chan struct{}, cl, db *testbed.Pod) {
	dial := func() (net.Conn, *bufio.Reader) {
		for !stopped(stop, 0) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, err := cl.NetNS.DialContext(ctx, "tcp4", netip.AddrPortFrom(db.IP(), echoPort).String())
			cancel()
			if err == nil {
				r := bufio.NewReader(conn)
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if greeting, err := r.ReadString('\n'); err == nil && greeting == db.Name+"\n" {
					return conn, r
				}
				conn.Close()
			}
			time.Sleep(200 * time.Millisecond)
		}
		return nil, nil
	}
	conn, r := dial()
	for i := 0; conn != nil; i++ {
		if stopped(stop, 100*time.Millisecond) {
			conn.Close()
			return
		}
		line := fmt.Sprintf("%s trip %d", cl.Name, i)
		// Generous: the machine is loaded, and a drop shows as a stall
		// far longer than this (the flow never recovers).
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		_, werr := fmt.Fprintln(conn, line)
		got, rerr := r.ReadString('\n')
		if werr != nil || rerr != nil || got != line+"\n" {
			s.fig.Violate("established allowed flow cut", "%s -> %s: trip %d: write %v, read %q, %v", cl.Name, db.Name, i, werr, got, rerr)
			conn.Close()
			conn, r = dial()
			continue
		}
		s.fig.RoundTrips.Add(1)
	}
}

// target is a probe destination.
type target struct {
	name string
	ip   netip.Addr
	port int
}

// forbiddenProbes probes from the intruders to every protected port: the
// dbs' echo and web ports and the managed churned pods' web port. A probe
// that connects is an admitted forbidden connection. A refused one got
// through the policy too, unless the pod was going away meanwhile.
func (s *soak) forbiddenProbes(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 37))
	for !stopped(stop, 0) {
		from := s.intruders[rng.IntN(len(s.intruders))]
		ts := s.targets(true)
		to := ts[rng.IntN(len(ts))]
		v := testbed.Probe(context.Background(), from, to.ip, to.port, corev1.ProtocolTCP)
		s.fig.ForbiddenProbes.Add(1)
		switch v.Outcome {
		case testbed.Connected:
			s.fig.Violate("forbidden connection admitted", "%s -> %s (%s:%d): %s", from.Name, to.name, to.ip, to.port, v)
		case testbed.Refused:
			if s.stillTarget(to) {
				s.fig.Violate("forbidden connection admitted", "%s -> %s (%s:%d): %s: the SYN reached the pod", from.Name, to.name, to.ip, to.port, v)
			}
		}
	}
}

// allowedProbes opens new allowed connections, frontends to the dbs' echo
// port and to managed churned pods' web port. Failures are counted, not
// violations: a pod can go between choosing it and probing it.
func (s *soak) allowedProbes(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 41))
	for !stopped(stop, 50*time.Millisecond) {
		from := s.clients[rng.IntN(len(s.clients))]
		ts := s.targets(false)
		to := ts[rng.IntN(len(ts))]
		v := testbed.Probe(context.Background(), from, to.ip, to.port, corev1.ProtocolTCP)
		s.fig.AllowedProbes.Add(1)
		if v.Outcome != testbed.Connected && s.stillTarget(to) {
			s.fig.AllowedFailed.Add(1)
		}
	}
}

// targets lists the probe targets: the dbs' echo port (and their web port
// for forbidden probes) and the web port of every churned pod that is
// running and managed by its node's agent.
func (s *soak) targets(forbidden bool) []target {
	var ts []target
	for _, db := range s.dbs {
		ts = append(ts, target{db.Name, db.IP(), echoPort})
		if forbidden {
			ts = append(ts, target{db.Name, db.IP(), webPort})
		}
	}
	s.mu.Lock()
	var starting []string
	for name, p := range s.churn {
		if p == nil {
			starting = append(starting, name)
			continue
		}
		ts = append(ts, target{p.Name, p.IP(), webPort})
	}
	s.mu.Unlock()
	// Asking the agents takes a round trip each: not under the lock.
	for _, name := range starting {
		p := s.c.RunningPod(ns, name)
		if p == nil || !s.managed(p) {
			continue
		}
		s.mu.Lock()
		if q, ok := s.churn[name]; ok && q == nil {
			s.churn[name] = p
			if !bytes.Contains(p.Conflist(), []byte(`"palisade"`)) {
				s.fig.UnchainedPods.Add(1)
			}
			ts = append(ts, target{p.Name, p.IP(), webPort})
		}
		s.mu.Unlock()
	}
	return ts
}

// stillTarget says whether to is still a target: the fixed pods always
// are, a churned pod until the soak starts deleting it.
func (s *soak) stillTarget(to target) bool {
	if !strings.HasPrefix(to.name, "churn-") {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.churn[to.name]
	return ok && p != nil && p.IP() == to.ip
}

// managed says whether p's node agent holds an endpoint with p's address
// and Palisade's programs run on its host veth. An agent being restarted
// does not answer: the pod waits for later. The registry alone is not
// enough: an adopted pod is registered before its programs go on (after
// its policy is in the maps), and an agent killed in between puts them on
// only after its first sync once restarted; until then the pod runs as
// unprotected as it did before the adoption.
func (s *soak) managed(p *testbed.Pod) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ep, err := s.agentOf(p).Client().Get(ctx, agentapi.EndpointID(p.ContainerID, testbed.PodIfName))
	if err != nil || !slices.Contains(ep.IPs, p.IP()) {
		return false
	}
	return p.Node.NetNS.Do(func() error { return bpf.Attached(ep.HostIfIndex) }) == nil
}

func (s *soak) agentOf(p *testbed.Pod) *testbed.Agent {
	for i, n := range s.c.Nodes {
		if n == p.Node {
			return s.c.Agents[i]
		}
	}
	s.t.Fatalf("pod %s on no node of the cluster", p)
	return nil
}

// checkEnd checks, once the faults stopped, that every pod is managed and
// nothing leaked: each agent's endpoints are exactly its node's running
// pods, its link pins and pal_ep entries name only those endpoints, and
// its ipcache holds no pod address that no pod has.
func (s *soak) checkEnd() {
	var last string
	ok := s.eventually(func() bool {
		last = s.endState()
		return last == ""
	})
	if !ok {
		s.fig.Violate("end state", "%s", last)
	}
}

// endState returns what is wrong with the cluster now, or "".
func (s *soak) endState() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := s.c.Client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Sprintf("list pods: %v", err)
	}
	podIPs := map[netip.Addr]bool{}
	var problems []string
	for i, n := range s.c.Nodes {
		a := s.c.Agents[i]
		want := map[string]bool{}
		for _, obj := range list.Items {
			if obj.Spec.NodeName != n.Name {
				continue
			}
			p := s.c.RunningPod(obj.Namespace, obj.Name)
			if p == nil || p.UID != string(obj.UID) || obj.Status.Phase != corev1.PodRunning {
				problems = append(problems, fmt.Sprintf("pod %s/%s is not running on %s", obj.Namespace, obj.Name, n.Name))
				continue
			}
			want[agentapi.EndpointID(p.ContainerID, testbed.PodIfName)] = true
			podIPs[p.IP()] = true
		}
		eps, err := a.Client().List(ctx)
		if err != nil {
			return fmt.Sprintf("list endpoints of %s: %v", n.Name, err)
		}
		have := map[string]bool{}
		ifindexes := map[uint32]bool{}
		for _, ep := range eps {
			have[ep.ID] = true
			ifindexes[uint32(ep.HostIfIndex)] = true
			if !want[ep.ID] {
				problems = append(problems, fmt.Sprintf("%s: leaked endpoint %s (pod %s/%s)", n.Name, ep.ID, ep.PodNamespace, ep.PodName))
			}
		}
		for id := range want {
			if !have[id] {
				problems = append(problems, fmt.Sprintf("%s: pod endpoint %s unmanaged", n.Name, id))
			}
		}
		if v, err := a.Metric("palisade_unmanaged_pods", nil); err != nil || v != 0 {
			problems = append(problems, fmt.Sprintf("%s: palisade_unmanaged_pods %v (%v)", n.Name, v, err))
		}
		problems = append(problems, leakedPins(a, have)...)
		problems = append(problems, leakedEPEntries(a, ifindexes)...)
	}
	for _, a := range s.c.Agents {
		problems = append(problems, leakedIPCache(a, podIPs)...)
	}
	slices.Sort(problems)
	return strings.Join(problems, "; ")
}

// leakedPins are link pins (links/<endpoint>_<direction>) of endpoints the
// agent no longer has.
func leakedPins(a *testbed.Agent, endpoints map[string]bool) []string {
	entries, err := os.ReadDir(filepath.Join(a.BPFRoot(), "links"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []string{fmt.Sprintf("read link pins: %v", err)}
	}
	var out []string
	for _, e := range entries {
		i := strings.LastIndex(e.Name(), "_")
		if i < 0 || !endpoints[e.Name()[:i]] {
			out = append(out, "leaked link pin "+e.Name())
		}
	}
	return out
}

// leakedEPEntries are pal_ep entries (by host ifindex) of no endpoint.
func leakedEPEntries(a *testbed.Agent, ifindexes map[uint32]bool) []string {
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.BPFRoot(), "maps", "pal_ep"), nil)
	if err != nil {
		return []string{fmt.Sprintf("open pal_ep: %v", err)}
	}
	defer m.Close()
	var out []string
	var k uint32
	val := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &val) {
		if !ifindexes[k] {
			out = append(out, fmt.Sprintf("leaked pal_ep entry for ifindex %d", k))
		}
	}
	if err := it.Err(); err != nil {
		out = append(out, fmt.Sprintf("iterate pal_ep: %v", err))
	}
	return out
}

// leakedIPCache are single-address ipcache entries inside the pod network
// that no pod holds any more.
func leakedIPCache(a *testbed.Agent, podIPs map[netip.Addr]bool) []string {
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.BPFRoot(), "maps", "pal_ipcache"), nil)
	if err != nil {
		return []string{fmt.Sprintf("open pal_ipcache: %v", err)}
	}
	defer m.Close()
	podNet := netip.MustParsePrefix("10.244.0.0/16")
	var out []string
	var k bpf.IPCacheKey
	var val bpf.IPCacheValue
	it := m.Iterate()
	for it.Next(&k, &val) {
		p := k.Prefix()
		// Nodes' own addresses in the pod network (cni0, flannel.1) carry
		// reserved identities; pods' start at identity.FirstDynamic.
		// A node pod CIDR's first address is the node's flannel.1, which
		// the agents map to the node's (label-based, dynamic) identity.
		if p.IsSingleIP() && podNet.Contains(p.Addr()) && p.Addr().As4()[3] != 0 && val.Identity >= identity.FirstDynamic && !podIPs[p.Addr()] {
			out = append(out, fmt.Sprintf("leaked ipcache entry %s", p))
		}
	}
	if err := it.Err(); err != nil {
		out = append(out, fmt.Sprintf("iterate pal_ipcache: %v", err))
	}
	return out
}

func (s *soak) createPolicy(pol *networkingv1.NetworkPolicy) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.c.Client.NetworkingV1().NetworkPolicies(pol.Namespace).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

func (s *soak) waitFor(what string, cond func() bool) {
	s.t.Helper()
	if !s.eventually(cond) {
		s.t.Fatalf("timed out after %v waiting for %s", settle, what)
	}
}

func (s *soak) eventually(cond func() bool) bool {
	deadline := time.Now().Add(settle)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(500 * time.Millisecond)
	}
	return true
}

// stopped waits d and says whether stop closed meanwhile.
func stopped(stop <-chan struct{}, d time.Duration) bool {
	if d == 0 {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	select {
	case <-stop:
		return true
	case <-time.After(d):
		return false
	}
}

func onNode(p *corev1.Pod, n *testbed.Node) *corev1.Pod {
	p.Spec.NodeName = n.Name
	return p
}

// ingressFrom admits pods labelled role=from to pods labelled role=target
// on TCP port, in the soak's namespace.
func ingressFrom(name, target, from string, port int32) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(port)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": target}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": from}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}},
			}},
		},
	}
}
