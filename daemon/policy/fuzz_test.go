package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// The fuzzed cluster's value domains are small on purpose, so that pods
// contest addresses, take the node's, a remote node's or a /32 block's
// address, and names, labels and creation times collide.
var (
	fuzzNamespaces = []string{"ns-a", "ns-b", "ns-c"}
	fuzzPodNames   = []string{"p0", "p1", "p2", "p3"}
	fuzzEndpoints  = []string{"e0", "e1", "e2"}
	fuzzThisNode   = netip.MustParseAddr("10.0.9.1")
	fuzzGateway    = netip.MustParseAddr("10.0.0.3")
	fuzzAddrs      = []netip.Addr{
		netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), fuzzGateway,
		netip.MustParseAddr("10.0.1.1"), // a /32 ipBlock
		fuzzThisNode,
		netip.MustParseAddr("10.0.8.1"), netip.MustParseAddr("10.0.8.2"), // remote nodes
		netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"),
	}
	fuzzRemoteNodes = []netip.Addr{netip.MustParseAddr("10.0.8.1"), netip.MustParseAddr("10.0.8.2"), netip.MustParseAddr("10.0.0.2")}
	fuzzCIDRs       = []string{"10.0.0.0/24", "10.0.0.0/30", "10.0.1.1/32", "10.0.0.0/8", "fd00::/64", "10.0.8.0/24", "0.0.0.0/0"}
	fuzzExcepts     = []string{"10.0.0.2/32", "10.0.0.0/31", "10.0.1.0/24", "fd00::2/128", "nonsense"}
	fuzzEpoch       = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// fuzzBytes reads the fuzzer's input as choices; past its end every
// choice is the first.
type fuzzBytes struct {
	data []byte
	pos  int
}

func (b *fuzzBytes) more() bool { return b.pos < len(b.data) }

func (b *fuzzBytes) next() byte {
	if b.pos >= len(b.data) {
		return 0
	}
	b.pos++
	return b.data[b.pos-1]
}

// intn returns a choice in [0, n).
func (b *fuzzBytes) intn(n int) int { return int(b.next()) % n }

func (b *fuzzBytes) bool() bool { return b.intn(2) == 1 }

func pick[T any](b *fuzzBytes, from []T) T { return from[b.intn(len(from))] }

func (b *fuzzBytes) labels(keys ...string) map[string]string {
	out := map[string]string{}
	for _, k := range keys {
		if v := b.intn(3); v > 0 {
			out[k] = fmt.Sprintf("%s%d", k[:1], v)
		}
	}
	return out
}

func (b *fuzzBytes) selector() *metav1.LabelSelector {
	switch b.intn(4) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: pick(b, []string{"app", "env", "tier"}), Operator: metav1.LabelSelectorOpExists}}}
	default:
		return &metav1.LabelSelector{MatchLabels: b.labels("app", "env", "tier")}
	}
}

// pod makes a pod object: addresses from the pool (none, one, two, the
// same twice, or one that does not parse), a creation time from three.
func (b *fuzzBytes) pod(namespace, name string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: b.labels("app", "tier"),
			UID:               ktypes.UID(fmt.Sprintf("%s-%s-%d", namespace, name, b.intn(3))),
			CreationTimestamp: metav1.NewTime(fuzzEpoch.Add(time.Duration(b.intn(3)) * time.Minute))},
		Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: b.containerPorts()}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	p.Spec.HostNetwork = b.intn(8) == 0
	switch b.intn(10) {
	case 0:
		p.Status.Phase = corev1.PodSucceeded
	case 1:
		p.Status.Phase = corev1.PodFailed
	case 2:
		p.Status.Phase = corev1.PodPending
	}
	n := b.intn(4)
	if n == 3 {
		n = 1
	}
	for range n {
		ip := pick(b, fuzzAddrs).String()
		if b.intn(16) == 0 {
			ip = "bogus"
		}
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(p.Status.PodIPs) > 0 {
		p.Status.PodIP = p.Status.PodIPs[0].IP
	}
	return p
}

func (b *fuzzBytes) containerPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	if b.bool() {
		out = append(out, corev1.ContainerPort{Name: "http", ContainerPort: pick(b, []int32{80, 8080}), Protocol: corev1.ProtocolTCP})
	}
	if b.intn(3) == 0 {
		out = append(out, corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP})
	}
	return out
}

func (b *fuzzBytes) addrs() []netip.Addr {
	out := []netip.Addr{pick(b, fuzzAddrs)}
	if b.intn(4) == 0 {
		out = append(out, pick(b, fuzzAddrs))
	}
	return out
}

func (b *fuzzBytes) netpolPeer() networkingv1.NetworkPolicyPeer {
	switch b.intn(4) {
	case 0:
		return networkingv1.NetworkPolicyPeer{PodSelector: b.selector()}
	case 1:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: b.selector()}
	case 2:
		return networkingv1.NetworkPolicyPeer{PodSelector: b.selector(), NamespaceSelector: b.selector()}
	default:
		blk := &networkingv1.IPBlock{CIDR: pick(b, fuzzCIDRs)}
		for range b.intn(3) {
			blk.Except = append(blk.Except, pick(b, fuzzExcepts))
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: blk}
	}
}

func (b *fuzzBytes) netpolPorts() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range b.intn(3) {
		switch b.intn(5) {
		case 0:
			out = append(out, port(corev1.ProtocolTCP, 80))
		case 1:
			out = append(out, port(corev1.ProtocolUDP, 53))
		case 2:
			out = append(out, named(corev1.ProtocolTCP, "http"))
		case 3:
			out = append(out, named(corev1.ProtocolUDP, "dns"))
		default:
			out = append(out, portRange(80, 90))
		}
	}
	return out
}

func (b *fuzzBytes) netpol(namespace, name string) *networkingv1.NetworkPolicy {
	p := netpol(name, inNamespace(namespace))
	p.UID = ktypes.UID(fmt.Sprintf("%s-%s-%d", namespace, name, b.intn(2)))
	p.Spec.PodSelector = *b.selector()
	for range b.intn(3) {
		var from []networkingv1.NetworkPolicyPeer
		for range b.intn(3) {
			from = append(from, b.netpolPeer())
		}
		ingressRule(from, b.netpolPorts()...)(p)
	}
	for range b.intn(3) {
		var to []networkingv1.NetworkPolicyPeer
		for range b.intn(3) {
			to = append(to, b.netpolPeer())
		}
		egressRule(to, b.netpolPorts()...)(p)
	}
	switch b.intn(4) {
	case 0:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	}
	return p
}

func (b *fuzzBytes) cnpProtocols() []cnpv1.ClusterNetworkPolicyProtocol {
	switch b.intn(4) {
	case 0:
		return []cnpv1.ClusterNetworkPolicyProtocol{ctcp(80, 80)}
	case 1:
		return []cnpv1.ClusterNetworkPolicyProtocol{cnamed("http")}
	case 2:
		return []cnpv1.ClusterNetworkPolicyProtocol{cudp(53, 53), ctcp(80, 90)}
	}
	return nil
}

func (b *fuzzBytes) cnp(name string) *cnpv1.ClusterNetworkPolicy {
	tier := pick(b, []cnpv1.Tier{admin, base})
	p := cnp(name, tier, int32(1+b.intn(3)))
	if b.bool() {
		subjectPods(b.labels("env"), b.labels("app", "tier"))(p)
	} else {
		subjectNS(b.labels("env"))(p)
	}
	action := func() cnpv1.ClusterNetworkPolicyRuleAction {
		return pick(b, []cnpv1.ClusterNetworkPolicyRuleAction{accept, deny, pass})
	}
	for range b.intn(3) {
		var from []cnpv1.ClusterNetworkPolicyIngressPeer
		if b.bool() {
			from = fromNS(b.labels("env"))
		} else {
			from = fromPods(b.labels("env"), b.labels("app", "tier"))
		}
		cin(action(), from, b.cnpProtocols()...)(p)
	}
	for range b.intn(3) {
		var to []cnpv1.ClusterNetworkPolicyEgressPeer
		switch b.intn(4) {
		case 0:
			to = toNS(b.labels("env"))
		case 1:
			to = toNodes(b.labels("zone"))
		case 2:
			to = toNets(cnpv1.CIDR(pick(b, fuzzCIDRs)), cnpv1.CIDR(pick(b, fuzzCIDRs)))
		default:
			to = []cnpv1.ClusterNetworkPolicyEgressPeer{{Pods: &cnpv1.NamespacedPod{
				NamespaceSelector: *sel(b.labels("env")), PodSelector: *sel(b.labels("app"))}}}
		}
		cout(action(), to, b.cnpProtocols()...)(p)
	}
	return p
}

// fuzzStart is the cluster the steps start from.
func fuzzStart(b *fuzzBytes) State {
	var s State
	for _, n := range fuzzNamespaces {
		s.Namespaces = append(s.Namespaces, ns(n, b.labels("env", "team")))
	}
	for i := range 5 {
		s.Pods = append(s.Pods, b.pod(fuzzNamespaces[i%3], fuzzPodNames[i%4]))
	}
	s.Endpoints = []Endpoint{{ID: "e0", Ifindex: 10, Pod: s.Pods[0], IPs: []netip.Addr{fuzzAddrs[0]}}}
	s.Policies = []*networkingv1.NetworkPolicy{b.netpol("ns-a", "pol0"), b.netpol("ns-b", "pol1")}
	s.NodeIPs = []netip.Addr{fuzzThisNode, fuzzGateway}
	s.RemoteNodeIPs = []netip.Addr{fuzzRemoteNodes[0]}
	s.NodeLabels = map[netip.Addr]map[string]string{fuzzRemoteNodes[0]: {"zone": "z1"}}
	s.LocalNodeLabels = map[string]string{"zone": "z2"}
	if b.bool() {
		s.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{b.cnp("c0")}
	}
	return s
}

// fuzzStep is one change to the cluster; before, when set, runs against
// the previous Result before the next compile (the agent programming a
// starting pod, or a compile whose Result is thrown away).
type fuzzStep struct {
	name   string
	change func(b *fuzzBytes, s *State) string
	before func(b *fuzzBytes, s State, prev *Result, alloc *identity.Allocator) string
}

// findPod returns the index of the pod named namespace/name, or -1.
func findPod(s *State, namespace, name string) int {
	return slices.IndexFunc(s.Pods, func(p *corev1.Pod) bool { return p.Namespace == namespace && p.Name == name })
}

// replacePod puts p in the place of the pod at i (of every listing of it:
// a lister has one object per pod) and, as controller.podOf does, into
// every endpoint of the pod, whatever object it had: two endpoints of one
// pod that hold objects that differ tie in claimOrder, and the walk then
// answers by their order.
func replacePod(s *State, i int, p *corev1.Pod) {
	old := s.Pods[i]
	for j := range s.Pods {
		if s.Pods[j] == old {
			s.Pods[j] = p
		}
	}
	for j := range s.Endpoints {
		if ep := s.Endpoints[j].Pod; ep != nil && ep.Namespace == p.Namespace && ep.Name == p.Name {
			s.Endpoints[j].Pod = p
		}
	}
}

// somePod returns the index of a pod chosen by b, or -1 if there is none.
func somePod(b *fuzzBytes, s *State) int {
	if len(s.Pods) == 0 {
		return -1
	}
	return b.intn(len(s.Pods))
}

// removeOne deletes the element of xs the input picks, and returns it;
// ok is false when xs is empty.
func removeOne[T any](b *fuzzBytes, xs []T) (rest []T, gone T, ok bool) {
	if len(xs) == 0 {
		return xs, gone, false
	}
	i := b.intn(len(xs))
	gone = xs[i]
	return slices.Delete(xs, i, i+1), gone, true
}

// changePod replaces a pod by a copy that change modified.
func changePod(b *fuzzBytes, s *State, change func(*corev1.Pod) string) string {
	i := somePod(b, s)
	if i < 0 {
		return "no pod"
	}
	p := s.Pods[i].DeepCopy()
	what := change(p)
	// As the API server does: every change of an object is a new version.
	v, _ := strconv.Atoi(p.ResourceVersion)
	p.ResourceVersion = strconv.Itoa(v + 1)
	replacePod(s, i, p)
	return fmt.Sprintf("%s/%s %s", p.Namespace, p.Name, what)
}

func fuzzSteps() []fuzzStep {
	return []fuzzStep{
		{name: "pod created or made again", change: func(b *fuzzBytes, s *State) string {
			p := b.pod(pick(b, fuzzNamespaces), pick(b, fuzzPodNames))
			if i := findPod(s, p.Namespace, p.Name); i >= 0 {
				replacePod(s, i, p)
			} else {
				s.Pods = append(s.Pods, p)
			}
			return fmt.Sprintf("%s/%s uid %s created %s %s hostNetwork %v ips %v labels %v", p.Namespace, p.Name, p.UID,
				p.CreationTimestamp.Format("15:04"), p.Status.Phase, p.Spec.HostNetwork, p.Status.PodIPs, p.Labels)
		}},
		{name: "pod deleted", change: func(b *fuzzBytes, s *State) string {
			i := somePod(b, s)
			if i < 0 {
				return "no pod"
			}
			p := s.Pods[i]
			s.Pods = slices.Delete(s.Pods, i, i+1)
			return p.Namespace + "/" + p.Name
		}},
		{name: "pod labels changed", change: func(b *fuzzBytes, s *State) string {
			return changePod(b, s, func(p *corev1.Pod) string {
				p.Labels = b.labels("app", "tier")
				return fmt.Sprint(p.Labels)
			})
		}},
		{name: "pod addresses changed", change: func(b *fuzzBytes, s *State) string {
			return changePod(b, s, func(p *corev1.Pod) string {
				p.Status.PodIPs = nil
				for _, a := range b.addrs() {
					p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: a.String()})
				}
				return fmt.Sprint(p.Status.PodIPs)
			})
		}},
		{name: "pod phase changed", change: func(b *fuzzBytes, s *State) string {
			return changePod(b, s, func(p *corev1.Pod) string {
				p.Status.Phase = pick(b, []corev1.PodPhase{corev1.PodRunning, corev1.PodSucceeded, corev1.PodFailed, corev1.PodPending})
				return string(p.Status.Phase)
			})
		}},
		{name: "pod named ports changed", change: func(b *fuzzBytes, s *State) string {
			return changePod(b, s, func(p *corev1.Pod) string {
				p.Spec.Containers[0].Ports = b.containerPorts()
				return fmt.Sprint(p.Spec.Containers[0].Ports)
			})
		}},
		{name: "pod replaced by an equal copy", change: func(b *fuzzBytes, s *State) string {
			return changePod(b, s, func(*corev1.Pod) string { return "" })
		}},
		{name: "pod replaced by an equal copy, endpoints keep the old", change: func(b *fuzzBytes, s *State) string {
			i := somePod(b, s)
			if i < 0 {
				return "no pod"
			}
			s.Pods[i] = s.Pods[i].DeepCopy()
			return s.Pods[i].Namespace + "/" + s.Pods[i].Name
		}},
		{name: "pods relisted in another order", change: func(b *fuzzBytes, s *State) string {
			for i := len(s.Pods) - 1; i > 0; i-- {
				j := b.intn(i + 1)
				s.Pods[i], s.Pods[j] = s.Pods[j], s.Pods[i]
			}
			return ""
		}},
		{name: "a pod listed twice, or once again", change: func(b *fuzzBytes, s *State) string {
			for i, p := range s.Pods {
				if j := slices.Index(s.Pods[i+1:], p); j >= 0 {
					s.Pods = slices.Delete(s.Pods, i+1+j, i+2+j)
					return "once: " + p.Namespace + "/" + p.Name
				}
			}
			i := somePod(b, s)
			if i < 0 {
				return "no pod"
			}
			s.Pods = append(s.Pods, s.Pods[i])
			return "twice: " + s.Pods[i].Namespace + "/" + s.Pods[i].Name
		}},
		{name: "endpoint registered", change: func(b *fuzzBytes, s *State) string {
			i := somePod(b, s)
			if i < 0 {
				return "no pod"
			}
			ep := Endpoint{ID: pick(b, fuzzEndpoints), Ifindex: 10 + b.intn(4), Pod: s.Pods[i], IPs: b.addrs()}
			if b.intn(8) == 0 {
				ep.Pod = nil // the API has not shown it yet
			}
			if j := slices.IndexFunc(s.Endpoints, func(e Endpoint) bool { return e.ID == ep.ID }); j >= 0 && b.intn(4) > 0 {
				s.Endpoints[j] = ep
			} else {
				// Under an ID already there, sometimes: the agent's
				// bookkeeping gone wrong must not fool the patch either.
				s.Endpoints = append(s.Endpoints, ep)
			}
			return fmt.Sprintf("%s pod %s ips %v", ep.ID, endpointPodName(ep), ep.IPs)
		}},
		{name: "another endpoint for a pod, with a copy of it", change: func(b *fuzzBytes, s *State) string {
			// Both claim their addresses under one name, UID and age: a
			// tie in claimOrder between two objects. Only equal ones:
			// between objects that differ the walk itself answers by
			// their order.
			j := slices.IndexFunc(s.Endpoints, func(e Endpoint) bool { return e.Pod != nil })
			if j < 0 {
				return "none"
			}
			ep := s.Endpoints[j]
			ep.ID, ep.Pod = pick(b, fuzzEndpoints), ep.Pod.DeepCopy()
			if b.bool() {
				ep.IPs = b.addrs()
			}
			s.Endpoints = append(s.Endpoints, ep)
			return fmt.Sprintf("%s pod %s labels %v ips %v", ep.ID, endpointPodName(ep), ep.Pod.Labels, ep.IPs)
		}},
		{name: "endpoints listed in another order", change: func(b *fuzzBytes, s *State) string {
			// The agent lists them from a map.
			for i := len(s.Endpoints) - 1; i > 0; i-- {
				j := b.intn(i + 1)
				s.Endpoints[i], s.Endpoints[j] = s.Endpoints[j], s.Endpoints[i]
			}
			return ""
		}},
		{name: "endpoint removed", change: func(b *fuzzBytes, s *State) string {
			var ep Endpoint
			var ok bool
			if s.Endpoints, ep, ok = removeOne(b, s.Endpoints); !ok {
				return "none"
			}
			return ep.ID
		}},
		{name: "endpoint addresses changed", change: func(b *fuzzBytes, s *State) string {
			if len(s.Endpoints) == 0 {
				return "none"
			}
			j := b.intn(len(s.Endpoints))
			s.Endpoints[j].IPs = b.addrs()
			return fmt.Sprintf("%s %v", s.Endpoints[j].ID, s.Endpoints[j].IPs)
		}},
		{name: "endpoint's pod learnt or updated", change: func(b *fuzzBytes, s *State) string {
			if len(s.Endpoints) == 0 || len(s.Pods) == 0 {
				return "none"
			}
			j := b.intn(len(s.Endpoints))
			ep := &s.Endpoints[j]
			if ep.Pod != nil {
				if i := findPod(s, ep.Pod.Namespace, ep.Pod.Name); i >= 0 {
					ep.Pod = s.Pods[i]
					return ep.ID + " current object"
				}
			}
			ep.Pod = s.Pods[b.intn(len(s.Pods))]
			return ep.ID + " pod " + endpointPodName(*ep)
		}},
		{name: "namespace labels changed", change: func(b *fuzzBytes, s *State) string {
			i := b.intn(len(s.Namespaces))
			n := s.Namespaces[i].DeepCopy()
			n.Labels = b.labels("env", "team")
			s.Namespaces[i] = n
			return fmt.Sprint(n.Name, " ", n.Labels)
		}},
		{name: "namespace replaced by an equal copy", change: func(b *fuzzBytes, s *State) string {
			i := b.intn(len(s.Namespaces))
			s.Namespaces[i] = s.Namespaces[i].DeepCopy()
			return s.Namespaces[i].Name
		}},
		{name: "remote node addresses changed", change: func(b *fuzzBytes, s *State) string {
			s.RemoteNodeIPs = nil
			for _, a := range fuzzRemoteNodes {
				if b.bool() {
					s.RemoteNodeIPs = append(s.RemoteNodeIPs, a)
				}
			}
			// The labels may lag behind, or list a node gone.
			if b.bool() {
				s.NodeLabels = map[netip.Addr]map[string]string{}
				for _, a := range s.RemoteNodeIPs {
					s.NodeLabels[a] = b.labels("zone")
				}
			}
			return fmt.Sprint(s.RemoteNodeIPs, s.NodeLabels)
		}},
		{name: "remote node labels changed", change: func(b *fuzzBytes, s *State) string {
			s.NodeLabels = maps.Clone(s.NodeLabels)
			a := pick(b, fuzzRemoteNodes)
			if s.NodeLabels == nil {
				s.NodeLabels = map[netip.Addr]map[string]string{}
			}
			s.NodeLabels[a] = b.labels("zone")
			return fmt.Sprint(a, s.NodeLabels[a])
		}},
		{name: "this node's addresses changed", change: func(b *fuzzBytes, s *State) string {
			s.NodeIPs = []netip.Addr{fuzzThisNode}
			if b.bool() {
				s.NodeIPs = append(s.NodeIPs, fuzzGateway)
			}
			s.LocalNodeLabels = b.labels("zone")
			return fmt.Sprint(s.NodeIPs, s.LocalNodeLabels)
		}},
		{name: "policy created or updated", change: func(b *fuzzBytes, s *State) string {
			p := b.netpol(pick(b, fuzzNamespaces), pick(b, []string{"pol0", "pol1", "pol2"}))
			if i := slices.IndexFunc(s.Policies, func(q *networkingv1.NetworkPolicy) bool {
				return q.Namespace == p.Namespace && q.Name == p.Name
			}); i >= 0 {
				s.Policies[i] = p
			} else {
				s.Policies = append(s.Policies, p)
			}
			return describePolicy(p)
		}},
		{name: "policy deleted", change: func(b *fuzzBytes, s *State) string {
			var p *networkingv1.NetworkPolicy
			var ok bool
			if s.Policies, p, ok = removeOne(b, s.Policies); !ok {
				return "none"
			}
			return p.Namespace + "/" + p.Name
		}},
		{name: "policy replaced by an equal copy", change: func(b *fuzzBytes, s *State) string {
			if len(s.Policies) == 0 {
				return "none"
			}
			i := b.intn(len(s.Policies))
			s.Policies[i] = s.Policies[i].DeepCopy()
			return s.Policies[i].Namespace + "/" + s.Policies[i].Name
		}},
		{name: "cluster policy created or updated", change: func(b *fuzzBytes, s *State) string {
			p := b.cnp(pick(b, []string{"c0", "c1"}))
			if i := slices.IndexFunc(s.ClusterPolicies, func(q *cnpv1.ClusterNetworkPolicy) bool { return q.Name == p.Name }); i >= 0 {
				s.ClusterPolicies[i] = p
			} else {
				s.ClusterPolicies = append(s.ClusterPolicies, p)
			}
			return fmt.Sprintf("%s %+v", p.Name, p.Spec)
		}},
		{name: "cluster policy deleted", change: func(b *fuzzBytes, s *State) string {
			var p *cnpv1.ClusterNetworkPolicy
			var ok bool
			if s.ClusterPolicies, p, ok = removeOne(b, s.ClusterPolicies); !ok {
				return "none"
			}
			return p.Name
		}},
		{name: "local pod starting, programmed from the previous Result", change: func(b *fuzzBytes, s *State) string {
			p := b.pod(pick(b, fuzzNamespaces), pick(b, []string{"p0", "p1", "p2", "p3", "new"}))
			p.Spec.HostNetwork, p.Status.Phase = false, corev1.PodRunning
			if i := findPod(s, p.Namespace, p.Name); i >= 0 {
				replacePod(s, i, p)
			} else {
				s.Pods = append(s.Pods, p)
			}
			ep := Endpoint{ID: pick(b, fuzzEndpoints), Ifindex: 20, Pod: p, IPs: b.addrs()}
			s.Endpoints = slices.DeleteFunc(s.Endpoints, func(e Endpoint) bool { return e.ID == ep.ID })
			s.Endpoints = append(s.Endpoints, ep)
			return fmt.Sprintf("%s pod %s/%s labels %v ips %v", ep.ID, p.Namespace, p.Name, p.Labels, ep.IPs)
		}, before: func(b *fuzzBytes, s State, prev *Result, alloc *identity.Allocator) string {
			ep := s.Endpoints[len(s.Endpoints)-1]
			_, _, err := prev.CompileEndpoint(ep)
			return fmt.Sprintf("CompileEndpoint: %v", err)
		}},
		{name: "a compile from the previous Result thrown away", change: func(b *fuzzBytes, s *State) string {
			return ""
		}, before: func(b *fuzzBytes, s State, prev *Result, alloc *identity.Allocator) string {
			// Of a state the agent never settles on: the real one
			// follows from the same Previous.
			other := s
			other.Pods = slices.Clone(s.Pods)
			other.Endpoints = slices.Clone(s.Endpoints)
			what := changePod(b, &other, func(p *corev1.Pod) string {
				p.Labels = b.labels("app", "tier")
				p.Status.PodIPs = []corev1.PodIP{{IP: pick(b, fuzzAddrs).String()}}
				return fmt.Sprint(p.Labels, p.Status.PodIPs)
			})
			other.Previous = prev
			Compile(other, alloc)
			return what
		}},
	}
}

func endpointPodName(ep Endpoint) string {
	if ep.Pod == nil {
		return "unknown"
	}
	return ep.Pod.Namespace + "/" + ep.Pod.Name
}

func describePolicy(p *networkingv1.NetworkPolicy) string {
	return fmt.Sprintf("%s/%s uid %s %+v", p.Namespace, p.Name, p.UID, p.Spec)
}

// runCompileSteps applies the changes data drives, at most 30, compiling
// each with the previous Result as the agent does, and fails at the first
// whose Result differs from a compile of the same State from scratch. It
// returns how many steps patched the previous addresses.
func runCompileSteps(t *testing.T, data []byte) (steps, patched int) {
	b := &fuzzBytes{data: data}
	s := fuzzStart(b)
	alloc := identity.NewAllocator()
	prev := Compile(s, alloc)
	kinds := fuzzSteps()
	var log []string
	for step := 0; step < 30 && b.more(); step++ {
		kind := kinds[b.intn(len(kinds))]
		next := s
		next.Pods = slices.Clone(s.Pods)
		next.Namespaces = slices.Clone(s.Namespaces)
		next.Policies = slices.Clone(s.Policies)
		next.ClusterPolicies = slices.Clone(s.ClusterPolicies)
		next.Endpoints = slices.Clone(s.Endpoints)
		line := fmt.Sprintf("%d %s: %s", step, kind.name, kind.change(b, &next))
		if kind.before != nil {
			line += "; " + kind.before(b, next, &prev, alloc)
		}
		log = append(log, line)
		next.Previous = &prev
		got := Compile(next, alloc)
		if got.comp.patched {
			patched++
		}
		compareWithScratch(t, next, alloc, got)
		if t.Failed() {
			t.Fatalf("after the steps:\n%s", strings.Join(log, "\n"))
		}
		s, prev = next, got
		s.Previous = nil
		steps++
	}
	return steps, patched
}

// compareWithScratch is compileAfresh, and the rest of the Result too: what
// the agent reports (problems, unknown endpoints) and the rules named.
func compareWithScratch(t *testing.T, s State, alloc *identity.Allocator, got Result) {
	t.Helper()
	forgets := alloc.Forgets()
	fresh := compileAfresh(t, s, alloc, got)
	// The compile from scratch uses the keys it needs: any other the
	// allocator still held, the compile with Previous kept for nothing.
	if alloc.Forgets() != forgets {
		t.Errorf("the compile from scratch forgot keys the compile with the previous Result had kept")
	}
	if d := gocmp.Diff(errorStrings(fresh.Problems), errorStrings(got.Problems)); d != "" {
		t.Errorf("problems (-from scratch +with the previous Result):\n%s", d)
	}
	if d := gocmp.Diff(fresh.ClusterProblems, got.ClusterProblems); d != "" {
		t.Errorf("cluster problems (-from scratch +with the previous Result):\n%s", d)
	}
	if d := gocmp.Diff(fresh.Unknown, got.Unknown); d != "" {
		t.Errorf("unknown endpoints (-from scratch +with the previous Result):\n%s", d)
	}
	for id, ep := range got.Endpoints {
		for _, r := range slices.Concat(ep.Ingress, ep.Egress) {
			is := got.Refs[r.Ref]
			if was, ok := fresh.Refs[r.Ref]; ok && was != is {
				t.Errorf("endpoint %s: rule %d names %+v, from scratch %+v", id, r.Ref, is, was)
			}
		}
	}
}

// fuzzSeeds are inputs of every length the steps take, from a fixed seed.
func fuzzSeeds() [][]byte {
	var out [][]byte
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 48 {
		data := make([]byte, 40+i*8)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		out = append(out, data)
	}
	return out
}

// FuzzCompileSteps: after any run of cluster changes, a compile given the
// previous Result equals a compile of the same State from scratch. The
// input drives the changes; the seeds run as a unit test.
func FuzzCompileSteps(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) { runCompileSteps(t, data) })
}

// The seeds must take the patch often, or passing proves little of it.
func TestFuzzCompileStepsSeedsPatch(t *testing.T) {
	steps, patched := 0, 0
	for _, seed := range fuzzSeeds() {
		n, p := runCompileSteps(t, seed)
		steps, patched = steps+n, patched+p
	}
	if patched < steps/5 {
		t.Errorf("%d of %d steps patched the previous addresses, want at least a fifth", patched, steps)
	}
	t.Logf("%d of %d steps patched the previous addresses", patched, steps)
}
