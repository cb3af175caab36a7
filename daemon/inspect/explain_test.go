package inspect

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/policy"
)

const node = "node-1"

func pod(ns, name, node, ip string, lbl map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbl},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

type tweak func(*networkingv1.NetworkPolicy)

func netpol(name string, sel map[string]string, tweaks ...tweak) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}},
	}
	for _, t := range tweaks {
		t(p)
	}
	return p
}

func ingressFrom(role string, port int32) tweak {
	return func(p *networkingv1.NetworkPolicy) {
		tcp := corev1.ProtocolTCP
		pn := intstr.FromInt32(port)
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": role}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &pn}},
		})
	}
}

func denyEgress(p *networkingv1.NetworkPolicy) {
	p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
}

// view compiles a cluster of backend and frontend (local), other (local)
// and remote (on node-2) under pols, the way the controller does.
func view(t *testing.T, pols ...*networkingv1.NetworkPolicy) *View {
	t.Helper()
	return viewWith(t, nil, pols...)
}

// viewWith is view with cluster policies too.
func viewWith(t *testing.T, cnps []*cnpv1.ClusterNetworkPolicy, pols ...*networkingv1.NetworkPolicy) *View {
	t.Helper()
	backend := pod("prod", "backend", node, "10.244.1.10", map[string]string{"role": "backend"}, corev1.ContainerPort{ContainerPort: 6379})
	frontend := pod("prod", "frontend", node, "10.244.1.11", map[string]string{"role": "frontend"}, corev1.ContainerPort{ContainerPort: 80})
	other := pod("prod", "other", node, "10.244.1.12", map[string]string{"role": "other"}, corev1.ContainerPort{ContainerPort: 80})
	remote := pod("lab", "remote", "node-2", "10.244.2.10", map[string]string{"role": "frontend"}, corev1.ContainerPort{ContainerPort: 80})
	pods := []*corev1.Pod{backend, frontend, other, remote}
	var eps []agentapi.Endpoint
	var peps []policy.Endpoint
	for i, p := range pods[:3] {
		ip := netip.MustParseAddr(p.Status.PodIPs[0].IP)
		id := "c" + p.Name + "_eth0"
		eps = append(eps, agentapi.Endpoint{ID: id, PodNamespace: p.Namespace, PodName: p.Name, HostIfIndex: 10 + i, IPs: []netip.Addr{ip}})
		peps = append(peps, policy.Endpoint{ID: id, Ifindex: 10 + i, Pod: p, IPs: []netip.Addr{ip}})
	}
	res := policy.Compile(policy.State{
		Pods: pods, Policies: pols, Endpoints: peps, ClusterPolicies: cnps,
		Namespaces: []*corev1.Namespace{
			{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"kubernetes.io/metadata.name": "prod"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "lab", Labels: map[string]string{"kubernetes.io/metadata.name": "lab"}}},
		},
		NodeIPs: []netip.Addr{netip.MustParseAddr("198.18.0.11")},
	}, identity.NewAllocator())
	return NewView(&res, pods, pols, eps, node)
}

func TestExplain(t *testing.T) {
	for _, tt := range []struct {
		name    string
		pols    []*networkingv1.NetworkPolicy
		req     agentapi.ExplainRequest
		allowed bool
		// reason and fix are substrings of the judged direction's.
		egress, reason, fix string
		// why is a substring of the first rule's explanation.
		why string
	}{
		{
			name: "without policy everything is allowed", req: agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379},
			allowed: true, reason: "no policy selects prod/backend for ingress",
		},
		{
			name:    "a rule naming the peer and port allows, and is named",
			pols:    []*networkingv1.NetworkPolicy{netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379))},
			req:     agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379},
			allowed: true, reason: "allowed by prod/backend-access ingress[0]",
		},
		{
			name:    "a rule with the right peer but another port: the fix adds the port",
			pols:    []*networkingv1.NetworkPolicy{netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379))},
			req:     agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 8080},
			allowed: false, reason: "no policy allows it",
			fix: "add {protocol: TCP, port: 8080} to the ports of prod/backend-access ingress[0]",
		},
		{
			name:    "a rule with the right port but another peer: the fix adds the peer",
			pols:    []*networkingv1.NetworkPolicy{netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379))},
			req:     agentapi.ExplainRequest{From: "prod/other", To: "prod/backend", Port: 6379},
			allowed: false, reason: "no policy allows it", why: "pods {role=other} in namespace prod (other) is not among its peers (pods {role=frontend}",
			fix: `add {"podSelector":{"matchLabels":{"role":"other"}}} to the from of prod/backend-access ingress[0]`,
		},
		{
			name:    "a default deny without rules: the fix is a new policy",
			pols:    []*networkingv1.NetworkPolicy{netpol("deny", nil)},
			req:     agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379},
			allowed: false, reason: "isolated for ingress by prod/deny",
			fix: "name: allow-backend-from-frontend-6379",
		},
		{
			name:    "egress of the source is judged too",
			pols:    []*networkingv1.NetworkPolicy{netpol("no-egress", map[string]string{"role": "frontend"}, denyEgress)},
			req:     agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379},
			allowed: false, egress: "no policy allows it", reason: "no policy selects prod/backend",
			fix: "allow-frontend-to-backend-6379",
		},
		{
			name:    "an address by IP resolves to its pod",
			pols:    []*networkingv1.NetworkPolicy{netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379))},
			req:     agentapi.ExplainRequest{From: "10.244.1.11", To: "prod/backend", Port: 6379, Protocol: "TCP"},
			allowed: true, reason: "allowed by prod/backend-access ingress[0]",
		},
		{
			name:    "UDP is not TCP",
			pols:    []*networkingv1.NetworkPolicy{netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379))},
			req:     agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379, Protocol: "udp"},
			allowed: false, reason: "no policy allows it", fix: "add {protocol: UDP, port: 6379} to the ports",
		},
		{
			name:    "a remote source: only this node's ingress is judged",
			pols:    []*networkingv1.NetworkPolicy{netpol("deny", nil)},
			req:     agentapi.ExplainRequest{From: "lab/remote", To: "prod/backend", Port: 6379},
			allowed: false, reason: "no policy allows it",
			fix: "namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: lab",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			xs, err := view(t, tt.pols...).Explain(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(xs) != 1 {
				t.Fatalf("%d explanations, want 1", len(xs))
			}
			x := xs[0]
			if x.Allowed != tt.allowed {
				t.Errorf("allowed = %v, want %v: %+v", x.Allowed, tt.allowed, x)
			}
			if x.Ingress == nil {
				t.Fatalf("ingress not judged: %+v", x)
			}
			if !strings.Contains(x.Ingress.Reason, tt.reason) {
				t.Errorf("ingress reason %q, want it to contain %q", x.Ingress.Reason, tt.reason)
			}
			if tt.why != "" {
				if len(x.Ingress.Policies) == 0 || len(x.Ingress.Policies[0].Rules) == 0 || !strings.Contains(x.Ingress.Policies[0].Rules[0].Why, tt.why) {
					t.Errorf("policies %+v, want the first rule's why to contain %q", x.Ingress.Policies, tt.why)
				}
			}
			fix := x.Ingress.Fix
			if tt.egress != "" {
				if x.Egress == nil || !strings.Contains(x.Egress.Reason, tt.egress) {
					t.Fatalf("egress %+v, want a reason containing %q", x.Egress, tt.egress)
				}
				fix = x.Egress.Fix
			}
			if !strings.Contains(fix, tt.fix) || (tt.fix == "") != (fix == "") {
				t.Errorf("fix %q, want it to contain %q", fix, tt.fix)
			}
		})
	}
}

// The fix must work: applying what it proposes allows the flow.
func TestExplainFixAllows(t *testing.T) {
	deny := netpol("deny", nil)
	xs, err := view(t, deny).Explain(agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379})
	if err != nil {
		t.Fatal(err)
	}
	np, err := decodePolicy(xs[0].Ingress.Fix)
	if err != nil {
		t.Fatal(err)
	}
	xs, err = view(t, deny, np).Explain(agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend", Port: 6379})
	if err != nil {
		t.Fatal(err)
	}
	if !xs[0].Allowed {
		t.Errorf("after applying the proposed policy the flow is still denied: %+v", xs[0].Ingress)
	}
}

func TestExplainErrors(t *testing.T) {
	v := view(t)
	for _, tt := range []struct {
		req  agentapi.ExplainRequest
		want string
	}{
		{agentapi.ExplainRequest{From: "prod/nope", To: "prod/backend", Port: 1}, "pod prod/nope not found"},
		{agentapi.ExplainRequest{From: "garbage", To: "prod/backend", Port: 1}, "neither namespace/pod nor an IP"},
		{agentapi.ExplainRequest{From: "lab/remote", To: "192.0.2.1", Port: 1}, "neither lab/remote nor 192.0.2.1 runs on node node-1"},
		{agentapi.ExplainRequest{From: "prod/backend", To: "192.0.2.1"}, "give a port"},
		{agentapi.ExplainRequest{From: "prod/backend", To: "prod/frontend", Port: 1, Protocol: "icmp"}, `protocol "icmp"`},
	} {
		_, err := v.Explain(tt.req)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Explain(%+v) = %v, want an error containing %q", tt.req, err, tt.want)
		}
	}
}

func TestExplainWithoutPortUsesDeclaredPorts(t *testing.T) {
	xs, err := view(t).Explain(agentapi.ExplainRequest{From: "prod/frontend", To: "prod/backend"})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint16
	for _, x := range xs {
		got = append(got, x.Port)
	}
	if diff := cmp.Diff([]uint16{6379}, got); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
}

func TestPodPolicy(t *testing.T) {
	v := view(t, netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379)))
	pp, err := v.PodPolicy("prod/backend", func(ifindex int, d policy.Direction) ([]agentapi.MapEntry, error) {
		if ifindex != 10 || d != policy.Ingress {
			t.Errorf("map read for ifindex %d direction %v, want 10 ingress", ifindex, d)
		}
		return []agentapi.MapEntry{{Identity: pp0Identity(v), Protocol: 6, Port: 6379, PrefixLen: 64,
			Rule: refOf(t, v, policy.RuleRef{Policy: "prod/backend-access", Direction: "ingress", Index: 0})}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !pp.Ingress.Isolated || pp.Egress.Isolated {
		t.Errorf("isolation ingress=%v egress=%v, want true false", pp.Ingress.Isolated, pp.Egress.Isolated)
	}
	if len(pp.Ingress.Rules) != 1 {
		t.Fatalf("rules %+v, want one", pp.Ingress.Rules)
	}
	r := pp.Ingress.Rules[0]
	want := "allow ingress from pods {role=frontend} in namespace prod (frontend) on TCP port 6379 (prod/backend-access ingress[0])"
	if r.Text != want {
		t.Errorf("text %q\nwant %q", r.Text, want)
	}
	if len(r.Entries) != 1 {
		t.Errorf("map entries %+v, want the one read back", r.Entries)
	}
	if _, err := v.PodPolicy("lab/remote", nil); err == nil || !strings.Contains(err.Error(), "runs on node node-2") {
		t.Errorf("policy of a remote pod: %v, want an error naming its node", err)
	}
}

// refOf is the number the compile gave rule r.
func refOf(t *testing.T, v *View, r policy.RuleRef) uint32 {
	for n, got := range v.Result.Refs {
		if got == r {
			return n
		}
	}
	t.Fatalf("rule %+v not compiled", r)
	return 0
}

func pp0Identity(v *View) uint32 { return v.Result.IdentityOf(netip.MustParseAddr("10.244.1.11")) }

// TestExplainNamesTierObjectAndRule: where cluster policies judge, explain
// names the tier, the object and the rule that decided.
func TestExplainNamesTierObjectAndRule(t *testing.T) {
	admin := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-lab"}}
	admin.Spec.Tier, admin.Spec.Priority = cnpv1.AdminTier, 1
	admin.Spec.Subject.Namespaces = &metav1.LabelSelector{}
	admin.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "lab-out", Action: cnpv1.ClusterNetworkPolicyRuleActionDeny,
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "lab"}}}}}}
	np := netpol("backend-access", map[string]string{"role": "backend"}, ingressFrom("frontend", 6379))
	v := viewWith(t, []*cnpv1.ClusterNetworkPolicy{admin}, np)
	for _, tt := range []struct {
		from         string
		allowed      bool
		tier, reason string
	}{
		{"lab/remote", false, "Admin", `denied by the Admin tier: ClusterNetworkPolicy no-lab ingress[0] ("lab-out"), action Deny`},
		{"prod/frontend", true, "NetworkPolicy", "allowed by the NetworkPolicy tier: NetworkPolicy prod/backend-access ingress[0]"},
		{"prod/other", false, "NetworkPolicy", "isolated for ingress by NetworkPolicy"},
		// The node: no Admin rule can name it for ingress, NetworkPolicy
		// allows it.
		{"198.18.0.11", true, "NetworkPolicy", "always allows its own node"},
	} {
		xs, err := v.Explain(agentapi.ExplainRequest{From: tt.from, To: "prod/backend", Port: 6379})
		if err != nil {
			t.Fatal(err)
		}
		in := xs[0].Ingress
		if in == nil || in.Allowed != tt.allowed || in.Tier != tt.tier || !strings.Contains(in.Reason, tt.reason) {
			t.Errorf("%s: ingress verdict %+v, want allowed %v, tier %s, reason containing %q", tt.from, in, tt.allowed, tt.tier, tt.reason)
		}
	}
}

// TestExplainDualStackSourceFamily: a dual-stack pod named as the source of
// a flow to an IPv6 address is judged by its IPv6 address, as the datapath
// sees the packet: an ipBlock of its /128 admits it, one of its /32 does
// not. (Found by the conformance replay with --family 6: explain denied what
// the datapath allowed.)
func TestExplainDualStackSourceFamily(t *testing.T) {
	backend := pod("prod", "backend", node, "10.244.1.10", map[string]string{"role": "backend"}, corev1.ContainerPort{ContainerPort: 6379})
	frontend := pod("prod", "frontend", node, "10.244.1.11", map[string]string{"role": "frontend"})
	backend.Status.PodIPs = append(backend.Status.PodIPs, corev1.PodIP{IP: "fd00:10:244:1::a"})
	frontend.Status.PodIPs = append(frontend.Status.PodIPs, corev1.PodIP{IP: "fd00:10:244:1::b"})
	pods := []*corev1.Pod{backend, frontend}
	fromBlock := func(cidr string) tweak {
		return func(p *networkingv1.NetworkPolicy) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
				From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}},
			})
		}
	}
	for _, tc := range []struct {
		name, cidr, from, to string
		allowed              bool
	}{
		{"IPv6 /128 of the named source, IPv6 destination", "fd00:10:244:1::b/128", "prod/frontend", "fd00:10:244:1::a", true},
		{"IPv4 /32 of the named source, IPv6 destination", "10.244.1.11/32", "prod/frontend", "fd00:10:244:1::a", false},
		{"IPv4 /32 of the named source, IPv4 destination", "10.244.1.11/32", "prod/frontend", "10.244.1.10", true},
		{"IPv6 source address, named destination", "fd00:10:244:1::b/128", "fd00:10:244:1::b", "prod/backend", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pols := []*networkingv1.NetworkPolicy{netpol("backend-from-block", map[string]string{"role": "backend"}, fromBlock(tc.cidr))}
			var eps []agentapi.Endpoint
			var peps []policy.Endpoint
			for i, p := range pods {
				var ips []netip.Addr
				for _, ip := range p.Status.PodIPs {
					ips = append(ips, netip.MustParseAddr(ip.IP))
				}
				id := "c" + p.Name + "_eth0"
				eps = append(eps, agentapi.Endpoint{ID: id, PodNamespace: p.Namespace, PodName: p.Name, HostIfIndex: 10 + i, IPs: ips})
				peps = append(peps, policy.Endpoint{ID: id, Ifindex: 10 + i, Pod: p, IPs: ips})
			}
			res := policy.Compile(policy.State{
				Pods: pods, Policies: pols, Endpoints: peps,
				Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"kubernetes.io/metadata.name": "prod"}}}},
				NodeIPs:    []netip.Addr{netip.MustParseAddr("198.18.0.11")},
			}, identity.NewAllocator())
			xs, err := NewView(&res, pods, pols, eps, node).Explain(agentapi.ExplainRequest{From: tc.from, To: tc.to, Port: 6379, Protocol: "TCP"})
			if err != nil {
				t.Fatal(err)
			}
			if len(xs) != 1 || xs[0].Allowed != tc.allowed {
				t.Fatalf("allowed %v, want %v: %+v", xs[0].Allowed, tc.allowed, xs)
			}
		})
	}
}
