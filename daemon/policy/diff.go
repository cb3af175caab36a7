package policy

import (
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// maxDiff bounds the identities a compile may differ from the previous
// one by and still reuse its shapes: a pod label change adds or drops one
// or two; a namespace label change renumbers every pod of the namespace.
const maxDiff = 8

// universeDiff returns the identities in prev's universe or c's but not
// both, when they are few pod identities and no cluster policy judges (its
// peers select nodes and namespaces too, which peerMatches does not tell).
// A shape lists the identities its rules' peers select, so it is still
// right where no peer selects any of them: for a pod label change that
// makes or drops a label set, most endpoints keep their rules instead of
// all of them being compiled again. prev.mu must be held.
func (c *compiler) universeDiff(prev *compiler) ([]*ident, bool) {
	if len(c.cnps) > 0 {
		return nil, false
	}
	var diff []*ident
	add := func(in *ident) bool {
		if in == nil || !in.pod || len(diff) == maxDiff {
			return false
		}
		diff = append(diff, in)
		return true
	}
	a, b := prev.universe, c.universe
	for len(a) > 0 || len(b) > 0 {
		switch {
		case len(b) == 0 || (len(a) > 0 && a[0] < b[0]):
			if !add(prev.identities[a[0]]) {
				return nil, false
			}
			a = a[1:]
		case len(a) == 0 || b[0] < a[0]:
			if !add(c.identities[b[0]]) {
				return nil, false
			}
			b = b[1:]
		default:
			a, b = a[1:], b[1:]
		}
	}
	return diff, true
}

// independentOfDiff reports whether no policy of namespace ns has a rule
// whose peers depend on the identities in c.diff.
func (c *compiler) independentOfDiff(ns string) bool {
	if v, ok := c.independent[ns]; ok {
		return v
	}
	v := !slices.ContainsFunc(c.nsPolicies[ns], c.dependsOnDiff)
	if c.independent == nil {
		c.independent = map[string]bool{}
	}
	c.independent[ns] = v
	return v
}

// dependsOnDiff reports whether a rule of pol selects an identity in
// c.diff, or names a port toward every pod (namedRules resolves it on
// each pod identity).
func (c *compiler) dependsOnDiff(pol *networkingv1.NetworkPolicy) bool {
	selects := func(peers []networkingv1.NetworkPolicyPeer) bool {
		for _, peer := range peers {
			// A selector that does not parse reports its problem where the
			// shape is compiled, not here: such a policy is not reused.
			if !c.parses(peer.PodSelector) || !c.parses(peer.NamespaceSelector) {
				return true
			}
			for _, in := range c.diff {
				if c.peerMatches(pol, peer, in) {
					return true
				}
			}
		}
		return false
	}
	for _, r := range pol.Spec.Ingress {
		if selects(r.From) {
			return true
		}
	}
	for _, r := range pol.Spec.Egress {
		if selects(r.To) {
			return true
		}
		named := func(p networkingv1.NetworkPolicyPort) bool { return p.Port != nil && p.Port.Type == intstr.String }
		if len(r.To) == 0 && slices.ContainsFunc(r.Ports, named) {
			return true
		}
	}
	return false
}

// parses reports whether ls, if set, parses, without recording a problem.
func (c *compiler) parses(ls *metav1.LabelSelector) bool {
	if ls == nil {
		return true
	}
	if sel, ok := c.parsed[ls]; ok {
		return sel != nil
	}
	_, err := metav1.LabelSelectorAsSelector(ls)
	return err == nil
}
