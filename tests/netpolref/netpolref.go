// Package netpolref is a reference evaluator of networking.k8s.io/v1
// NetworkPolicy: given pods, namespaces and policies, may this packet
// pass? It is written from the API's field documentation, quoted below,
// and deliberately naive (it walks every policy for every question, and
// matches label selectors with its own few lines), so that it shares no
// code and no shortcut with the compiler in daemon/policy, which the fuzz
// target here checks against it.
//
// Palisade's own choices where the API leaves room are stated where they
// apply: traffic with the subject's node is always allowed, ipBlock matches
// pod addresses too, and an egress named port matches only pods that
// declare it.
//
// The package is test support: product code must never import it.
package netpolref

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cluster is what the evaluator judges by. Every pod is running with the
// addresses in its status.
type Cluster struct {
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	// NodeIPs are the subject's node's addresses.
	NodeIPs []netip.Addr
}

// Protocol numbers as in IP headers; the evaluator also takes ones no
// policy port names, such as ICMP (1).
const (
	TCP  uint8 = 6
	UDP  uint8 = 17
	SCTP uint8 = 132
)

// Ingress says whether subject may receive a connection from peer on
// proto and port (subject's port).
func (c *Cluster) Ingress(subject *corev1.Pod, peer netip.Addr, proto uint8, port uint16) bool {
	return c.allowed(subject, peer, proto, port, false)
}

// Egress says whether subject may open a connection to peer on proto and
// port (peer's port).
func (c *Cluster) Egress(subject *corev1.Pod, peer netip.Addr, proto uint8, port uint16) bool {
	return c.allowed(subject, peer, proto, port, true)
}

func (c *Cluster) allowed(subject *corev1.Pod, peer netip.Addr, proto uint8, port uint16, egress bool) bool {
	for _, a := range c.NodeIPs {
		if a == peer {
			return true // Palisade: the node (kubelet probes) always passes
		}
	}
	isolated := false
	for _, pol := range c.Policies {
		// "podSelector selects the pods to which this NetworkPolicy object
		// applies" - pods in the policy's namespace only.
		if pol.Namespace != subject.Namespace || !matches(&pol.Spec.PodSelector, subject.Labels) {
			continue
		}
		if !affects(pol, egress) {
			continue
		}
		// "If any NetworkPolicy objects select a particular pod, and have
		// [the type] in its policyTypes, that pod is isolated"; traffic is
		// then allowed if any rule of any such policy allows it.
		isolated = true
		if egress {
			for _, r := range pol.Spec.Egress {
				if c.peersMatch(pol, r.To, peer) && portsMatch(r.Ports, proto, port, c.podAt(peer)) {
					return true
				}
			}
		} else {
			for _, r := range pol.Spec.Ingress {
				if c.peersMatch(pol, r.From, peer) && portsMatch(r.Ports, proto, port, subject) {
					return true
				}
			}
		}
	}
	return !isolated
}

// affects applies policyTypes: "If this field is not specified, it will
// default based on the existence of ingress or egress rules; policies that
// contain an egress section are assumed to affect egress, and all policies
// (whether or not they contain an ingress section) are assumed to affect
// ingress."
func affects(pol *networkingv1.NetworkPolicy, egress bool) bool {
	if len(pol.Spec.PolicyTypes) == 0 {
		return !egress || len(pol.Spec.Egress) > 0
	}
	want := networkingv1.PolicyTypeIngress
	if egress {
		want = networkingv1.PolicyTypeEgress
	}
	for _, t := range pol.Spec.PolicyTypes {
		if t == want {
			return true
		}
	}
	return false
}

// peersMatch: "If this field is empty or missing, this rule matches all
// sources [destinations]. If this field is present and contains at least
// one item, this rule allows traffic only if the traffic matches at least
// one item in the from [to] list."
func (c *Cluster) peersMatch(pol *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, addr netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if c.peerMatches(pol, p, addr) {
			return true
		}
	}
	return false
}

func (c *Cluster) peerMatches(pol *networkingv1.NetworkPolicy, p networkingv1.NetworkPolicyPeer, addr netip.Addr) bool {
	if b := p.IPBlock; b != nil {
		// "IPBlock defines policy on a particular IPBlock": the addresses
		// in cidr, "Except is a slice of CIDRs that should not be included".
		cidr, err := netip.ParsePrefix(b.CIDR)
		if err != nil || !cidr.Contains(addr) {
			return false
		}
		for _, e := range b.Except {
			ep, err := netip.ParsePrefix(e)
			if err != nil || ep.Contains(addr) {
				return false
			}
		}
		return true
	}
	pod := c.podAt(addr)
	if pod == nil {
		return false // pod and namespace selectors select pods only
	}
	// "If namespaceSelector is also set, then the NetworkPolicyPeer as a
	// whole selects the pods matching podSelector in the Namespaces
	// selected by NamespaceSelector. Otherwise it selects the pods
	// matching podSelector in the policy's own namespace."
	if p.NamespaceSelector == nil {
		if pod.Namespace != pol.Namespace {
			return false
		}
	} else if !matches(p.NamespaceSelector, c.namespaceLabels(pod.Namespace)) {
		return false
	}
	// "If podSelector is also set ... Otherwise it selects all pods in
	// the namespaces selected by namespaceSelector."
	return p.PodSelector == nil || matches(p.PodSelector, pod.Labels)
}

// portsMatch: "If this field is empty or missing, this rule matches all
// ports (traffic not restricted by port). If this field is present and
// contains at least one item, then this rule allows traffic only if the
// traffic matches at least one port in the list." A named port is looked
// up in owner's containers: the subject for ingress, the destination for
// egress (nil outside the cluster, which declares no names).
func portsMatch(ports []networkingv1.NetworkPolicyPort, proto uint8, port uint16, owner *corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		// "The protocol (TCP, UDP, or SCTP) which traffic must match. If
		// not specified, this field defaults to TCP."
		want := TCP
		if p.Protocol != nil {
			switch *p.Protocol {
			case corev1.ProtocolUDP:
				want = UDP
			case corev1.ProtocolSCTP:
				want = SCTP
			}
		}
		if want != proto {
			continue
		}
		switch {
		case p.Port == nil:
			// "If this field is not provided, this matches all port names
			// and numbers."
			return true
		case p.Port.StrVal != "":
			if owner != nil && declares(owner, p.Port.StrVal, proto, port) {
				return true
			}
		default:
			// "If endPort is specified, the rule allows traffic to the
			// range of ports from port to endPort, inclusive."
			last := p.Port.IntVal
			if p.EndPort != nil {
				last = *p.EndPort
			}
			if int32(port) >= p.Port.IntVal && int32(port) <= last {
				return true
			}
		}
	}
	return false
}

// declares says whether pod has a container port named name with proto
// and number port.
func declares(pod *corev1.Pod, name string, proto uint8, port uint16) bool {
	for _, ctr := range pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			p := TCP
			switch cp.Protocol {
			case corev1.ProtocolUDP:
				p = UDP
			case corev1.ProtocolSCTP:
				p = SCTP
			}
			if cp.Name == name && p == proto && cp.ContainerPort == int32(port) {
				return true
			}
		}
	}
	return false
}

func (c *Cluster) podAt(addr netip.Addr) *corev1.Pod {
	for _, p := range c.Pods {
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil && a == addr {
				return p
			}
		}
	}
	return nil
}

func (c *Cluster) namespaceLabels(name string) map[string]string {
	for _, n := range c.Namespaces {
		if n.Name == name {
			return n.Labels
		}
	}
	return nil
}

// matches evaluates a label selector: "matchLabels is a map of {key,value}
// pairs ... The requirements are ANDed", each expression "In, NotIn,
// Exists and DoesNotExist", and "An empty label selector matches all
// objects."
func matches(s *metav1.LabelSelector, lbl map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := lbl[k]; !ok || got != v {
			return false
		}
	}
	for _, e := range s.MatchExpressions {
		got, ok := lbl[e.Key]
		in := false
		for _, v := range e.Values {
			if ok && got == v {
				in = true
			}
		}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			if !in {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			// "NotIn": the key is absent or its value is not listed.
			if in {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}
