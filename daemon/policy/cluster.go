package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// Tiers of ClusterNetworkPolicy, as RuleRef.Tier names them.
const (
	TierAdmin    = "Admin"
	TierBaseline = "Baseline"
)

// Actions of a ClusterNetworkPolicy rule, as RuleRef.Action names them.
const (
	ActionAccept = "Accept"
	ActionDeny   = "Deny"
	ActionPass   = "Pass"
)

// tierRule is one ClusterNetworkPolicy rule compiled for one subject pod:
// its action and what it matches, as (peer, protocol, ports) triples.
type tierRule struct {
	action string
	match  []Rule
}

// sortCNPs orders cluster policies as they are judged: Admin before
// Baseline, then by priority. The API leaves the order of equal priorities
// open; the name makes it the same on every node and in every compile.
func sortCNPs(cnps []*cnpv1.ClusterNetworkPolicy) []*cnpv1.ClusterNetworkPolicy {
	cnps = slices.Clone(cnps)
	slices.SortFunc(cnps, func(a, b *cnpv1.ClusterNetworkPolicy) int {
		return cmp.Or(cmp.Compare(tierRank(a.Spec.Tier), tierRank(b.Spec.Tier)),
			cmp.Compare(a.Spec.Priority, b.Spec.Priority), strings.Compare(a.Name, b.Name))
	})
	return cnps
}

// tierRank places an unknown tier with Admin: its rules, turned into Deny
// (cnpBroken), then are judged first, which is the closed side.
func tierRank(t cnpv1.Tier) int {
	if t == cnpv1.BaselineTier {
		return 1
	}
	return 0
}

// cnpBroken reports why a cluster policy as a whole cannot be understood:
// an unknown tier or a subject that does not parse. Such a policy selects
// every pod and every rule of it denies what its peers and ports match
// (wholly when they do not parse either): it never opens anything.
func (c *compiler) cnpBroken(p *cnpv1.ClusterNetworkPolicy) string {
	if p.Spec.Tier != cnpv1.AdminTier && p.Spec.Tier != cnpv1.BaselineTier {
		return fmt.Sprintf("unknown tier %q", p.Spec.Tier)
	}
	s := p.Spec.Subject
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		if _, ok := c.cnpSelector(p, s.Namespaces); !ok {
			return "subject namespaces selector does not parse"
		}
	case s.Pods != nil && s.Namespaces == nil:
		_, ok1 := c.cnpSelector(p, &s.Pods.NamespaceSelector)
		_, ok2 := c.cnpSelector(p, &s.Pods.PodSelector)
		if !ok1 || !ok2 {
			return "subject pods selector does not parse"
		}
	default:
		return "subject must set exactly one of namespaces and pods"
	}
	return ""
}

// checkCNPs parses every cluster policy once, whether or not it selects a
// local pod, so that every problem is known for its status.
func (c *compiler) checkCNPs() {
	none := &corev1.Pod{}
	for _, p := range c.cnps {
		broken := c.cnpBrokenMemo(p) != ""
		for i := range p.Spec.Ingress {
			c.cnpRule(p, none, false, i, broken)
		}
		for i := range p.Spec.Egress {
			c.cnpRule(p, none, true, i, broken)
		}
	}
}

// cnpSelects reports whether cluster policy p applies to pod.
func (c *compiler) cnpSelects(p *cnpv1.ClusterNetworkPolicy, pod *corev1.Pod) bool {
	if c.cnpBrokenMemo(p) != "" {
		return true
	}
	nsl := labels.Set(c.nsLabels[pod.Namespace])
	s := p.Spec.Subject
	if s.Namespaces != nil {
		sel, _ := c.cnpSelector(p, s.Namespaces)
		return sel.Matches(nsl)
	}
	nsSel, _ := c.cnpSelector(p, &s.Pods.NamespaceSelector)
	podSel, _ := c.cnpSelector(p, &s.Pods.PodSelector)
	return nsSel.Matches(nsl) && podSel.Matches(labels.Set(pod.Labels))
}

func (c *compiler) cnpBrokenMemo(p *cnpv1.ClusterNetworkPolicy) string {
	if why, ok := c.cnpBrokenWhy[p]; ok {
		return why
	}
	why := c.cnpBroken(p)
	if why != "" {
		c.cnpProblem(p, "%s: it selects every pod and each of its rules denies", why)
	}
	c.cnpBrokenWhy[p] = why
	return why
}

// cnpSelector parses a label selector of a cluster policy once.
func (c *compiler) cnpSelector(p *cnpv1.ClusterNetworkPolicy, ls *metav1.LabelSelector) (labels.Selector, bool) {
	sel, err := c.parseSelector(ls)
	if err != nil {
		c.cnpProblem(p, "label selector %v does not parse: %v", ls, err)
	}
	return sel, sel != nil
}

func (c *compiler) cnpProblem(p *cnpv1.ClusterNetworkPolicy, format string, args ...any) {
	err := fmt.Errorf("clusternetworkpolicy %s: %s", p.Name, fmt.Sprintf(format, args...))
	c.problems = append(c.problems, err)
	c.cnpProblems[p.Name] = append(c.cnpProblems[p.Name], err.Error())
}

// tierRules compiles, for pod, the rules of the cluster policies of one
// tier that select it, in one direction, in the order they are judged.
func (c *compiler) tierRules(pod *corev1.Pod, tier cnpv1.Tier, egress bool) (out []tierRule, names []string) {
	for _, p := range c.cnps {
		if (p.Spec.Tier == cnpv1.BaselineTier) != (tier == cnpv1.BaselineTier) {
			continue
		}
		if !c.cnpSelects(p, pod) {
			continue
		}
		broken := c.cnpBrokenMemo(p) != ""
		n := len(p.Spec.Ingress)
		if egress {
			n = len(p.Spec.Egress)
		}
		if n > 0 {
			names = append(names, p.Name)
		}
		for i := range n {
			out = append(out, c.cnpRule(p, pod, egress, i, broken))
		}
	}
	return out, names
}

// cnpRule compiles rule i of p for the subject pod.
func (c *compiler) cnpRule(p *cnpv1.ClusterNetworkPolicy, pod *corev1.Pod, egress bool, i int, broken bool) tierRule {
	var (
		name   string
		action cnpv1.ClusterNetworkPolicyRuleAction
		protos []cnpv1.ClusterNetworkPolicyProtocol
		key    any
		npeers int
	)
	if egress {
		r := &p.Spec.Egress[i]
		name, action, protos, key, npeers = r.Name, r.Action, r.Protocols, r, len(r.To)
	} else {
		r := &p.Spec.Ingress[i]
		name, action, protos, key, npeers = r.Name, r.Action, r.Protocols, r, len(r.From)
	}
	act := string(action)
	if act != ActionAccept && act != ActionDeny && act != ActionPass {
		c.cnpProblem(p, "%s rule %d: unknown action %q, judged as Deny", dirName(egress), i, action)
		act = ActionDeny
	}
	// A policy that cannot be understood as a whole only denies; a Pass
	// that does not parse is a Deny too (the API's "fail closed").
	if broken {
		act = ActionDeny
	}
	ref := c.cnpRef(p, egress, i, name, act)
	ids, peersOK := c.cnpPeerIDs(p, key, egress, i, act == ActionDeny)
	if npeers == 0 {
		c.cnpProblem(p, "%s rule %d has no peers", dirName(egress), i)
		peersOK = false
	}
	ports, portsOK := c.cnpPorts(p, pod, protos, egress, i)
	if !peersOK || !portsOK {
		if act == ActionAccept {
			// Fail closed for Accept: the rule matches no traffic.
			return tierRule{action: act}
		}
		// Fail closed for Deny and Pass: deny everything.
		return tierRule{action: ActionDeny, match: []Rule{{Peer: identity.Any, Proto: ProtoAny, Ref: ref}}}
	}
	var match []Rule
	for _, pr := range ports {
		if pr.peers != nil {
			// A named egress port: only the peers declaring it.
			for _, id := range ids {
				if n, ok := pr.peers[id]; ok {
					match = append(match, Rule{Peer: id, Proto: pr.proto, Ports: PortRange{n, n}, Ref: ref})
				}
			}
			continue
		}
		for _, id := range ids {
			match = append(match, Rule{Peer: id, Proto: pr.proto, Ports: pr.ports, Ref: ref})
		}
	}
	return tierRule{action: act, match: match}
}

func dirName(egress bool) string {
	if egress {
		return "egress"
	}
	return "ingress"
}

// cnpPort is one protocol entry of a rule: a protocol with a port range,
// or, for a named egress port, the number each peer gives the name.
type cnpPort struct {
	proto uint8
	ports PortRange
	peers map[uint32]uint16
}

// cnpPorts compiles a rule's protocols. ok is false when one does not parse.
func (c *compiler) cnpPorts(p *cnpv1.ClusterNetworkPolicy, pod *corev1.Pod, protos []cnpv1.ClusterNetworkPolicyProtocol, egress bool, i int) ([]cnpPort, bool) {
	if len(protos) == 0 {
		// No protocols: every protocol and port.
		return []cnpPort{{proto: ProtoAny}}, true
	}
	var out []cnpPort
	ok := true
	bad := func(format string, args ...any) {
		c.cnpProblem(p, "%s rule %d: %s", dirName(egress), i, fmt.Sprintf(format, args...))
		ok = false
	}
	for _, pr := range protos {
		var (
			proto uint8
			port  *cnpv1.Port
			set   int
		)
		if pr.TCP != nil {
			proto, port, set = ProtoTCP, pr.TCP.DestinationPort, set+1
		}
		if pr.UDP != nil {
			proto, port, set = ProtoUDP, pr.UDP.DestinationPort, set+1
		}
		if pr.SCTP != nil {
			proto, port, set = ProtoSCTP, pr.SCTP.DestinationPort, set+1
		}
		if pr.DestinationNamedPort != "" {
			set++
		}
		if set != 1 {
			bad("a protocol entry must set exactly one of tcp, udp, sctp, destinationNamedPort")
			continue
		}
		if pr.DestinationNamedPort != "" {
			out = append(out, c.cnpNamedPort(pod, pr.DestinationNamedPort, egress)...)
			continue
		}
		r, rok := cnpRange(port)
		if !rok {
			bad("destination port %+v is not a valid port or range", port)
			continue
		}
		out = append(out, cnpPort{proto: proto, ports: r})
	}
	return out, ok
}

// cnpRange converts a destination port; nil is every port.
func cnpRange(p *cnpv1.Port) (PortRange, bool) {
	if p == nil {
		return PortRange{}, true
	}
	if p.Range != nil {
		if p.Number != 0 || p.Range.Start < 1 || p.Range.End > 65535 || p.Range.End < p.Range.Start {
			return PortRange{}, false
		}
		return PortRange{uint16(p.Range.Start), uint16(p.Range.End)}, true
	}
	if p.Number < 1 || p.Number > 65535 {
		return PortRange{}, false
	}
	return PortRange{uint16(p.Number), uint16(p.Number)}, true
}

// cnpNamedPort resolves a named port: for ingress on the subject pod, for
// egress on each peer. The name matches a container port of any protocol.
func (c *compiler) cnpNamedPort(pod *corev1.Pod, name string, egress bool) []cnpPort {
	var out []cnpPort
	for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP} {
		np := namedPort{name, proto}
		if !egress {
			if n, ok := resolvePort(pod, np); ok {
				out = append(out, cnpPort{proto: proto, ports: PortRange{n, n}})
			}
			continue
		}
		peers := map[uint32]uint16{}
		for id, in := range c.identities {
			if n, ok := in.ports[np]; ok {
				peers[id] = n
			}
		}
		out = append(out, cnpPort{proto: proto, peers: peers})
	}
	return out
}

// cnpPeerIDs returns the identities a rule's peers select, once per rule.
// ok is false when a peer does not parse or is of a kind not supported.
func (c *compiler) cnpPeerIDs(p *cnpv1.ClusterNetworkPolicy, key any, egress bool, i int, deny bool) ([]uint32, bool) {
	if m, ok := c.cnpPeers[key]; ok {
		return m.ids, m.ok
	}
	var (
		seen = map[uint32]bool{}
		ids  []uint32
		ok   = true
	)
	bad := func(format string, args ...any) {
		c.cnpProblem(p, "%s rule %d: %s", dirName(egress), i, fmt.Sprintf(format, args...))
		ok = false
	}
	add := func(cands []uint32, match func(*ident) bool) {
		for _, id := range cands {
			if !seen[id] && match(c.identities[id]) {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	// This node is one peer (identity.Host), not in the universe of the
	// candidates above; nodeAddrsIn are its addresses the rule's networks
	// hold.
	nodeAddrsIn := map[netip.Addr]bool{}
	addHost := func() {
		if !seen[identity.Host] {
			seen[identity.Host] = true
			ids = append(ids, identity.Host)
		}
	}
	type peer struct {
		namespaces, nodes *metav1.LabelSelector
		pods              *cnpv1.NamespacedPod
		networks          []cnpv1.CIDR
		domains           []cnpv1.DomainName
	}
	var peers []peer
	if egress {
		for _, e := range p.Spec.Egress[i].To {
			peers = append(peers, peer{e.Namespaces, e.Nodes, e.Pods, e.Networks, e.DomainNames})
		}
	} else {
		for _, e := range p.Spec.Ingress[i].From {
			peers = append(peers, peer{namespaces: e.Namespaces, pods: e.Pods})
		}
	}
	for _, pe := range peers {
		n := 0
		for _, set := range []bool{pe.namespaces != nil, pe.nodes != nil, pe.pods != nil, len(pe.networks) > 0, len(pe.domains) > 0} {
			if set {
				n++
			}
		}
		if n != 1 {
			bad("a peer must set exactly one field")
			continue
		}
		switch {
		case pe.namespaces != nil:
			sel, sok := c.cnpSelector(p, pe.namespaces)
			if !sok {
				ok = false
				continue
			}
			add(c.podIDs, func(in *ident) bool { return sel.Matches(in.nsLabels) })
		case pe.pods != nil:
			nsSel, ok1 := c.cnpSelector(p, &pe.pods.NamespaceSelector)
			podSel, ok2 := c.cnpSelector(p, &pe.pods.PodSelector)
			if !ok1 || !ok2 {
				ok = false
				continue
			}
			add(c.podIDs, func(in *ident) bool { return nsSel.Matches(in.nsLabels) && podSel.Matches(in.podLabels) })
		case pe.nodes != nil:
			sel, sok := c.cnpSelector(p, pe.nodes)
			if !sok {
				ok = false
				continue
			}
			add(c.nodeIDs, func(in *ident) bool { return sel.Matches(in.nodeLabels) })
			if sel.Matches(labels.Set(c.s.LocalNodeLabels)) {
				addHost()
			}
		case len(pe.networks) > 0:
			for _, s := range pe.networks {
				cidr, err := netip.ParsePrefix(string(s))
				if err != nil {
					bad("network %q is not a CIDR: %v", s, err)
					continue
				}
				cidr = cidr.Masked()
				for _, a := range c.s.NodeIPs {
					if cidr.Contains(a) {
						nodeAddrsIn[a] = true
					}
				}
				cands := append(slices.Clone(c.blocks.inside[cidr]), c.blockMembers[cidr]...)
				add(cands, func(in *ident) bool {
					if in.prefix.IsValid() {
						return cidr.Bits() <= in.prefix.Bits() && cidr.Contains(in.prefix.Addr())
					}
					return slices.Contains(in.blocks, cidr)
				})
			}
		default:
			// The experimental channel's domain names need a DNS proxy,
			// which Palisade does not have.
			bad("domainNames peers are not supported")
		}
	}
	// The node's addresses share one identity, so a networks peer that
	// holds some of them cannot select exactly those: a Deny takes the
	// node if it holds any, an Accept or a Pass (which may skip a Deny
	// below it) only if it holds all. Never more allowed than written.
	if len(nodeAddrsIn) > 0 && (deny || len(nodeAddrsIn) == len(distinct(c.s.NodeIPs))) {
		addHost()
	}
	slices.Sort(ids)
	c.cnpPeers[key] = cnpPeerMemo{ids, ok}
	return ids, ok
}

type cnpPeerMemo struct {
	ids []uint32
	ok  bool
}

// cnpRef numbers rule i of p, as ref numbers NetworkPolicy rules.
func (c *compiler) cnpRef(p *cnpv1.ClusterNetworkPolicy, egress bool, i int, name, action string) uint32 {
	dir := dirName(egress)
	r := RuleRef{Policy: p.Name, Direction: dir, Index: i, Tier: string(p.Spec.Tier), Name: name, Action: action}
	key := "cnprule|" + p.Name + "|" + dir + "|" + strconv.Itoa(i)
	n := c.alloc.ID(key)
	c.usedKeys[key] = true
	c.refs[n] = r
	return n
}

// cnpCollect adds what the cluster policies give the block index: their
// networks split addresses into identities, and their named ports resolve
// on peers.
// A network that does not parse is left out here; the rule that names it
// reports it and fails closed.
func (b *blockIndex) cnpCollect(add func(p netip.Prefix)) {
	for _, p := range b.cnps {
		for _, r := range p.Spec.Egress {
			for _, to := range r.To {
				for _, n := range to.Networks {
					if pfx, err := netip.ParsePrefix(string(n)); err == nil {
						add(pfx.Masked())
					}
				}
			}
			for _, pr := range r.Protocols {
				if pr.DestinationNamedPort != "" {
					for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP} {
						b.egressPort[namedPort{pr.DestinationNamedPort, proto}] = true
					}
				}
			}
		}
	}
}

// distinct returns the different addresses of addrs.
func distinct(addrs []netip.Addr) map[netip.Addr]bool {
	out := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		out[a] = true
	}
	return out
}
