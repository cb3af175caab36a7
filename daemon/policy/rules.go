package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// endpoint compiles the policy of one local endpoint.
func (c *compiler) endpoint(ep Endpoint) EndpointPolicy {
	// Pods alike (see shapeKey) get the same rules: compile them once.
	// The rule slices are shared between their endpoints, read-only.
	key := shapeKey(ep.Pod)
	if len(c.cnps) > 0 {
		// Cluster policies select pods by their namespace's labels too.
		key += "|ns:" + c.nsKey(ep.Pod.Namespace)
	}
	sh, ok := c.shapes[key]
	if !ok {
		sh, ok = c.reuse(key, ep.Pod.Namespace)
	}
	if !ok {
		sh = c.compileShape(ep.Pod)
	}
	c.shapes[key] = sh
	out := sh.policy
	out.ID, out.Ifindex, out.IPs = ep.ID, ep.Ifindex, ep.IPs
	if len(ep.IPs) > 0 {
		a := ep.IPs[0]
		out.Identity = c.ipcache[netip.PrefixFrom(a, a.BitLen())]
	}
	return out
}

// shape is the compiled policy of pods alike, with what it depends on
// besides the identities.
type shape struct {
	policy EndpointPolicy
	// policies are its namespace's, as compiled.
	policies []*networkingv1.NetworkPolicy
	problems []error
	// refs are the rules its entries name, once each: a compile that
	// reuses the shape keeps their numbers without walking every entry.
	refs []shapeRef
}

type shapeRef struct {
	num uint32
	ref RuleRef
	key string // the allocator's
}

func (c *compiler) compileShape(pod *corev1.Pod) shape {
	before := len(c.problems)
	sh := shape{policy: c.policyOf(pod), policies: c.nsPolicies[pod.Namespace]}
	sh.problems = slices.Clone(c.problems[before:])
	seen := map[uint32]bool{}
	for _, rules := range [][]Rule{sh.policy.Ingress, sh.policy.Egress} {
		for _, r := range rules {
			if !seen[r.Ref] {
				seen[r.Ref] = true
				ref := c.refs[r.Ref]
				sh.refs = append(sh.refs, shapeRef{num: r.Ref, ref: ref, key: refKey(ref)})
			}
		}
	}
	return sh
}

// reuse takes the shape key from the previous compile if the policies of
// namespace ns are the same objects (the informers replace, never modify,
// what they cache). The rule numbers it names are kept in use.
func (c *compiler) reuse(key, ns string) (shape, bool) {
	if c.prev == nil {
		return shape{}, false
	}
	c.prev.mu.Lock()
	defer c.prev.mu.Unlock()
	if c.prev.universeGen != c.prevGen {
		return shape{}, false
	}
	sh, ok := c.prev.shapes[key]
	if !ok || !slices.Equal(sh.policies, c.nsPolicies[ns]) {
		return shape{}, false
	}
	if c.diff != nil {
		if !c.independentOfDiff(ns) {
			return shape{}, false
		}
		c.diffReused++
	}
	for _, r := range sh.refs {
		if _, ok := c.refs[r.num]; !ok {
			c.usedKeys[r.key] = true
			c.refs[r.num] = r.ref
		}
	}
	c.problems = append(c.problems, sh.problems...)
	return sh, true
}

// shapeKey names what a pod's own policy depends on: its namespace, its
// labels (which policies select it) and its containers' ports (the named
// ports of its ingress rules).
func shapeKey(pod *corev1.Pod) string {
	var b strings.Builder
	b.WriteString(pod.Namespace)
	b.WriteByte('|')
	b.WriteString(labelString(pod.Labels))
	for _, ctr := range pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			fmt.Fprintf(&b, "|%s/%s=%d", cp.Name, cp.Protocol, cp.ContainerPort)
		}
	}
	return b.String()
}

// policyOf compiles the rules of pod, without the endpoint's own fields.
func (c *compiler) policyOf(pod *corev1.Pod) EndpointPolicy {
	var out EndpointPolicy
	// Only a pod's own namespace's policies can select it.
	for _, pol := range c.nsPolicies[pod.Namespace] {
		if !c.selects(pol, pod) {
			continue
		}
		out.Policies = append(out.Policies, pol.Namespace+"/"+pol.Name)
		ingress, egress := policyTypes(pol)
		// "If this field is not specified, it will default based on the
		// existence of ingress or egress rules": a selected pod is isolated
		// for each type the policy has, even with no rules of that type.
		if ingress {
			out.IngressIsolated = true
			for i, r := range pol.Spec.Ingress {
				ref := c.ref(pol, "ingress", i)
				out.Ingress = append(out.Ingress, c.rules(pol, pod, r.From, r.Ports, false, ref)...)
			}
		}
		if egress {
			out.EgressIsolated = true
			for i, r := range pol.Spec.Egress {
				ref := c.ref(pol, "egress", i)
				out.Egress = append(out.Egress, c.rules(pol, pod, r.To, r.Ports, true, ref)...)
			}
		}
	}
	out.Ingress = dedupe(out.Ingress)
	out.Egress = dedupe(out.Egress)
	if len(c.cnps) > 0 {
		c.applyTiers(pod, &out)
	}
	return out
}

// applyTiers folds the cluster policies that select pod around its
// NetworkPolicy rules, per direction they have rules for: the direction
// becomes isolated (a miss denies) and its rules the tiers' answers.
func (c *compiler) applyTiers(pod *corev1.Pod, out *EndpointPolicy) {
	seen := map[string]bool{}
	for _, egress := range []bool{false, true} {
		admin, an := c.tierRules(pod, cnpv1.AdminTier, egress)
		baseline, bn := c.tierRules(pod, cnpv1.BaselineTier, egress)
		if len(admin)+len(baseline) == 0 {
			continue
		}
		for _, n := range append(an, bn...) {
			if !seen[n] {
				seen[n] = true
				out.ClusterPolicies = append(out.ClusterPolicies, n)
			}
		}
		t := tiers{admin: admin, baseline: baseline, npIsolated: out.IngressIsolated, np: out.Ingress}
		if egress {
			t.npIsolated, t.np = out.EgressIsolated, out.Egress
		}
		rules := t.compile()
		if egress {
			out.Egress, out.EgressIsolated, out.EgressTiered = rules, true, true
		} else {
			out.Ingress, out.IngressIsolated, out.IngressTiered = rules, true, true
		}
	}
}

// policyTypes applies the API's defaulting of spec.policyTypes: "Ingress"
// always, "Egress" when the policy has egress rules.
func policyTypes(pol *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(pol.Spec.PolicyTypes) == 0 {
		return true, len(pol.Spec.Egress) > 0
	}
	for _, t := range pol.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

// selects reports whether pol applies to pod: "podSelector selects the pods
// to which this NetworkPolicy object applies ... An empty podSelector
// selects all pods in this namespace."
func (c *compiler) selects(pol *networkingv1.NetworkPolicy, pod *corev1.Pod) bool {
	if pol.Namespace != pod.Namespace {
		return false
	}
	sel, ok := c.selector(pol, &pol.Spec.PodSelector)
	// A selector that does not parse selects every pod of the namespace:
	// its pods become isolated, never silently open.
	return !ok || sel.Matches(labels.Set(pod.Labels))
}

// selector parses a label selector once. ok is false when it does not
// parse; the problem is recorded against pol.
func (c *compiler) selector(pol *networkingv1.NetworkPolicy, ls *metav1.LabelSelector) (labels.Selector, bool) {
	sel, err := c.parseSelector(ls)
	if err != nil {
		c.problem(pol, "label selector %v does not parse: %v", ls, err)
	}
	return sel, sel != nil
}

// parseSelector parses a label selector once per compile; nil when it does
// not parse. The error comes only with the first parse, so that each
// problem is reported once.
func (c *compiler) parseSelector(ls *metav1.LabelSelector) (labels.Selector, error) {
	if sel, ok := c.parsed[ls]; ok {
		return sel, nil
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		sel = nil
	}
	c.parsed[ls] = sel
	return sel, err
}

// rules turns one ingress or egress rule into Rules. peers and ports are
// the rule's from/to and ports lists.
func (c *compiler) rules(pol *networkingv1.NetworkPolicy, subject *corev1.Pod, peers []networkingv1.NetworkPolicyPeer,
	ports []networkingv1.NetworkPolicyPort, egress bool, ref uint32,
) []Rule {
	// "If this field is empty or missing, this rule matches all sources
	// (traffic not restricted by source)."
	var ids []uint32
	if len(peers) == 0 {
		ids = []uint32{identity.Any}
	} else {
		ids = c.matchingIDs(pol, peers)
	}
	// "If this field is empty or missing, this rule matches all ports
	// (traffic not restricted by port)" - and every protocol.
	if len(ports) == 0 {
		out := make([]Rule, 0, len(ids))
		for _, id := range ids {
			out = append(out, Rule{Peer: id, Proto: ProtoAny, Ref: ref})
		}
		return out
	}
	var out []Rule
	for _, p := range ports {
		proto := protoOf(p.Protocol)
		switch {
		case p.Port == nil:
			// "If this field is not provided, this matches all port names and
			// numbers."
			for _, id := range ids {
				out = append(out, Rule{Peer: id, Proto: proto, Ref: ref})
			}
		case p.Port.Type == intstr.Int:
			r, ok := numericRange(p)
			if !ok {
				c.problem(pol, "port %d-%d is not a valid range", p.Port.IntVal, ptrOr(p.EndPort))
				continue
			}
			for _, id := range ids {
				out = append(out, Rule{Peer: id, Proto: proto, Ports: r, Ref: ref})
			}
		default:
			out = append(out, c.namedRules(subject, ids, namedPort{p.Port.StrVal, proto}, egress, ref)...)
		}
	}
	return out
}

// peerKey names one rule's peer list.
type peerKey struct {
	pol   *networkingv1.NetworkPolicy
	peers *networkingv1.NetworkPolicyPeer // the list's first element: unique per rule
}

// matchingIDs returns the identities any of peers selects, computed once
// per rule and only over the identities that can match.
func (c *compiler) matchingIDs(pol *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer) []uint32 {
	key := peerKey{pol, &peers[0]}
	if ids, ok := c.peerIDs[key]; ok {
		return ids
	}
	seen := map[uint32]bool{}
	var ids []uint32
	for _, p := range peers {
		for _, id := range c.candidates(p) {
			if !seen[id] && c.peerMatches(pol, p, c.identities[id]) {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	c.peerIDs[key] = ids
	return ids
}

// candidates lists the identities peer can possibly select.
func (c *compiler) candidates(peer networkingv1.NetworkPolicyPeer) []uint32 {
	if peer.IPBlock == nil {
		return c.podIDs
	}
	cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
	if err != nil {
		return nil
	}
	cidr = cidr.Masked()
	return append(slices.Clone(c.blocks.inside[cidr]), c.blockMembers[cidr]...)
}

// namedRules resolves a named port. For ingress the name is looked up in
// the selected pod's containers; for egress in each destination pod's. A
// name nobody declares matches nothing.
func (c *compiler) namedRules(subject *corev1.Pod, ids []uint32, np namedPort, egress bool, ref uint32) []Rule {
	var out []Rule
	if !egress {
		n, ok := resolvePort(subject, np)
		if !ok {
			return nil
		}
		for _, id := range ids {
			out = append(out, Rule{Peer: id, Proto: np.proto, Ports: PortRange{n, n}, Ref: ref})
		}
		return out
	}
	// A wildcard destination stands for every pod declaring the name:
	// addresses outside the cluster declare no names.
	// A new slice: ids is the caller's, which its other ports still use
	// (reusing its array turned a wildcard into one pod's identity for
	// them; found by FuzzCompilerAgainstReference).
	if len(ids) == 1 && ids[0] == identity.Any {
		ids = nil
		for id, in := range c.identities {
			if in.pod {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		if n, ok := c.identities[id].ports[np]; ok {
			out = append(out, Rule{Peer: id, Proto: np.proto, Ports: PortRange{n, n}, Ref: ref})
		}
	}
	return out
}

// peerMatches reports whether peer selects the addresses behind in.
func (c *compiler) peerMatches(pol *networkingv1.NetworkPolicy, peer networkingv1.NetworkPolicyPeer, in *ident) bool {
	if b := peer.IPBlock; b != nil {
		return c.blockMatches(b, in)
	}
	if !in.pod {
		return false
	}
	// "If namespaceSelector is also set, then the NetworkPolicyPeer as a
	// whole selects the pods matching podSelector in the Namespaces selected
	// by NamespaceSelector. Otherwise it selects the pods matching
	// podSelector in the policy's own namespace."
	if peer.NamespaceSelector == nil {
		if in.namespace != pol.Namespace {
			return false
		}
	} else if sel, ok := c.selector(pol, peer.NamespaceSelector); !ok || !sel.Matches(in.nsLabels) {
		return false
	}
	if peer.PodSelector == nil {
		return true
	}
	sel, ok := c.selector(pol, peer.PodSelector)
	return ok && sel.Matches(in.podLabels)
}

// blockMatches reports whether every address behind in lies in the block's
// cidr and outside all its excepts. Identities are split along every block
// prefix, so "every" and "any" agree.
func (c *compiler) blockMatches(b *networkingv1.IPBlock, in *ident) bool {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return false // recorded as a problem when the blocks were collected
	}
	cidr = cidr.Masked()
	inside := func(p netip.Prefix) bool {
		if in.prefix.IsValid() {
			return p.Bits() <= in.prefix.Bits() && p.Contains(in.prefix.Addr())
		}
		return slices.Contains(in.blocks, p)
	}
	if !inside(cidr) {
		return false
	}
	for _, e := range b.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil || inside(ep.Masked()) {
			// An except that does not parse excludes everything it might
			// have meant: never open more than the policy says.
			return false
		}
	}
	return true
}

func protoOf(p *corev1.Protocol) uint8 {
	// "If not specified, this field defaults to TCP."
	if p == nil {
		return ProtoTCP
	}
	switch *p {
	case corev1.ProtocolUDP:
		return ProtoUDP
	case corev1.ProtocolSCTP:
		return ProtoSCTP
	}
	return ProtoTCP
}

func numericRange(p networkingv1.NetworkPolicyPort) (PortRange, bool) {
	first := p.Port.IntVal
	last := first
	if p.EndPort != nil {
		last = *p.EndPort
	}
	if first < 1 || last > 65535 || last < first {
		return PortRange{}, false
	}
	return PortRange{uint16(first), uint16(last)}, true
}

func ptrOr(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

// resolvePort finds the number a pod's containers give a port name.
func resolvePort(pod *corev1.Pod, np namedPort) (uint16, bool) {
	for _, ctr := range pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			if cp.Name == np.name && protoOf(&proto) == np.proto {
				return uint16(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}

func (c *compiler) ref(pol *networkingv1.NetworkPolicy, dir string, i int) uint32 {
	if n, ok := c.ruleNums[ruleKey{pol, dir, i}]; ok {
		return n
	}
	r := RuleRef{Policy: pol.Namespace + "/" + pol.Name, Direction: dir, Index: i}
	// Rules are numbered by the identity allocator, whose numbers persist
	// and never repeat: a rule keeps its number while it exists.
	key := refKey(r)
	n := c.alloc.ID(key)
	c.usedKeys[key] = true
	c.refs[n] = r
	c.ruleNums[ruleKey{pol, dir, i}] = n
	return n
}

// refKey is a rule's key in the identity allocator.
func refKey(r RuleRef) string {
	return "rule|" + r.Policy + "|" + r.Direction + "|" + strconv.Itoa(r.Index)
}

// ruleKey is one rule of a policy object, for memoizing its number.
type ruleKey struct {
	pol *networkingv1.NetworkPolicy
	dir string
	i   int
}

// dedupe sorts rules and keeps the first of each (peer, protocol, ports).
func dedupe(rules []Rule) []Rule {
	slices.SortStableFunc(rules, func(a, b Rule) int {
		return cmp.Or(cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Proto, b.Proto),
			cmp.Compare(a.Ports.First, b.Ports.First), cmp.Compare(a.Ports.Last, b.Ports.Last))
	})
	return slices.CompactFunc(rules, func(a, b Rule) bool {
		return a.Peer == b.Peer && a.Proto == b.Proto && a.Ports == b.Ports
	})
}
