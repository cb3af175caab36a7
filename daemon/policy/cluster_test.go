package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

type cnpTweak func(*cnpv1.ClusterNetworkPolicy)

// cnp is a cluster policy whose subject is every namespace's pods.
func cnp(name string, tier cnpv1.Tier, prio int32, tweaks ...cnpTweak) *cnpv1.ClusterNetworkPolicy {
	p := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	p.Spec.Tier, p.Spec.Priority = tier, prio
	p.Spec.Subject.Namespaces = &metav1.LabelSelector{}
	for _, t := range tweaks {
		t(p)
	}
	return p
}

func sel(l map[string]string) *metav1.LabelSelector { return &metav1.LabelSelector{MatchLabels: l} }

func subjectPods(ns, pods map[string]string) cnpTweak {
	return func(p *cnpv1.ClusterNetworkPolicy) {
		p.Spec.Subject = cnpv1.ClusterNetworkPolicySubject{Pods: &cnpv1.NamespacedPod{NamespaceSelector: *sel(ns), PodSelector: *sel(pods)}}
	}
}
func subjectNS(ns map[string]string) cnpTweak {
	return func(p *cnpv1.ClusterNetworkPolicy) {
		p.Spec.Subject = cnpv1.ClusterNetworkPolicySubject{Namespaces: sel(ns)}
	}
}
func cin(action cnpv1.ClusterNetworkPolicyRuleAction, from []cnpv1.ClusterNetworkPolicyIngressPeer, protos ...cnpv1.ClusterNetworkPolicyProtocol) cnpTweak {
	return func(p *cnpv1.ClusterNetworkPolicy) {
		p.Spec.Ingress = append(p.Spec.Ingress, cnpv1.ClusterNetworkPolicyIngressRule{
			Name: "in" + string(action), Action: action, From: from, Protocols: protos})
	}
}
func cout(action cnpv1.ClusterNetworkPolicyRuleAction, to []cnpv1.ClusterNetworkPolicyEgressPeer, protos ...cnpv1.ClusterNetworkPolicyProtocol) cnpTweak {
	return func(p *cnpv1.ClusterNetworkPolicy) {
		p.Spec.Egress = append(p.Spec.Egress, cnpv1.ClusterNetworkPolicyEgressRule{Action: action, To: to, Protocols: protos})
	}
}
func fromNS(l map[string]string) []cnpv1.ClusterNetworkPolicyIngressPeer {
	return []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: sel(l)}}
}
func fromPods(ns, pods map[string]string) []cnpv1.ClusterNetworkPolicyIngressPeer {
	return []cnpv1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1.NamespacedPod{NamespaceSelector: *sel(ns), PodSelector: *sel(pods)}}}
}
func toNets(cidrs ...cnpv1.CIDR) []cnpv1.ClusterNetworkPolicyEgressPeer {
	return []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: cidrs}}
}
func toNS(l map[string]string) []cnpv1.ClusterNetworkPolicyEgressPeer {
	return []cnpv1.ClusterNetworkPolicyEgressPeer{{Namespaces: sel(l)}}
}
func toNodes(l map[string]string) []cnpv1.ClusterNetworkPolicyEgressPeer {
	return []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: sel(l)}}
}
func ctcp(first, last int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: cport(first, last)}}
}
func cudp(first, last int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{UDP: &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: cport(first, last)}}
}
func csctp(first, last int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{SCTP: &cnpv1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: cport(first, last)}}
}
func cnamed(name string) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{DestinationNamedPort: name}
}
func cport(first, last int32) *cnpv1.Port {
	if first == last {
		return &cnpv1.Port{Number: first}
	}
	return &cnpv1.Port{Range: &cnpv1.PortRange{Start: first, End: last}}
}

const (
	accept = cnpv1.ClusterNetworkPolicyRuleActionAccept
	deny   = cnpv1.ClusterNetworkPolicyRuleActionDeny
	pass   = cnpv1.ClusterNetworkPolicyRuleActionPass
	admin  = cnpv1.AdminTier
	base   = cnpv1.BaselineTier
)

var (
	remoteNodeIP  = netip.MustParseAddr("198.18.0.12")
	nodeGatewayIP = netip.MustParseAddr("10.244.1.1")
)

type cnpCase struct {
	name     string
	cnps     []*cnpv1.ClusterNetworkPolicy
	policies []*networkingv1.NetworkPolicy
	probes   []probe
}

func cnpCases() []cnpCase {
	all := map[string]string{}
	dev := map[string]string{"env": "dev"}
	prod := map[string]string{"env": "prod"}
	frontend := map[string]string{"role": "frontend"}
	allowAll := netpol("all", ingressRule(nil))
	denyAll := netpol("deny")
	return []cnpCase{
		{"an admin Deny overrides a NetworkPolicy allow", []*cnpv1.ClusterNetworkPolicy{cnp("no-dev", admin, 10, cin(deny, fromNS(dev)))},
			[]*networkingv1.NetworkPolicy{allowAll},
			[]probe{in(devIP, tcp, 80, false), in(devIP, udp, 53, false), in(devIP, icmp, 0, false), in(clientIP, tcp, 80, true), out(devIP, tcp, 80, true)}},
		{"an admin Accept overrides a NetworkPolicy default deny", []*cnpv1.ClusterNetworkPolicy{cnp("fe", admin, 10, cin(accept, fromPods(prod, frontend)))},
			[]*networkingv1.NetworkPolicy{denyAll},
			[]probe{in(clientIP, tcp, 80, true), in(devIP, tcp, 80, false), in(otherIP, tcp, 80, false)}},
		{"Pass hands the decision to NetworkPolicy", []*cnpv1.ClusterNetworkPolicy{
			cnp("pass-dev", admin, 1, cin(pass, fromNS(dev))), cnp("deny-all", admin, 2, cin(deny, fromNS(all)))},
			[]*networkingv1.NetworkPolicy{netpol("dev", ingressRule(peers(nsPeer(dev))))},
			[]probe{in(devIP, tcp, 80, true), in(clientIP, tcp, 80, false)}},
		{"Pass with no NetworkPolicy goes on to the Baseline tier", []*cnpv1.ClusterNetworkPolicy{
			cnp("pass-dev", admin, 1, cin(pass, fromNS(dev))), cnp("base-deny", base, 1, cin(deny, fromNS(all)))},
			nil, []probe{in(devIP, tcp, 80, false), in(clientIP, tcp, 80, false)}},
		{"the lower priority number wins", []*cnpv1.ClusterNetworkPolicy{
			cnp("a", admin, 5, cin(accept, fromNS(dev))), cnp("b", admin, 10, cin(deny, fromNS(all)))},
			nil, []probe{in(devIP, tcp, 80, true), in(clientIP, tcp, 80, false)}},
		{"the lower priority number wins, listed the other way", []*cnpv1.ClusterNetworkPolicy{
			cnp("a", admin, 50, cin(accept, fromNS(dev))), cnp("b", admin, 10, cin(deny, fromNS(all)))},
			nil, []probe{in(devIP, tcp, 80, false), in(clientIP, tcp, 80, false)}},
		{"within a policy the first rule wins", []*cnpv1.ClusterNetworkPolicy{
			cnp("a", admin, 5, cin(deny, fromNS(dev)), cin(accept, fromNS(all)))},
			[]*networkingv1.NetworkPolicy{denyAll}, []probe{in(devIP, tcp, 80, false), in(clientIP, tcp, 80, true)}},
		{"the Baseline tier applies to pods no NetworkPolicy isolates", []*cnpv1.ClusterNetworkPolicy{cnp("b", base, 1, cin(deny, fromNS(dev)))},
			nil, []probe{in(devIP, tcp, 80, false), in(clientIP, tcp, 80, true)}},
		{"a NetworkPolicy overrides the Baseline tier both ways", []*cnpv1.ClusterNetworkPolicy{
			cnp("b", base, 1, cin(deny, fromNS(dev)), cin(accept, fromNS(prod)))},
			[]*networkingv1.NetworkPolicy{netpol("dev", ingressRule(peers(nsPeer(dev))))},
			[]probe{in(devIP, tcp, 80, true), in(clientIP, tcp, 80, false)}},
		{"Admin before Baseline whatever the priorities", []*cnpv1.ClusterNetworkPolicy{
			cnp("b", base, 0, cin(accept, fromNS(dev))), cnp("a", admin, 1000, cin(deny, fromNS(dev)))},
			nil, []probe{in(devIP, tcp, 80, false)}},
		{"ports: numbers, ranges and protocols", []*cnpv1.ClusterNetworkPolicy{
			cnp("ports", admin, 1, cin(deny, fromNS(all), ctcp(80, 90), cudp(53, 53), csctp(9000, 9000)))},
			nil, []probe{in(clientIP, tcp, 80, false), in(clientIP, tcp, 85, false), in(clientIP, tcp, 90, false), in(clientIP, tcp, 91, true),
				in(clientIP, tcp, 79, true), in(clientIP, udp, 53, false), in(clientIP, udp, 54, true), in(clientIP, tcp, 53, true),
				in(clientIP, sctp, 9000, false), in(clientIP, sctp, 9001, true), in(clientIP, icmp, 0, true)}},
		{"a named port resolves on the subject for ingress", []*cnpv1.ClusterNetworkPolicy{
			cnp("named", admin, 1, cin(deny, fromNS(all), cnamed("redis"), cnamed("dns")))},
			nil, []probe{in(clientIP, tcp, 6379, false), in(clientIP, tcp, 6380, true), in(clientIP, udp, 53, false), in(clientIP, tcp, 53, true)}},
		{"a named port resolves on each peer for egress", []*cnpv1.ClusterNetworkPolicy{
			cnp("named", admin, 1, cout(deny, toNS(all), cnamed("http")))},
			nil, []probe{out(clientIP, tcp, 8080, false), out(clientIP, tcp, 9090, true), out(otherIP, tcp, 9090, false), out(otherIP, tcp, 8080, true)}},
		{"networks select addresses, a narrower Accept first", []*cnpv1.ClusterNetworkPolicy{
			cnp("net", admin, 2, cout(deny, toNets("192.0.2.0/24"))), cnp("hole", admin, 1, cout(accept, toNets("192.0.2.7/32")))},
			nil, []probe{out(outsideIP, tcp, 443, false), out(exceptIP, tcp, 443, true), out(devIP, tcp, 443, true), in(outsideIP, tcp, 80, true)}},
		{"networks hold pods too", []*cnpv1.ClusterNetworkPolicy{cnp("pods", admin, 1, cout(deny, toNets("10.244.2.0/24")))},
			nil, []probe{out(devIP, tcp, 80, false), out(clientIP, tcp, 80, true)}},
		{"nodes peers select remote nodes by label", []*cnpv1.ClusterNetworkPolicy{cnp("nodes", admin, 1, cout(deny, toNodes(map[string]string{"zone": "a"})))},
			nil, []probe{out(remoteNodeIP, tcp, 10250, false), out(clientIP, tcp, 10250, true)}},
		{"a subject that does not select the pod leaves it alone", []*cnpv1.ClusterNetworkPolicy{
			cnp("pods", admin, 1, subjectPods(prod, frontend), cin(deny, fromNS(all))), cnp("ns", admin, 1, subjectNS(dev), cin(deny, fromNS(all)))},
			nil, []probe{in(clientIP, tcp, 80, true), in(devIP, tcp, 80, true)}},
		{"a subject by pods selects the pod", []*cnpv1.ClusterNetworkPolicy{
			cnp("pods", admin, 1, subjectPods(prod, map[string]string{"role": "backend"}), cin(deny, fromNS(dev)))},
			nil, []probe{in(devIP, tcp, 80, false), in(clientIP, tcp, 80, true)}},
		// The pod's own node is a peer like any other to the tiers:
		// NetworkPolicy's "always allowed" is NetworkPolicy's, and the
		// admin tier comes before it (network-policy-api's node-peer tests
		// expect a Deny wherever the pods run).
		{"an admin Deny of networks reaches the pod's own node, its ingress peers cannot name it", []*cnpv1.ClusterNetworkPolicy{
			cnp("deny", admin, 1, cin(deny, fromNS(all)), cout(deny, toNets("0.0.0.0/0")))},
			nil, []probe{in(nodeIP, tcp, 10250, true), out(nodeIP, udp, 53, false), out(outsideIP, udp, 53, false)}},
		{"a nodes peer selects the pod's own node by its labels", []*cnpv1.ClusterNetworkPolicy{
			cnp("nodes", admin, 1, cout(deny, toNodes(map[string]string{"zone": "b"})))},
			nil, []probe{out(nodeIP, tcp, 10250, false), out(remoteNodeIP, tcp, 10250, true), out(clientIP, tcp, 10250, true)}},
		{"a networks peer that holds one of the node's addresses selects the node", []*cnpv1.ClusterNetworkPolicy{
			cnp("nets", admin, 1, cout(deny, toNets("198.18.0.11/32")))},
			nil, []probe{out(nodeIP, tcp, 10250, false), out(remoteNodeIP, tcp, 10250, true)}},
		// The node's addresses share one identity: a networks peer
		// holding only some of them (here its cni0 gateway, not its
		// InternalIP) selects the node for a Deny, never for an Accept.
		{"an Accept of networks that hold only some of the node's addresses does not accept the node", []*cnpv1.ClusterNetworkPolicy{
			cnp("pods", admin, 1, cout(accept, toNets("10.244.0.0/16"))), cnp("rest", admin, 2, cout(deny, toNets("0.0.0.0/0")))},
			nil, []probe{out(nodeIP, tcp, 10250, false), out(nodeGatewayIP, tcp, 53, false), out(clientIP, tcp, 80, true)}},
		{"a Deny of networks that hold some of the node's addresses denies the node", []*cnpv1.ClusterNetworkPolicy{
			cnp("pods", admin, 1, cout(deny, toNets("10.244.0.0/16")))},
			nil, []probe{out(nodeIP, tcp, 10250, false), out(remoteNodeIP, tcp, 10250, true)}},
		{"an Accept of networks that hold all the node's addresses accepts it ahead of a Deny", []*cnpv1.ClusterNetworkPolicy{
			cnp("nodes", admin, 1, cout(accept, toNets("198.18.0.11/32", "10.244.1.1/32"))), cnp("rest", admin, 2, cout(deny, toNets("0.0.0.0/0")))},
			nil, []probe{out(nodeIP, tcp, 10250, true), out(remoteNodeIP, tcp, 10250, false)}},
		{"NetworkPolicy allows the own node ahead of a baseline Deny", []*cnpv1.ClusterNetworkPolicy{
			cnp("base", base, 1, cout(deny, toNodes(all)))},
			[]*networkingv1.NetworkPolicy{netpol("deny", types(networkingv1.PolicyTypeEgress))},
			[]probe{out(nodeIP, tcp, 10250, true), out(remoteNodeIP, tcp, 10250, false), out(clientIP, tcp, 80, false)}},
		{"without NetworkPolicy a baseline Deny reaches the own node", []*cnpv1.ClusterNetworkPolicy{
			cnp("base", base, 1, cout(deny, toNodes(all)))},
			nil, []probe{out(nodeIP, tcp, 10250, false), out(remoteNodeIP, tcp, 10250, false), out(clientIP, tcp, 80, true)}},
		{"a Pass hands the own node to NetworkPolicy, which allows it", []*cnpv1.ClusterNetworkPolicy{
			cnp("pass", admin, 1, cout(pass, toNodes(all))), cnp("deny", admin, 2, cout(deny, toNodes(all))), cnp("base", base, 1, cout(deny, toNodes(all)))},
			[]*networkingv1.NetworkPolicy{netpol("deny", types(networkingv1.PolicyTypeEgress))},
			[]probe{out(nodeIP, udp, 53, true), out(remoteNodeIP, udp, 53, false)}},
		{"a Deny whose selector does not parse denies everything", []*cnpv1.ClusterNetworkPolicy{
			cnp("bad", admin, 1, cin(deny, []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Bogus"}}}}}, ctcp(80, 80)))},
			[]*networkingv1.NetworkPolicy{allowAll}, []probe{in(clientIP, udp, 53, false), in(devIP, tcp, 443, false)}},
		{"an Accept whose port does not parse matches nothing", []*cnpv1.ClusterNetworkPolicy{
			cnp("bad", admin, 1, cin(accept, fromNS(all), ctcp(0, 0))), cnp("base", base, 1, cin(deny, fromNS(all)))},
			nil, []probe{in(clientIP, tcp, 80, false)}},
		{"a subject that does not parse selects every pod and its rules deny", []*cnpv1.ClusterNetworkPolicy{
			cnp("bad", admin, 1, func(p *cnpv1.ClusterNetworkPolicy) { p.Spec.Subject = cnpv1.ClusterNetworkPolicySubject{} }, cin(accept, fromNS(dev)))},
			nil, []probe{in(devIP, tcp, 80, false), in(clientIP, tcp, 80, true)}},
		{"domain names are not supported: the Accept matches nothing", []*cnpv1.ClusterNetworkPolicy{
			cnp("dns", admin, 1, cout(accept, []cnpv1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1.DomainName{"example.com"}}})),
			cnp("deny", admin, 2, cout(deny, toNets("0.0.0.0/0")))},
			nil, []probe{out(outsideIP, tcp, 443, false)}},
	}
}

func cnpCluster() State {
	s := cluster()
	s.RemoteNodeIPs = []netip.Addr{remoteNodeIP}
	s.NodeLabels = map[netip.Addr]map[string]string{remoteNodeIP: {"zone": "a"}}
	s.LocalNodeLabels = map[string]string{"zone": "b"}
	// The node's cni0 gateway is the node too (controller.nodeIPs).
	s.NodeIPs = append(slices.Clone(s.NodeIPs), nodeGatewayIP)
	return s
}

func TestClusterNetworkPolicySemantics(t *testing.T) {
	for _, tc := range cnpCases() {
		t.Run(tc.name, func(t *testing.T) {
			s := cnpCluster()
			s.Policies, s.ClusterPolicies = tc.policies, tc.cnps
			res := Compile(s, identity.NewAllocator())
			for _, p := range tc.probes {
				if got := res.Allows("server", p.dir, p.peer, p.proto, p.port); got != p.want {
					t.Errorf("%v %s proto %d port %d: allowed %v, want %v\ningress %+v\negress %+v", p.dir, p.peer, p.proto, p.port, got, p.want,
						res.Endpoints["server"].Ingress, res.Endpoints["server"].Egress)
				}
			}
		})
	}
}

func TestClusterNetworkPolicyVerdictNamesTierAndRule(t *testing.T) {
	s := cnpCluster()
	s.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{cnp("no-dev", admin, 3, cin(accept, fromNS(map[string]string{"env": "prod"})), cin(deny, fromNS(map[string]string{"env": "dev"})))}
	res := Compile(s, identity.NewAllocator())
	ok, ref := res.Verdict("server", Ingress, devIP, tcp, 80)
	if ok {
		t.Fatal("dev is allowed")
	}
	want := RuleRef{Policy: "no-dev", Direction: "ingress", Index: 1, Tier: "Admin", Action: "Deny", Name: "inDeny"}
	if got := res.Refs[ref]; got != want {
		t.Errorf("deny named %+v, want %+v", got, want)
	}
	if got := res.Endpoints["server"].ClusterPolicies; len(got) != 1 || got[0] != "no-dev" {
		t.Errorf("cluster policies %v, want [no-dev]", got)
	}
	if len(res.ClusterProblems) != 0 {
		t.Errorf("problems %v", res.ClusterProblems)
	}
}

func TestClusterNetworkPolicyProblemsReported(t *testing.T) {
	s := cnpCluster()
	// Selects no local pod: its problem is still found, for its status.
	s.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{cnp("bad", admin, 1, subjectNS(map[string]string{"env": "none"}), cout(deny, toNets("not-a-cidr")))}
	res := Compile(s, identity.NewAllocator())
	probs := res.ClusterProblems["bad"]
	if len(probs) == 0 || !strings.Contains(strings.Join(probs, ";"), "not-a-cidr") {
		t.Fatalf("problems %v, want the bad network", probs)
	}
}

// TestClusterNetworkPolicyLeavesOthersAlone: an endpoint no cluster policy
// selects keeps exactly the rules NetworkPolicy alone gives it.
func TestClusterNetworkPolicyLeavesOthersAlone(t *testing.T) {
	s := cnpCluster()
	s.Policies = []*networkingv1.NetworkPolicy{netpol("fe", ingressRule(peers(podPeer(map[string]string{"role": "frontend"})), port(corev1.ProtocolTCP, 80)))}
	plain := Compile(s, identity.NewAllocator())
	s.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{cnp("dev-only", admin, 1, subjectNS(map[string]string{"env": "dev"}), cin(deny, fromNS(nil)))}
	with := Compile(s, identity.NewAllocator())
	a, b := plain.Endpoints["server"], with.Endpoints["server"]
	if b.IngressTiered || len(a.Ingress) != len(b.Ingress) || a.IngressIsolated != b.IngressIsolated {
		t.Errorf("rules changed: %+v vs %+v", a, b)
	}
}
