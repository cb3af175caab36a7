package netpolref

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Generate builds a small cluster from fuzz bytes: namespaces, pods and
// policies drawn from a few labels, ports and CIDRs, so that selectors,
// ports and blocks collide often. Every object is one the API server
// would accept (valid selectors, ports, ranges and CIDRs): what the
// compiler does with invalid objects is tested by tables, not here.
func Generate(data []byte) Cluster {
	g := &gen{data: data}
	var c Cluster
	c.NodeIPs = []netip.Addr{NodeIP}
	nsNames := []string{"a", "b", "c"}
	for _, n := range nsNames[:1+g.n(3)] {
		c.Namespaces = append(c.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: n, Labels: g.labels(nsLabels, n),
		}})
	}
	for i := range 2 + g.n(5) {
		namespace := c.Namespaces[g.n(len(c.Namespaces))].Name
		ip := netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)})
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: fmt.Sprintf("p%d", i), Labels: g.labels(podLabels, "")},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: g.containerPorts()}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip.String()}}},
		}
		c.Pods = append(c.Pods, pod)
	}
	for i := range 1 + g.n(4) {
		c.Policies = append(c.Policies, g.policy(fmt.Sprintf("np%d", i), c.Namespaces[g.n(len(c.Namespaces))].Name))
	}
	return c
}

// NodeIP is the subject's node in generated clusters.
var NodeIP = netip.MustParseAddr("198.18.0.11")

// Externals are addresses outside the pod network that generated blocks
// cut in various ways.
var Externals = []netip.Addr{
	netip.MustParseAddr("192.0.2.7"),
	netip.MustParseAddr("192.0.2.200"),
	netip.MustParseAddr("203.0.113.9"),
}

// Ports and protocols the fuzz target probes, around the generated ones.
var (
	ProbePorts  = []uint16{53, 79, 80, 81, 443, 5353, 8080, 8081, 9000}
	ProbeProtos = []uint8{TCP, UDP, SCTP, 1}
)

var (
	podLabels = map[string][]string{"app": {"web", "db", "api"}, "tier": {"x", "y"}}
	nsLabels  = map[string][]string{"env": {"prod", "dev"}, "team": {"x", "y"}}
	// blocks mix the pod network, a pod, externals and the node.
	blocks  = []string{"10.244.0.0/16", "10.244.1.0/28", "10.244.1.12/32", "192.0.2.0/24", "192.0.2.0/25", "0.0.0.0/0", "198.18.0.0/24"}
	excepts = map[string][]string{
		"10.244.0.0/16": {"10.244.1.0/28", "10.244.1.11/32"},
		"10.244.1.0/28": {"10.244.1.12/31"},
		"192.0.2.0/24":  {"192.0.2.0/25", "192.0.2.200/32"},
		"0.0.0.0/0":     {"10.244.0.0/16", "192.0.2.0/24"},
	}
	portNames = []string{"http", "dns", "alt"}
	protocols = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
)

// gen reads choices from the fuzz bytes; past their end every choice is 0.
type gen struct {
	data []byte
	i    int
}

func (g *gen) n(max int) int {
	if g.i >= len(g.data) {
		return 0
	}
	b := g.data[g.i]
	g.i++
	return int(b) % max
}

func (g *gen) labels(vocab map[string][]string, name string) map[string]string {
	l := map[string]string{}
	if name != "" {
		l["kubernetes.io/metadata.name"] = name
	}
	for _, k := range []string{"app", "tier", "env", "team"} {
		vals, ok := vocab[k]
		if !ok {
			continue
		}
		if i := g.n(len(vals) + 1); i < len(vals) {
			l[k] = vals[i]
		}
	}
	return l
}

func (g *gen) containerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	// "If specified, this must be an IANA_SVC_NAME and unique within the
	// pod": each name at most once.
	used := map[string]bool{}
	for range g.n(3) {
		name := portNames[g.n(len(portNames))]
		if used[name] {
			continue
		}
		used[name] = true
		out = append(out, corev1.ContainerPort{
			Name:          name,
			ContainerPort: int32(ProbePorts[g.n(len(ProbePorts))]),
			Protocol:      protocols[g.n(len(protocols))],
		})
	}
	return out
}

func (g *gen) selector(vocab map[string][]string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	keys := []string{"app", "tier"}
	if _, ok := vocab["env"]; ok {
		keys = []string{"env", "team"}
	}
	for range g.n(3) {
		k := keys[g.n(len(keys))]
		vals := vocab[k]
		switch g.n(5) {
		case 0:
			if s.MatchLabels == nil {
				s.MatchLabels = map[string]string{}
			}
			s.MatchLabels[k] = vals[g.n(len(vals))]
		case 1:
			s.MatchExpressions = append(s.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{vals[g.n(len(vals))]}})
		case 2:
			s.MatchExpressions = append(s.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpNotIn, Values: vals[:1+g.n(len(vals))]})
		case 3:
			s.MatchExpressions = append(s.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpExists})
		default:
			s.MatchExpressions = append(s.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpDoesNotExist})
		}
	}
	return s
}

func (g *gen) policy(name, namespace string) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	p.Spec.PodSelector = *g.selector(podLabels)
	switch g.n(4) {
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	// nil, empty and populated rule lists all mean something different.
	switch g.n(3) {
	case 1:
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
	case 2:
		for range 1 + g.n(2) {
			p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
		}
	}
	switch g.n(3) {
	case 1:
		p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
	case 2:
		for range 1 + g.n(2) {
			p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
		}
	}
	return p
}

func (g *gen) peers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range g.n(3) {
		var p networkingv1.NetworkPolicyPeer
		switch g.n(4) {
		case 0:
			p.PodSelector = g.selector(podLabels)
		case 1:
			p.NamespaceSelector = g.selector(nsLabels)
		case 2:
			p.PodSelector = g.selector(podLabels)
			p.NamespaceSelector = g.selector(nsLabels)
		default:
			cidr := blocks[g.n(len(blocks))]
			p.IPBlock = &networkingv1.IPBlock{CIDR: cidr}
			if ex := excepts[cidr]; len(ex) > 0 {
				p.IPBlock.Except = ex[:g.n(len(ex)+1)]
			}
		}
		out = append(out, p)
	}
	return out
}

func (g *gen) ports() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range g.n(3) {
		var p networkingv1.NetworkPolicyPort
		if i := g.n(len(protocols) + 1); i < len(protocols) {
			proto := protocols[i]
			p.Protocol = &proto
		}
		switch g.n(4) {
		case 0: // every port of the protocol
		case 1:
			v := intstr.FromString(portNames[g.n(len(portNames))])
			p.Port = &v
		case 2:
			v := intstr.FromInt32(int32(ProbePorts[g.n(len(ProbePorts))]))
			p.Port = &v
		default:
			first := ProbePorts[g.n(len(ProbePorts))]
			last := int32(first) + int32(g.n(3))*int32(g.n(200))
			v := intstr.FromInt32(int32(first))
			p.Port, p.EndPort = &v, &last
		}
		out = append(out, p)
	}
	return out
}
