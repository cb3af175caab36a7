package policy

import (
	"net/netip"
	"slices"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// The cluster every case starts from: namespaces prod and dev, pods in
// both, the subject "server" (local endpoint) in prod.
var (
	nodeIP    = netip.MustParseAddr("198.18.0.11")
	serverIP  = netip.MustParseAddr("10.244.1.10")
	clientIP  = netip.MustParseAddr("10.244.1.11") // prod, role=frontend
	otherIP   = netip.MustParseAddr("10.244.1.12") // prod, role=batch
	devIP     = netip.MustParseAddr("10.244.2.13") // dev, role=frontend
	outsideIP = netip.MustParseAddr("192.0.2.50")
	exceptIP  = netip.MustParseAddr("192.0.2.7")
)

// equateAddrs compares netip.Addr values (an EndpointPolicy's IPs) by value.
var equateAddrs = cmpopts.EquateComparable(netip.Addr{})

func ns(name string, lbl map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl}}
}

func pod(namespace, name string, ip netip.Addr, lbl map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: lbl},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip.String()}}},
	}
}

func cluster() State {
	server := pod("prod", "server", serverIP, map[string]string{"role": "backend"},
		corev1.ContainerPort{Name: "redis", ContainerPort: 6379},
		corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP})
	pods := []*corev1.Pod{
		server,
		pod("prod", "client", clientIP, map[string]string{"role": "frontend"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
		pod("prod", "other", otherIP, map[string]string{"role": "batch"}, corev1.ContainerPort{Name: "http", ContainerPort: 9090}),
		pod("dev", "client", devIP, map[string]string{"role": "frontend"}),
	}
	return State{
		Pods:       pods,
		Namespaces: []*corev1.Namespace{ns("prod", map[string]string{"env": "prod", "name": "prod"}), ns("dev", map[string]string{"env": "dev"})},
		Endpoints:  []Endpoint{{ID: "server", Ifindex: 7, Pod: server, IPs: []netip.Addr{serverIP}}},
		NodeIPs:    []netip.Addr{nodeIP},
	}
}

type tweak func(*networkingv1.NetworkPolicy)

func netpol(name string, tweaks ...tweak) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name}}
	for _, t := range tweaks {
		t(p)
	}
	return p
}

func inNamespace(n string) tweak { return func(p *networkingv1.NetworkPolicy) { p.Namespace = n } }
func selecting(l map[string]string) tweak {
	return func(p *networkingv1.NetworkPolicy) { p.Spec.PodSelector = metav1.LabelSelector{MatchLabels: l} }
}
func types(t ...networkingv1.PolicyType) tweak {
	return func(p *networkingv1.NetworkPolicy) { p.Spec.PolicyTypes = t }
}
func ingressRule(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) tweak {
	return func(p *networkingv1.NetworkPolicy) {
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
}
func egressRule(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) tweak {
	return func(p *networkingv1.NetworkPolicy) {
		p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
}
func emptyIngress() tweak {
	return func(p *networkingv1.NetworkPolicy) { p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{} }
}

func podPeer(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: l}}
}
func nsPeer(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchLabels: l}}
}
func peers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

func port(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}
func portRange(first, last int32) networkingv1.NetworkPolicyPort {
	p := port(corev1.ProtocolTCP, first)
	p.EndPort = &last
	return p
}
func named(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

type probe struct {
	dir   Direction
	peer  netip.Addr
	proto uint8
	port  uint16
	want  bool
}

func in(peer netip.Addr, proto uint8, port uint16, want bool) probe {
	return probe{Ingress, peer, proto, port, want}
}
func out(peer netip.Addr, proto uint8, port uint16, want bool) probe {
	return probe{Egress, peer, proto, port, want}
}

const tcp, udp, sctp, icmp = ProtoTCP, ProtoUDP, ProtoSCTP, 1

type semanticCase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	probes   []probe
}

// semanticCases are the API's rules, each as policies over cluster() and
// what the subject "server" may then send and receive.
func semanticCases() []semanticCase {
	frontend := map[string]string{"role": "frontend"}
	return []semanticCase{
		{"no policy: the pod is not isolated", nil, []probe{
			in(otherIP, tcp, 1, true), in(outsideIP, udp, 53, true), out(devIP, tcp, 80, true),
		}},
		{"a policy in another namespace does not select the pod",
			[]*networkingv1.NetworkPolicy{netpol("deny", inNamespace("dev"))},
			[]probe{in(clientIP, tcp, 80, true)}},
		{"a policy whose podSelector misses the pod does not isolate it",
			[]*networkingv1.NetworkPolicy{netpol("deny", selecting(map[string]string{"role": "db"}))},
			[]probe{in(clientIP, tcp, 80, true)}},
		{"an empty podSelector with no rules denies all ingress",
			[]*networkingv1.NetworkPolicy{netpol("deny")},
			[]probe{in(clientIP, tcp, 80, false), in(clientIP, udp, 53, false), in(clientIP, icmp, 0, false), out(clientIP, tcp, 80, true)}},
		{"an empty ingress list denies like no rules",
			[]*networkingv1.NetworkPolicy{netpol("deny", emptyIngress())},
			[]probe{in(clientIP, tcp, 80, false)}},
		{"traffic with the node is allowed even under default deny",
			[]*networkingv1.NetworkPolicy{netpol("deny", types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))},
			[]probe{in(nodeIP, tcp, 10250, true), out(nodeIP, udp, 53, true), out(clientIP, udp, 53, false)}},
		{"egress rules without policyTypes isolate egress too",
			[]*networkingv1.NetworkPolicy{netpol("egress", egressRule(peers(podPeer(frontend))))},
			[]probe{out(clientIP, tcp, 80, true), out(otherIP, tcp, 80, false), in(otherIP, tcp, 80, false)}},
		{"policyTypes Egress alone leaves ingress open",
			[]*networkingv1.NetworkPolicy{netpol("egress", types(networkingv1.PolicyTypeEgress))},
			[]probe{in(otherIP, tcp, 80, true), out(otherIP, tcp, 80, false)}},
		{"a rule without from admits every source on its ports",
			[]*networkingv1.NetworkPolicy{netpol("web", ingressRule(nil, port(corev1.ProtocolTCP, 80)))},
			[]probe{in(outsideIP, tcp, 80, true), in(devIP, tcp, 80, true), in(devIP, tcp, 81, false)}},
		{"a podSelector peer admits matching pods of the policy's namespace only",
			[]*networkingv1.NetworkPolicy{netpol("fe", ingressRule(peers(podPeer(frontend))))},
			[]probe{in(clientIP, tcp, 80, true), in(devIP, tcp, 80, false), in(otherIP, tcp, 80, false), in(outsideIP, tcp, 80, false)}},
		{"a namespaceSelector peer admits every pod of matching namespaces",
			[]*networkingv1.NetworkPolicy{netpol("dev", ingressRule(peers(nsPeer(map[string]string{"env": "dev"}))))},
			[]probe{in(devIP, udp, 5, true), in(clientIP, tcp, 80, false)}},
		{"an empty namespaceSelector admits every pod of every namespace but not outside",
			[]*networkingv1.NetworkPolicy{netpol("all", ingressRule(peers(nsPeer(nil))))},
			[]probe{in(devIP, tcp, 80, true), in(clientIP, tcp, 80, true), in(outsideIP, tcp, 80, false)}},
		{"podSelector and namespaceSelector in one peer are ANDed",
			[]*networkingv1.NetworkPolicy{netpol("and", ingressRule(peers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"env": "dev"}},
				PodSelector:       &metav1.LabelSelector{MatchLabels: frontend},
			})))},
			[]probe{in(devIP, tcp, 80, true), in(clientIP, tcp, 80, false)}},
		{"two peers in one rule are ORed",
			[]*networkingv1.NetworkPolicy{netpol("or", ingressRule(peers(nsPeer(map[string]string{"env": "dev"}), podPeer(frontend))))},
			[]probe{in(devIP, tcp, 80, true), in(clientIP, tcp, 80, true), in(otherIP, tcp, 80, false)}},
		{"matchExpressions In, NotIn, Exists and DoesNotExist",
			[]*networkingv1.NetworkPolicy{netpol("expr", ingressRule(peers(networkingv1.NetworkPolicyPeer{
				PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "role", Operator: metav1.LabelSelectorOpIn, Values: []string{"frontend", "batch"}},
					{Key: "role", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"batch"}},
					{Key: "role", Operator: metav1.LabelSelectorOpExists},
					{Key: "tier", Operator: metav1.LabelSelectorOpDoesNotExist},
				}},
			})))},
			[]probe{in(clientIP, tcp, 80, true), in(otherIP, tcp, 80, false)}},
		{"a port admits only that port and protocol",
			[]*networkingv1.NetworkPolicy{netpol("redis", ingressRule(peers(podPeer(frontend)), port(corev1.ProtocolTCP, 6379)))},
			[]probe{in(clientIP, tcp, 6379, true), in(clientIP, tcp, 6380, false), in(clientIP, udp, 6379, false), in(clientIP, icmp, 0, false)}},
		{"a port without protocol means TCP",
			[]*networkingv1.NetworkPolicy{netpol("tcp", ingressRule(nil, networkingv1.NetworkPolicyPort{Port: ptr(intstr.FromInt32(80))}))},
			[]probe{in(clientIP, tcp, 80, true), in(clientIP, udp, 80, false)}},
		{"a protocol without port admits all its ports",
			[]*networkingv1.NetworkPolicy{netpol("udp", ingressRule(nil, networkingv1.NetworkPolicyPort{Protocol: ptr(corev1.ProtocolUDP)}))},
			[]probe{in(clientIP, udp, 1, true), in(clientIP, udp, 65535, true), in(clientIP, tcp, 1, false)}},
		{"SCTP ports are their own protocol",
			[]*networkingv1.NetworkPolicy{netpol("sctp", ingressRule(nil, port(corev1.ProtocolSCTP, 80)))},
			[]probe{in(clientIP, sctp, 80, true), in(clientIP, tcp, 80, false)}},
		{"endPort admits both ends and nothing beyond",
			[]*networkingv1.NetworkPolicy{netpol("range", ingressRule(nil, portRange(32000, 32768)))},
			[]probe{in(clientIP, tcp, 31999, false), in(clientIP, tcp, 32000, true), in(clientIP, tcp, 32768, true), in(clientIP, tcp, 32769, false)}},
		{"a named ingress port resolves against the selected pod",
			[]*networkingv1.NetworkPolicy{netpol("named", ingressRule(nil, named(corev1.ProtocolTCP, "redis"), named(corev1.ProtocolTCP, "dns")))},
			[]probe{in(clientIP, tcp, 6379, true), in(clientIP, tcp, 53, false), in(clientIP, udp, 53, false)}},
		{"a named egress port resolves against each destination pod",
			[]*networkingv1.NetworkPolicy{netpol("named", egressRule(nil, named(corev1.ProtocolTCP, "http")))},
			[]probe{out(clientIP, tcp, 8080, true), out(clientIP, tcp, 9090, false), out(otherIP, tcp, 9090, true), out(otherIP, tcp, 8080, false), out(outsideIP, tcp, 8080, false)}},
		{"a named egress port to everywhere leaves the rule's other ports open to everywhere",
			[]*networkingv1.NetworkPolicy{netpol("named", egressRule(nil, named(corev1.ProtocolTCP, "http"), networkingv1.NetworkPolicyPort{Protocol: ptr(corev1.ProtocolTCP)}))},
			[]probe{out(outsideIP, tcp, 53, true), out(devIP, tcp, 443, true), out(clientIP, tcp, 1, true), out(outsideIP, udp, 53, false)}},
		{"an ipBlock admits outside addresses in its cidr but not in its except",
			[]*networkingv1.NetworkPolicy{netpol("block", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.0/29"}}})))},
			[]probe{in(outsideIP, tcp, 80, true), in(exceptIP, tcp, 80, false), in(netip.MustParseAddr("192.0.3.1"), tcp, 80, false), in(clientIP, tcp, 80, false)}},
		{"an ipBlock matches pod addresses too",
			[]*networkingv1.NetworkPolicy{netpol("block", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.1.0/24", Except: []string{"10.244.1.12/32"}}})))},
			[]probe{in(clientIP, tcp, 80, true), in(otherIP, tcp, 80, false), in(devIP, tcp, 80, false)}},
		{"an except of one policy does not cut into another policy's cidr",
			[]*networkingv1.NetworkPolicy{
				netpol("a", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.0/29"}}}))),
				netpol("b", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.4/30"}}))),
			},
			[]probe{in(exceptIP, tcp, 80, true), in(netip.MustParseAddr("192.0.2.1"), tcp, 80, false), in(outsideIP, tcp, 80, true)}},
		{"several policies selecting a pod add up",
			[]*networkingv1.NetworkPolicy{
				netpol("a", ingressRule(peers(podPeer(frontend)), port(corev1.ProtocolTCP, 80))),
				netpol("b", ingressRule(peers(podPeer(map[string]string{"role": "batch"})), port(corev1.ProtocolUDP, 53))),
			},
			[]probe{in(clientIP, tcp, 80, true), in(otherIP, udp, 53, true), in(otherIP, tcp, 80, false), in(clientIP, udp, 53, false)}},
	}
}

func TestCompileSemantics(t *testing.T) {
	for _, tt := range semanticCases() {
		t.Run(tt.name, func(t *testing.T) {
			s := cluster()
			s.Policies = tt.policies
			res := Compile(s, identity.NewAllocator())
			if len(res.Problems) > 0 {
				t.Fatalf("problems: %v", res.Problems)
			}
			for _, p := range tt.probes {
				if got := res.Allows("server", p.dir, p.peer, p.proto, p.port); got != p.want {
					t.Errorf("%s %s proto %d port %d: allowed=%v, want %v", []string{"from", "to"}[p.dir], p.peer, p.proto, p.port, got, p.want)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestUnknownPodGetsNoEndpoint(t *testing.T) {
	s := cluster()
	s.Endpoints = append(s.Endpoints, Endpoint{ID: "pending", Ifindex: 9, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.99")}})
	res := Compile(s, identity.NewAllocator())
	if _, ok := res.Endpoints["pending"]; ok || len(res.Unknown) != 1 || res.Unknown[0] != "pending" {
		t.Errorf("endpoint of an unknown pod: endpoints=%v unknown=%v, want only unknown", res.Endpoints, res.Unknown)
	}
	if res.Allows("pending", Ingress, clientIP, tcp, 80) {
		t.Error("an endpoint without a known pod admits traffic")
	}
}

func TestLocalEndpointIPsWinOverPodStatus(t *testing.T) {
	s := cluster()
	s.Endpoints[0].Pod.Status.PodIPs = nil // the runtime has not reported it yet
	res := Compile(s, identity.NewAllocator())
	if res.IdentityOf(serverIP) != res.Endpoints["server"].Identity || res.IdentityOf(serverIP) < identity.FirstDynamic {
		t.Errorf("server IP has identity %d, endpoint %d", res.IdentityOf(serverIP), res.Endpoints["server"].Identity)
	}
}

func TestIdentitiesAreStableAcrossCompiles(t *testing.T) {
	alloc := identity.NewAllocator()
	a := Compile(cluster(), alloc)
	b := Compile(cluster(), alloc)
	for p, id := range a.IPCache {
		if b.IPCache[p] != id {
			t.Errorf("%s: identity %d then %d", p, id, b.IPCache[p])
		}
	}
	if a.IdentityOf(clientIP) == a.IdentityOf(otherIP) {
		t.Error("pods with different labels share an identity")
	}
}

// A new endpoint must not change the map entries of the endpoints already
// there: with rules numbered in the order endpoints were compiled, an
// endpoint of another namespace listed first renumbered every rule, and
// each sync rewrote every entry of the node.
func TestRuleNumbersAreStableAcrossCompiles(t *testing.T) {
	alloc := identity.NewAllocator()
	s := cluster()
	s.Policies = []*networkingv1.NetworkPolicy{
		netpol("prod-a", ingressRule([]networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"role": "frontend"})}, port(corev1.ProtocolTCP, 6379))),
		netpol("dev-a", inNamespace("dev"), ingressRule(nil, port(corev1.ProtocolTCP, 80))),
	}
	before := Compile(s, alloc)

	dev := s.Pods[3]
	s.Endpoints = append([]Endpoint{{ID: "dev-client", Ifindex: 8, Pod: dev, IPs: []netip.Addr{devIP}}}, s.Endpoints...)
	after := Compile(s, alloc)
	if d := gocmp.Diff(before.Endpoints["server"], after.Endpoints["server"], equateAddrs); d != "" {
		t.Errorf("server's policy changed with a new endpoint in another namespace (-before +after):\n%s", d)
	}
	for _, res := range []Result{before, after} {
		for _, r := range res.Endpoints["server"].Ingress {
			if got := res.Refs[r.Ref]; got.Policy != "prod/prod-a" {
				t.Errorf("server's rule %+v names %+v, want prod/prod-a", r, got)
			}
		}
	}
	if len(after.Endpoints["dev-client"].Ingress) == 0 {
		t.Fatal("the new endpoint has no ingress rules")
	}
	for _, r := range after.Endpoints["dev-client"].Ingress {
		if got := after.Refs[r.Ref]; got.Policy != "dev/dev-a" {
			t.Errorf("dev-client's rule %+v names %+v, want dev/dev-a", r, got)
		}
	}
}

// The lister's order of policies must not change what is compiled: where
// two policies allow the same traffic, the rule named was the first listed,
// so each sync rewrote the entries whose rule changed.
func TestCompileIgnoresListingOrder(t *testing.T) {
	frontend := []networkingv1.NetworkPolicyPeer{podPeer(map[string]string{"role": "frontend"})}
	pols := []*networkingv1.NetworkPolicy{
		netpol("a", ingressRule(frontend, port(corev1.ProtocolTCP, 6379))),
		netpol("b", ingressRule(frontend, port(corev1.ProtocolTCP, 6379))),
		netpol("c", ingressRule(frontend, port(corev1.ProtocolTCP, 6379)), egressRule(nil, named(corev1.ProtocolTCP, "http"))),
	}
	alloc := identity.NewAllocator()
	var first Result
	for i, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 2, 0}, {2, 0, 1}} {
		s := cluster()
		for _, j := range order {
			s.Policies = append(s.Policies, pols[j])
		}
		res := Compile(s, alloc)
		if i == 0 {
			first = res
			continue
		}
		if d := gocmp.Diff(first.Endpoints, res.Endpoints, equateAddrs); d != "" {
			t.Errorf("policies in order %v (-first +now):\n%s", order, d)
		}
	}
}

// Endpoints share compiled rules only with pods alike: same namespace,
// labels and container ports.
func TestEndpointsGetTheirOwnRules(t *testing.T) {
	web := map[string]string{"app": "web"}
	http := func(n int32) corev1.ContainerPort { return corev1.ContainerPort{Name: "http", ContainerPort: n} }
	pods := map[string]*corev1.Pod{
		"a": pod("prod", "a", netip.MustParseAddr("10.244.1.21"), web, http(8080)),
		"b": pod("prod", "b", netip.MustParseAddr("10.244.1.22"), web, http(9090)),
		"c": pod("prod", "c", netip.MustParseAddr("10.244.1.23"), web, http(8080)),
		"d": pod("prod", "d", netip.MustParseAddr("10.244.1.24"), map[string]string{"app": "db"}, http(8080)),
		"e": pod("dev", "e", netip.MustParseAddr("10.244.2.25"), web, http(8080)),
	}
	s := cluster()
	s.Policies = []*networkingv1.NetworkPolicy{
		netpol("web", selecting(web), ingressRule(nil, named(corev1.ProtocolTCP, "http"))),
	}
	s.Endpoints = nil
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		p := pods[name]
		s.Pods = append(s.Pods, p)
		ip := netip.MustParseAddr(p.Status.PodIPs[0].IP)
		s.Endpoints = append(s.Endpoints, Endpoint{ID: name, Ifindex: len(s.Endpoints) + 10, Pod: p, IPs: []netip.Addr{ip}})
	}
	res := Compile(s, identity.NewAllocator())
	for _, tt := range []struct {
		ep       string
		isolated bool
		port     uint16 // the one port allowed; 0 for none
	}{
		{"a", true, 8080}, {"b", true, 9090}, {"c", true, 8080}, {"d", false, 0}, {"e", false, 0},
	} {
		ep := res.Endpoints[tt.ep]
		if ep.ID != tt.ep || ep.Ifindex != s.Endpoints[tt.ep[0]-'a'].Ifindex {
			t.Errorf("%s: compiled as %s on ifindex %d", tt.ep, ep.ID, ep.Ifindex)
		}
		if ep.IngressIsolated != tt.isolated {
			t.Errorf("%s: ingress isolated %v, want %v", tt.ep, ep.IngressIsolated, tt.isolated)
		}
		var ports []uint16
		for _, r := range ep.Ingress {
			ports = append(ports, r.Ports.First)
		}
		if want := []uint16{tt.port}; (tt.port == 0 && len(ports) != 0) || (tt.port != 0 && !slices.Equal(ports, want)) {
			t.Errorf("%s: ingress ports %v, want %v", tt.ep, ports, tt.port)
		}
	}
	if res.Endpoints["a"].Identity == res.Endpoints["c"].Identity && res.Endpoints["a"].Identity == 0 {
		t.Error("endpoints have no identity")
	}
}

func TestBadSelectorIsolatesAndIsReported(t *testing.T) {
	s := cluster()
	s.Policies = []*networkingv1.NetworkPolicy{netpol("bad", ingressRule(peers(networkingv1.NetworkPolicyPeer{
		PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: "Near"}}},
	})))}
	res := Compile(s, identity.NewAllocator())
	if len(res.Problems) == 0 {
		t.Error("a selector that does not parse was not reported")
	}
	if res.Allows("server", Ingress, clientIP, tcp, 80) {
		t.Error("a selector that does not parse admitted traffic")
	}
}
