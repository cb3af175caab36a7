package inspect

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/policy"
)

// end is one resolved end of a flow.
type end struct {
	addr netip.Addr
	pod  *corev1.Pod // nil for a bare address nobody holds
}

func (e end) name() string {
	if e.pod != nil {
		return name(e.pod)
	}
	return e.addr.String()
}

// resolve turns "namespace/pod" or an IP into an end.
func (v *View) resolve(s string) (end, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return end{addr: a, pod: v.PodByIP(a)}, nil
	}
	ns, pn, ok := strings.Cut(s, "/")
	if !ok || ns == "" || pn == "" {
		return end{}, fmt.Errorf("%q is neither namespace/pod nor an IP address", s)
	}
	p := v.Pod(s)
	if p == nil {
		return end{}, fmt.Errorf("pod %s not found", s)
	}
	if addrs := v.podAddrs(p); len(addrs) > 0 {
		return end{addr: addrs[0], pod: p}, nil
	}
	return end{}, fmt.Errorf("pod %s has no IP address yet", s)
}

// podAddrs are the pod's addresses as the datapath sees them: a local
// endpoint's from the CNI chain, else those in the Pod's status, in order.
func (v *View) podAddrs(p *corev1.Pod) []netip.Addr {
	for _, ep := range v.Endpoints {
		if ep.PodNamespace == p.Namespace && ep.PodName == p.Name && len(ep.IPs) > 0 {
			out := make([]netip.Addr, len(ep.IPs))
			for i, a := range ep.IPs {
				out[i] = a.Unmap()
			}
			return out
		}
	}
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// inFamily is e with the pod's address of like's family, if it has one: a
// flow has one family, so a dual-stack pod named on one side of an address
// given on the other sends or receives from its address of that family
// (an ipBlock of /128s judges its IPv6 address, never its IPv4 one).
func (v *View) inFamily(e end, like netip.Addr) end {
	if e.pod == nil || e.addr.Is4() == like.Is4() {
		return e
	}
	for _, a := range v.podAddrs(e.pod) {
		if a.Is4() == like.Is4() {
			return end{addr: a, pod: e.pod}
		}
	}
	return e
}

// Explain answers what the datapath of this node does with the first packet
// of a flow, one Explanation per port.
func (v *View) Explain(req agentapi.ExplainRequest) ([]agentapi.Explanation, error) {
	from, err := v.resolve(req.From)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	to, err := v.resolve(req.To)
	if err != nil {
		return nil, fmt.Errorf("--to: %w", err)
	}
	if _, err := netip.ParseAddr(req.From); err != nil {
		from = v.inFamily(from, to.addr)
	} else if _, err := netip.ParseAddr(req.To); err != nil {
		to = v.inFamily(to, from.addr)
	}
	type target struct {
		proto uint8
		port  uint16
	}
	var targets []target
	if req.Port != 0 {
		proto, err := ParseProto(req.Protocol)
		if err != nil {
			return nil, err
		}
		targets = append(targets, target{proto, req.Port})
	} else {
		if to.pod == nil {
			return nil, errors.New("give a port (--to ADDRESS:PORT/PROTOCOL): the destination is no pod, so it declares none")
		}
		for _, c := range to.pod.Spec.Containers {
			for _, cp := range c.Ports {
				proto, err := ParseProto(string(cp.Protocol))
				if err != nil {
					continue
				}
				if req.Protocol != "" && !strings.EqualFold(req.Protocol, ProtoName(proto)) {
					continue
				}
				targets = append(targets, target{proto, uint16(cp.ContainerPort)})
			}
		}
		if len(targets) == 0 {
			return nil, fmt.Errorf("pod %s declares no container port; give one (--to %s:PORT/PROTOCOL)", name(to.pod), name(to.pod))
		}
	}
	var out []agentapi.Explanation
	for _, t := range targets {
		x, err := v.explain(from, to, t.proto, t.port)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

func (v *View) peer(e end) agentapi.Peer {
	p := agentapi.Peer{IP: e.addr.String(), Identity: v.Result.IdentityOf(e.addr), Description: v.DescribeAddr(e.addr)}
	if e.pod != nil {
		p.Pod, p.Node = name(e.pod), e.pod.Spec.NodeName
		_, _, p.Local = v.Endpoint(p.Pod)
	}
	return p
}

func (v *View) explain(from, to end, proto uint8, port uint16) (agentapi.Explanation, error) {
	x := agentapi.Explanation{From: v.peer(from), To: v.peer(to), Protocol: ProtoName(proto), Port: port, Allowed: true}
	judged := false
	if x.From.Local {
		ep, pol, _ := v.Endpoint(x.From.Pod)
		dv := v.judge(ep, pol, policy.Egress, from, to, proto, port)
		x.Egress, x.Allowed, judged = dv, x.Allowed && dv.Allowed, true
	} else {
		x.Notes = append(x.Notes, v.elsewhere(from, "egress"))
	}
	if x.To.Local {
		ep, pol, _ := v.Endpoint(x.To.Pod)
		dv := v.judge(ep, pol, policy.Ingress, to, from, proto, port)
		x.Ingress, x.Allowed, judged = dv, x.Allowed && dv.Allowed, true
	} else {
		x.Notes = append(x.Notes, v.elsewhere(to, "ingress"))
	}
	if !judged {
		return x, fmt.Errorf("neither %s nor %s runs on node %s: explain answers for this node's pods; run it on the node of either", from.name(), to.name(), v.Node)
	}
	return x, nil
}

func (v *View) elsewhere(e end, dir string) string {
	switch {
	case e.pod == nil:
		return fmt.Sprintf("%s is no pod: nothing judges its %s", e.addr, dir)
	case e.pod.Spec.NodeName != v.Node:
		return fmt.Sprintf("%s runs on node %s: its %s is judged there (run palisadectl explain on that node)", name(e.pod), e.pod.Spec.NodeName, dir)
	}
	return fmt.Sprintf("%s has no programmed endpoint on this node: its traffic is dropped until it has one", name(e.pod))
}

// judge explains subject's verdict in direction d on a flow with peer. The
// verdict is Result.Allows, the function the maps are written from; the
// rest attributes it to policies and rules.
func (v *View) judge(ep agentapi.Endpoint, pol policy.EndpointPolicy, d policy.Direction, subject, peer end, proto uint8, port uint16) *agentapi.DirectionVerdict {
	res := v.Result
	dv := &agentapi.DirectionVerdict{Pod: subject.name(), Allowed: res.Allows(ep.ID, d, peer.addr, proto, port)}
	rules, isolated := pol.Ingress, pol.IngressIsolated
	if d == policy.Egress {
		rules, isolated = pol.Egress, pol.EgressIsolated
	}
	dv.Isolated = isolated
	tiered := (d == policy.Ingress && pol.IngressTiered) || (d == policy.Egress && pol.EgressTiered)
	dir := dirName(d)
	pid := res.IdentityOf(peer.addr)
	what := fmt.Sprintf("%s %d", ProtoName(proto), port)
	switch {
	case !isolated:
		dv.Reason = fmt.Sprintf("no policy selects %s for %s, so all its %s is allowed", dv.Pod, dir, dir)
		return dv
	case pid == identity.Host && !tiered:
		dv.Reason = "NetworkPolicy always allows traffic between a pod and its own node"
		return dv
	}
	if tiered {
		v.judgeTiered(ep, d, dv, peer, pid, proto, port)
		return dv
	}
	var allowedBy []string
	for _, pname := range v.isolating(pol, d) {
		np := v.policy(pname)
		pv := agentapi.PolicyVerdict{Policy: pname, Rules: []agentapi.RuleVerdict{}}
		n := len(np.Spec.Ingress)
		if d == policy.Egress {
			n = len(np.Spec.Egress)
		}
		for i := range n {
			ref := policy.RuleRef{Policy: pname, Direction: dir, Index: i}
			rv := agentapi.RuleVerdict{Rule: RuleName(ref)}
			var compiled, peerRules []policy.Rule
			for _, r := range rules {
				if rr, ok := v.Ref(r.Ref); !ok || rr != ref {
					continue
				}
				compiled = append(compiled, r)
				if r.Peer == pid || r.Peer == identity.Any {
					peerRules = append(peerRules, r)
				}
			}
			matched := false
			for _, r := range peerRules {
				if (r.Proto == policy.ProtoAny || r.Proto == proto) && (r.Ports == (policy.PortRange{}) || (port >= r.Ports.First && port <= r.Ports.Last)) {
					matched = true
				}
			}
			switch {
			case matched:
				rv.Allows, pv.Allows = true, true
				rv.Why = fmt.Sprintf("allows %s on %s", v.Describe(pid), what)
				allowedBy = append(allowedBy, pname+" "+rv.Rule)
			case len(compiled) == 0:
				rv.Why = "matches no address at all now (its peers select nothing, or its named ports are declared by no pod)"
			case len(peerRules) == 0:
				rv.Why = fmt.Sprintf("%s is not among its peers (%s)", v.Describe(pid), v.peers(compiled))
			default:
				rv.Why = fmt.Sprintf("the peer matches, but it allows only %s", portsOf(peerRules))
			}
			pv.Rules = append(pv.Rules, rv)
		}
		dv.Policies = append(dv.Policies, pv)
	}
	isolators := strings.Join(v.isolating(pol, d), ", ")
	switch {
	case dv.Allowed && len(allowedBy) > 0:
		dv.Reason = "allowed by " + strings.Join(allowedBy, ", ")
	case !dv.Allowed && len(allowedBy) == 0:
		dv.Reason = fmt.Sprintf("no policy allows it: %s is isolated for %s by %s, and no rule of theirs allows %s on %s", dv.Pod, dir, isolators, v.Describe(pid), what)
		dv.Fix = v.fix(d, subject, peer, proto, port, dv.Policies)
	default:
		// The verdict and the attribution disagree: report it rather than
		// hide it, the verdict being what the maps hold.
		dv.Reason = fmt.Sprintf("verdict %v, but the rules attributed are %v: please report this as a bug", dv.Allowed, allowedBy)
	}
	return dv
}

// judgeTiered attributes the verdict of a direction cluster policies
// judge: the rule the folded entries name, with its tier.
func (v *View) judgeTiered(ep agentapi.Endpoint, d policy.Direction, dv *agentapi.DirectionVerdict, peer end, pid uint32, proto uint8, port uint16) {
	allowed, ref := v.Result.Verdict(ep.ID, d, peer.addr, proto, port)
	dv.Allowed = allowed
	what := fmt.Sprintf("%s %s %d", v.Describe(pid), ProtoName(proto), port)
	verdict := "denied"
	if allowed {
		verdict = "allowed"
	}
	r, ok := v.Ref(ref)
	switch {
	case !ok && allowed && pid == identity.Host && len(v.isolating(v.Result.Endpoints[ep.ID], d)) > 0:
		dv.Tier = "NetworkPolicy"
		dv.Reason = fmt.Sprintf("allowed: no Admin rule decides %s, and NetworkPolicy, which isolates %s, always allows its own node", what, dv.Pod)
	case !ok && allowed:
		dv.Tier = "none"
		dv.Reason = fmt.Sprintf("allowed: no ClusterNetworkPolicy or NetworkPolicy rule decides %s, and the default allows", what)
	case !ok:
		dv.Tier = "NetworkPolicy"
		dv.Reason = fmt.Sprintf("denied: no cluster policy decides %s, and %s is isolated for %s by NetworkPolicy with no rule allowing it", what, dv.Pod, dirName(d))
	case r.Tier != "":
		dv.Tier, dv.Rule = r.Tier, fmt.Sprintf("ClusterNetworkPolicy %s %s", r.Policy, RuleName(r))
		if r.Name != "" {
			dv.Rule += fmt.Sprintf(" (%q)", r.Name)
		}
		dv.Reason = fmt.Sprintf("%s by the %s tier: %s, action %s, matches %s", verdict, r.Tier, dv.Rule, r.Action, what)
	default:
		dv.Tier, dv.Rule = "NetworkPolicy", fmt.Sprintf("NetworkPolicy %s %s", r.Policy, RuleName(r))
		dv.Reason = fmt.Sprintf("%s by the NetworkPolicy tier: %s matches %s", verdict, dv.Rule, what)
	}
}

func (v *View) peers(rules []policy.Rule) string {
	seen := map[uint32]bool{}
	var out []string
	for _, r := range rules {
		if !seen[r.Peer] {
			seen[r.Peer] = true
			out = append(out, v.Describe(r.Peer))
		}
	}
	if len(out) > 3 {
		out = append(out[:3], fmt.Sprintf("and %d more", len(out)-3))
	}
	return strings.Join(out, "; ")
}

func portsOf(rules []policy.Rule) string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rules {
		s := ProtoName(r.Proto) + " " + portsText(r.Ports)
		if r.Proto == policy.ProtoAny {
			s = "every protocol"
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return strings.Join(out, ", ")
}

// fix proposes the smallest change that allows a denied flow, in order:
// add the port to a rule whose peers already match; add the peer to a rule
// whose ports already match; else a new policy.
func (v *View) fix(d policy.Direction, subject, peer end, proto uint8, port uint16, pvs []agentapi.PolicyVerdict) string {
	dir, field := "ingress", "from"
	if d == policy.Egress {
		dir, field = "egress", "to"
	}
	portSpec := fmt.Sprintf("{protocol: %s, port: %d}", ProtoName(proto), port)
	for _, pv := range pvs {
		for _, rv := range pv.Rules {
			if strings.HasPrefix(rv.Why, "the peer matches") {
				return fmt.Sprintf("add %s to the ports of %s %s", portSpec, pv.Policy, rv.Rule)
			}
		}
	}
	peerJSON := v.peerSpec(subject.pod.Namespace, peer)
	for _, pv := range pvs {
		np := v.policy(pv.Policy)
		// Named ports name the destination's container ports.
		var portLists [][]networkingv1.NetworkPolicyPort
		holder := subject.pod
		if d == policy.Egress {
			holder = peer.pod
			for _, r := range np.Spec.Egress {
				portLists = append(portLists, r.Ports)
			}
		} else {
			for _, r := range np.Spec.Ingress {
				portLists = append(portLists, r.Ports)
			}
		}
		for i, ports := range portLists {
			if portsAllow(ports, holder, proto, port) {
				return fmt.Sprintf("add %s to the %s of %s %s[%d]", peerJSON, field, pv.Policy, dir, i)
			}
		}
	}
	return "apply a policy such as:\n" + v.newPolicy(d, subject, peer, proto, port)
}

// portsAllow reports whether a rule's ports list admits proto/port; named
// ports are looked up in holder, the pod that declares them.
func portsAllow(ports []networkingv1.NetworkPolicyPort, holder *corev1.Pod, proto uint8, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := policy.ProtoTCP
		if p.Protocol != nil {
			var err error
			if pp, err = ParseProto(string(*p.Protocol)); err != nil {
				continue
			}
		}
		if pp != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int:
			last := p.Port.IntVal
			if p.EndPort != nil {
				last = *p.EndPort
			}
			if int32(port) >= p.Port.IntVal && int32(port) <= last {
				return true
			}
		case holder != nil:
			for _, c := range holder.Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == p.Port.StrVal && cp.ContainerPort == int32(port) {
						return true
					}
				}
			}
		}
	}
	return false
}

// peerSpec is a NetworkPolicyPeer selecting peer, seen from a policy in
// namespace ns, as one line of YAML.
func (v *View) peerSpec(ns string, peer end) string {
	b, _ := json.Marshal(v.peerOf(ns, peer))
	return string(b)
}

func (v *View) peerOf(ns string, peer end) networkingv1.NetworkPolicyPeer {
	if peer.pod == nil {
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: netip.PrefixFrom(peer.addr, peer.addr.BitLen()).String()}}
	}
	out := networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: peer.pod.Labels}}
	if peer.pod.Namespace != ns {
		// The API server sets this label on every namespace.
		out.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": peer.pod.Namespace}}
	}
	return out
}

func (v *View) newPolicy(d policy.Direction, subject, peer end, proto uint8, port uint16) string {
	p := corev1.Protocol(ProtoName(proto))
	pn := intstr.FromInt32(int32(port))
	ports := []networkingv1.NetworkPolicyPort{{Protocol: &p, Port: &pn}}
	np := networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Namespace: subject.pod.Namespace},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: subject.pod.Labels}},
	}
	peerSpec := []networkingv1.NetworkPolicyPeer{v.peerOf(subject.pod.Namespace, peer)}
	short := func(e end) string {
		if e.pod != nil {
			return e.pod.Name
		}
		return strings.NewReplacer(".", "-", ":", "-").Replace(e.addr.String())
	}
	if d == policy.Egress {
		np.Name = fmt.Sprintf("allow-%s-to-%s-%d", short(subject), short(peer), port)
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: peerSpec, Ports: ports}}
	} else {
		np.Name = fmt.Sprintf("allow-%s-from-%s-%d", short(subject), short(peer), port)
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: peerSpec, Ports: ports}}
	}
	b, err := yaml.Marshal(np)
	if err != nil {
		return err.Error()
	}
	return strings.ReplaceAll(string(b), "  creationTimestamp: null\n", "")
}
