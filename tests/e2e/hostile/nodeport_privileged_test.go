package hostile

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// nodePortSettle bounds how long a change (policy, Service, load-balancer
// status) may take to reach kube-proxy and the datapath.
const nodePortSettle = 20 * time.Second

// Addresses outside the cluster that the Services claim: kube-proxy
// captures them on the pod's node before any route is looked at.
var (
	nodePortExternalIP = map[string]netip.Addr{"db": netip.MustParseAddr("192.0.2.10"), "pub": netip.MustParseAddr("192.0.2.11")}
	nodePortLBIP       = map[string]netip.Addr{"db": netip.MustParseAddr("192.0.2.20"), "pub": netip.MustParseAddr("192.0.2.21")}
)

// nodePortScene is the attack's cluster: two nodes; in victim, db (TCP
// 27017) admits only pods labelled app=friend; in public, pub (TCP 27017)
// admits everyone; attacker has a default deny both ways; open has no
// policy. db and pub run on node-1; each source runs on both nodes. Every
// backend has two Services, port 80 to 27017: "<name>-cluster" (type
// LoadBalancer, externalTrafficPolicy Cluster, an externalIP and a
// load-balancer ingress IP) and "<name>-local" (type NodePort,
// externalTrafficPolicy Local).
type nodePortScene struct {
	c         *testbed.Cluster
	nodePorts map[string]int // by Service name
	// attacker, open and friend are by node: [0] on node-1, [1] on node-2.
	attacker, open, friend [2]*testbed.Pod
	db, pub                *testbed.Pod
}

// nodePortDest is one way to a Service that is not its ClusterIP.
type nodePortDest struct {
	what string
	addr netip.Addr
	port int
}

// nodePortCheck is one probe and the outcome it must have; from is a pod or,
// when nil, node.
type nodePortCheck struct {
	from  *testbed.Pod
	node  *testbed.Node
	dest  nodePortDest
	want  testbed.Outcome
	reply string // the backend that must answer, when connected
}

func (k nodePortCheck) String() string {
	from := fmt.Sprint(k.from)
	if k.from == nil {
		from = k.node.Name
	}
	return fmt.Sprintf("%s -> %s (%s:%d)", from, k.dest.what, k.dest.addr, k.dest.port)
}

func startNodePortScene(t *testing.T, mode testbed.ProxyMode) *nodePortScene {
	t.Helper()
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2, ProxyMode: mode})
	s := &nodePortScene{c: c, nodePorts: map[string]int{}}
	for _, ns := range []string{"victim", "public", "attacker", "open"} {
		c.CreateNamespace(t, ns, nil)
	}
	run := func(namespace, name string, labels map[string]string, node int) *testbed.Pod {
		p := testbed.MakePod(namespace, name, labels, testbed.TCP(27017), testbed.TCP(80))
		p.Spec.NodeName = c.Nodes[node].Name
		return c.RunPod(t, p)
	}
	s.db = run("victim", "db", map[string]string{"app": "db"}, 0)
	s.pub = run("public", "pub", map[string]string{"app": "pub"}, 0)
	for i := range 2 {
		s.attacker[i] = run("attacker", fmt.Sprintf("attacker-%d", i+1), map[string]string{"app": "attacker"}, i)
		s.open[i] = run("open", fmt.Sprintf("open-%d", i+1), map[string]string{"app": "open"}, i)
		s.friend[i] = run("victim", fmt.Sprintf("friend-%d", i+1), map[string]string{"app": "friend"}, i)
	}
	for _, b := range []struct{ ns, name string }{{"victim", "db"}, {"public", "pub"}} {
		s.createService(t, b.ns, b.name+"-cluster", b.name, corev1.ServiceTypeLoadBalancer, corev1.ServiceExternalTrafficPolicyCluster)
		s.createService(t, b.ns, b.name+"-local", b.name, corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal)
	}
	return s
}

// createService creates a Service selecting app=backend, publishes its
// load-balancer IP in its status as a cloud controller would, and waits
// for its endpoint.
func (s *nodePortScene) createService(t *testing.T, namespace, name, backend string, typ corev1.ServiceType, etp corev1.ServiceExternalTrafficPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodePortSettle)
	defer cancel()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.ServiceSpec{
			Type: typ, ExternalTrafficPolicy: etp, Selector: map[string]string{"app": backend},
			Ports: []corev1.ServicePort{{Name: "mongo", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(27017)}},
		},
	}
	if typ == corev1.ServiceTypeLoadBalancer {
		svc.Spec.ExternalIPs = []string{nodePortExternalIP[backend].String()}
	}
	services := s.c.Client.CoreV1().Services(namespace)
	created, err := services.Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", namespace, name, err)
	}
	t.Cleanup(func() { _ = services.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	if typ == corev1.ServiceTypeLoadBalancer {
		created.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: nodePortLBIP[backend].String()}}
		if created, err = services.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("publish the load-balancer IP of %s/%s: %v", namespace, name, err)
		}
	}
	s.nodePorts[name] = int(created.Spec.Ports[0].NodePort)
	if s.nodePorts[name] == 0 {
		t.Fatalf("service %s/%s got no nodePort", namespace, name)
	}
	if err := s.c.WaitEndpoints(ctx, namespace, name, 1); err != nil {
		t.Fatal(err)
	}
}

// dests lists the ways to backend that are not its ClusterIP: every node's
// InternalIP on both Services' NodePorts, and the externalIP and the
// load-balancer IP on the Service port. withGateways adds each node's
// pod-network gateway on the NodePort: kube-proxy's iptables mode accepts
// NodePorts on every local address.
func (s *nodePortScene) dests(backend string, withGateways bool) []nodePortDest {
	var out []nodePortDest
	for _, n := range s.c.Nodes {
		for _, svc := range []string{backend + "-cluster", backend + "-local"} {
			out = append(out, nodePortDest{fmt.Sprintf("%s InternalIP, %s NodePort", n.Name, svc), n.IP, s.nodePorts[svc]})
		}
		if withGateways {
			gw := n.PodCIDR.Addr().Next()
			out = append(out, nodePortDest{fmt.Sprintf("%s pod gateway, %s-cluster NodePort", n.Name, backend), gw, s.nodePorts[backend+"-cluster"]})
		}
	}
	return append(out,
		nodePortDest{backend + "-cluster externalIP", nodePortExternalIP[backend], 80},
		nodePortDest{backend + "-cluster load-balancer IP", nodePortLBIP[backend], 80})
}

// checks pairs each source with each destination.
func nodePortChecks(from []*testbed.Pod, dests []nodePortDest, want testbed.Outcome, reply string) []nodePortCheck {
	var out []nodePortCheck
	for _, p := range from {
		for _, d := range dests {
			out = append(out, nodePortCheck{from: p, dest: d, want: want, reply: reply})
		}
	}
	return out
}

// eventually probes until every check holds in one round, or fails after
// nodePortSettle with the checks that did not.
func (s *nodePortScene) eventually(t *testing.T, checks ...nodePortCheck) {
	t.Helper()
	deadline := time.Now().Add(nodePortSettle)
	for {
		var wrong []string
		verdicts := make([]testbed.Verdict, len(checks))
		done := make(chan struct{}, len(checks))
		for i, k := range checks {
			go func() {
				defer func() { done <- struct{}{} }()
				if k.from != nil {
					verdicts[i] = testbed.Probe(context.Background(), k.from, k.dest.addr, k.dest.port, corev1.ProtocolTCP)
				} else {
					verdicts[i] = k.node.Probe(context.Background(), k.dest.addr, k.dest.port, corev1.ProtocolTCP)
				}
			}()
		}
		for range checks {
			<-done
		}
		for i, k := range checks {
			v := verdicts[i]
			if v.Outcome != k.want || (k.want == testbed.Connected && v.Reply != k.reply) {
				wrong = append(wrong, fmt.Sprintf("%s: %s, want %s %s", k, v, k.want, k.reply))
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s, %d of %d probes wrong:\n%s", nodePortSettle, len(wrong), len(checks), strings.Join(wrong, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (s *nodePortScene) createPolicy(t *testing.T, pol *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodePortSettle)
	defer cancel()
	policies := s.c.Client.NetworkingV1().NetworkPolicies(pol.Namespace)
	if _, err := policies.Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create networkpolicy %s/%s: %v", pol.Namespace, pol.Name, err)
	}
	t.Cleanup(func() { _ = policies.Delete(context.Background(), pol.Name, metav1.DeleteOptions{}) })
}

// TestPrivilegedNodePortIsNotTheNode: a pod that reaches a backend through
// a node address on a NodePort, an externalIP or a load-balancer IP is
// judged as if it had used the ClusterIP. kube-proxy forwards those
// masqueraded as the node, and traffic with the pod's own node is always
// admitted, so before Palisade translated them the attacker's egress deny
// and db's ingress rule were both skipped. On both kube-proxy modes.
func TestPrivilegedNodePortIsNotTheNode(t *testing.T) {
	privileged.Require(t)
	for _, mode := range []testbed.ProxyMode{testbed.ProxyIPTables, testbed.ProxyNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			s := startNodePortScene(t, mode)
			ok, cut := testbed.Connected, testbed.TimedOut
			sources := func(p [2]*testbed.Pod) []*testbed.Pod { return p[:] }

			// Without policy every way works: the matrix below is not
			// cut by a Service kube-proxy or Palisade failed to program.
			// Left out: node-1's pods through node-2's Local NodePort.
			// Alone, kube-proxy on node-2 takes them for its own pods
			// (--cluster-cidr), forwards them unmasqueraded back to
			// node-1, and the backend's reply, never un-DNATed, is
			// lost; Palisade's translation makes them work.
			baseline := func(from [2]*testbed.Pod, backend string) []nodePortCheck {
				return slices.DeleteFunc(nodePortChecks(from[:], s.dests(backend, false), ok, backend), func(k nodePortCheck) bool {
					return k.from == from[0] && k.dest.addr == s.c.Nodes[1].IP && k.dest.port == s.nodePorts[backend+"-local"]
				})
			}
			s.eventually(t, append(baseline(s.open, "db"), baseline(s.attacker, "pub")...)...)

			tcp := corev1.ProtocolTCP
			s.createPolicy(t, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "attacker", Name: "default-deny"},
				Spec: networkingv1.NetworkPolicySpec{
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				},
			})
			s.createPolicy(t, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "victim", Name: "db-from-friends"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "friend"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp}},
					}},
				},
			})

			t.Run("the attacker's egress deny holds on every way to a backend that admits everyone", func(t *testing.T) {
				s.eventually(t, append(
					nodePortChecks(sources(s.attacker), s.dests("pub", true), cut, ""),
					nodePortCheck{from: s.attacker[0], dest: nodePortDest{"pub's pod address", s.pub.IP(), 27017}, want: cut})...)
			})
			t.Run("db's ingress rule holds on every way in for a pod no policy isolates", func(t *testing.T) {
				s.eventually(t, append(
					nodePortChecks(sources(s.open), s.dests("db", true), cut, ""),
					nodePortCheck{from: s.open[0], dest: nodePortDest{"db's pod address", s.db.IP(), 27017}, want: cut})...)
			})
			t.Run("the attacker reaches neither through db's Services", func(t *testing.T) {
				s.eventually(t, nodePortChecks(sources(s.attacker), s.dests("db", true), cut, "")...)
			})
			// After the cuts above, so that db's policy is known to be
			// in force. Friends on node-2 used to be cut too: kube-proxy
			// masqueraded them as node-2, which db does not admit.
			t.Run("a friend reaches db through every node address, externalIP and load-balancer IP, replies included, from either node", func(t *testing.T) {
				s.eventually(t, nodePortChecks(sources(s.friend), s.dests("db", false), ok, "db")...)
			})
			t.Run("the node's own connections are not a pod's: probes and node-local agents still pass", func(t *testing.T) {
				node1 := s.c.Nodes[0]
				s.eventually(t,
					// A kubelet probe of db, which admits friends only,
					// and of a pod under a default deny.
					nodePortCheck{node: node1, dest: nodePortDest{"db's pod address", s.db.IP(), 27017}, want: ok, reply: "db"},
					nodePortCheck{node: node1, dest: nodePortDest{"attacker-1's pod address", s.attacker[0].IP(), 80}, want: ok, reply: "attacker-1"},
					// A node-local agent through its own node's NodePort.
					nodePortCheck{node: node1, dest: nodePortDest{"node-1 InternalIP, db-cluster NodePort", node1.IP, s.nodePorts["db-cluster"]}, want: ok, reply: "db"},
				)
			})
		})
	}
}
