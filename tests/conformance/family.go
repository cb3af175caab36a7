package conformance

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// Family is the address family a replay runs on (--family): the pods,
// Services, ipBlocks and probes of the catalog are of that family.
//
//   - "4": IPv4 only, as the catalogs are written.
//   - "6": the pod network is dual-stack (real Flannel with EnableIPv6;
//     see docs/design.md), but everything the catalog touches is IPv6:
//     Services are SingleStack IPv6, probes go to IPv6 ClusterIPs and pod
//     IPs, ipBlock templates give IPv6 CIDRs, and IPv4 literals inside the
//     cluster CIDR are moved to IPv6 (v6Prefix).
//   - "dual": Services are RequireDualStack, every probe step is probed
//     twice, once per family, and the case's expected tables hold for each;
//     an ipBlock peer becomes two peers, the IPv4 one as written and its
//     IPv6 image, so that the policy means the same for both families.
type Family string

// The families --family takes.
const (
	Family4    Family = "4"
	Family6    Family = "6"
	FamilyDual Family = "dual"
)

// WithFamily runs the model on family f: for "6" and "dual" the nodes are
// dual-stack (testbed.DualStackNode) and the Services of that family.
func WithFamily(f Family) SetupOption { return func(e *Env) { e.Family = f } }

// ParseFamily parses --family.
func ParseFamily(s string) (Family, error) {
	switch f := Family(s); f {
	case Family4, Family6, FamilyDual:
		return f, nil
	}
	return "", fmt.Errorf("--family %q: want 4, 6 or dual", s)
}

// dualStackNetwork reports whether the pods need addresses of both families.
func (f Family) dualStackNetwork() bool { return f == Family6 || f == FamilyDual }

// addrFamilies are the address families the probes use, in probe order.
func (f Family) addrFamilies() []addrFamily {
	switch f {
	case Family6:
		return []addrFamily{v6}
	case FamilyDual:
		return []addrFamily{v4, v6}
	}
	return []addrFamily{v4}
}

// serviceSpec sets a Service's families: nothing for "4" (the cluster's
// primary family, as before), SingleStack IPv6, or RequireDualStack.
func (f Family) serviceSpec(spec *corev1.ServiceSpec) {
	switch f {
	case Family6:
		single := corev1.IPFamilyPolicySingleStack
		spec.IPFamilyPolicy = &single
		spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	case FamilyDual:
		dual := corev1.IPFamilyPolicyRequireDualStack
		spec.IPFamilyPolicy = &dual
		spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	}
}

// addrFamily is one address family: v4 or v6.
type addrFamily int

const (
	v4 addrFamily = 4
	v6 addrFamily = 6
)

func (af addrFamily) String() string { return fmt.Sprintf("IPv%d", int(af)) }

func (af addrFamily) of(ip netip.Addr) bool { return ip.Is4() == (af == v4) }

// v6Addr is the IPv6 image of a pod address of the fixed IP plan: the same
// node and host number in that node's IPv6 pod CIDR, so 10.244.N.H becomes
// fd00:10:244:N::H (H as a number: 10.244.1.20 is fd00:10:244:1::14). The
// testbed gives node N fd00:10:244:N::/64 (testbed.Node.PodCIDR6).
func v6Addr(ip netip.Addr) (netip.Addr, error) {
	if _, err := nodeIndexOf(ip); err != nil {
		return netip.Addr{}, err
	}
	b4 := ip.As4()
	b := testbed.ClusterCIDR6.Addr().As16()
	b[7], b[15] = b4[2], b4[3]
	return netip.AddrFrom16(b), nil
}

// v6Prefix is the IPv6 image of an IPv4 ipBlock CIDR, consistent with
// v6Addr: inside the cluster CIDR (10.244.0.0/16, prefix at least /16) the
// node byte maps to the 8th byte of fd00:10:244::/56 and the host byte to
// the last, so /16 becomes /56, /24 /64, /32 /128 and /(24+k) /(120+k)
// (host-local numbers a node's IPv6 pods upward from ::2, so the bytes in
// between are zero). A CIDR that holds no pod address (disjoint from the
// cluster CIDR, such as an outside host's /32) stays as it is: it matches
// no pod in either family. Anything else (a CIDR wider than the cluster
// CIDR that holds pods) has no faithful image, and the case is skipped.
func v6Prefix(p netip.Prefix) (netip.Prefix, error) {
	if p.Addr().Is6() {
		return p, nil
	}
	cluster := testbed.ClusterCIDR
	if !p.Overlaps(cluster) {
		return p, nil
	}
	if p.Bits() < cluster.Bits() {
		return netip.Prefix{}, fmt.Errorf("ipBlock %s holds the whole pod network %s and more: no IPv6 image keeps its meaning", p, cluster)
	}
	b4 := p.Masked().Addr().As4()
	b := testbed.ClusterCIDR6.Addr().As16()
	b[7], b[15] = b4[2], b4[3]
	bits := 40 + p.Bits() // /16../24: the node byte
	if p.Bits() > 24 {
		bits = 96 + p.Bits() // /25../32: the host byte
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), bits), nil
}

// resolveCIDR is an ipBlock CIDR (or ipblock_membership key) for one
// family: its templates filled with the pods' addresses of that family
// (podIP gives them), and for IPv6 an IPv4 literal replaced by its image.
func resolveCIDR(s string, af addrFamily, podIP func(id string) (netip.Addr, bool)) (string, error) {
	if strings.Contains(s, "{{") {
		filled, err := fillTemplates(s, podIP)
		if err != nil {
			return "", err
		}
		return filled.(string), nil
	}
	if af == v4 {
		return s, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return "", fmt.Errorf("ipBlock cidr %q: %w", s, err)
	}
	q, err := v6Prefix(p)
	if err != nil {
		return "", err
	}
	return q.String(), nil
}

// familyPolicy rewrites a decoded policy's ipBlocks for the family: for
// "6" each CIDR and except is resolved for IPv6; for "dual" each ipBlock
// peer becomes its IPv4 form and its IPv6 form (one, if both are the
// same, as for an outside IPv4 host). Templates elsewhere are left to
// fillTemplates. "4" leaves the document alone.
func familyPolicy(doc any, f Family, podIP func(id string, af addrFamily) (netip.Addr, bool)) (any, error) {
	if !f.dualStackNetwork() {
		return doc, nil
	}
	pol, ok := doc.(map[string]any)
	if !ok {
		return doc, nil
	}
	spec, _ := pol["spec"].(map[string]any)
	var err error
	for dir, key := range map[string]string{"ingress": "from", "egress": "to"} {
		rules, _ := spec[dir].([]any)
		for _, r := range rules {
			rule, _ := r.(map[string]any)
			peers, ok := rule[key].([]any)
			if !ok {
				continue
			}
			var out []any
			for _, p := range peers {
				peer, _ := p.(map[string]any)
				blk, ok := peer["ipBlock"].(map[string]any)
				if !ok {
					out = append(out, p)
					continue
				}
				var forms []any
				for _, af := range f.addrFamilies() {
					b, e := resolveBlock(blk, af, func(id string) (netip.Addr, bool) { return podIP(id, af) })
					if e != nil {
						err = e
						continue
					}
					form := map[string]any{}
					for k, v := range peer {
						form[k] = v
					}
					form["ipBlock"] = b
					if len(forms) == 0 || fmt.Sprint(forms[0]) != fmt.Sprint(form) {
						forms = append(forms, form)
					}
				}
				out = append(out, forms...)
			}
			rule[key] = out
		}
	}
	return doc, err
}

// resolveBlock is an ipBlock object with its cidr and excepts resolved for af.
func resolveBlock(blk map[string]any, af addrFamily, podIP func(id string) (netip.Addr, bool)) (map[string]any, error) {
	out := map[string]any{}
	for k, v := range blk {
		out[k] = v
	}
	if s, ok := blk["cidr"].(string); ok {
		c, err := resolveCIDR(s, af, podIP)
		if err != nil {
			return nil, err
		}
		out["cidr"] = c
	}
	if xs, ok := blk["except"].([]any); ok {
		var except []any
		for _, x := range xs {
			s, _ := x.(string)
			c, err := resolveCIDR(s, af, podIP)
			if err != nil {
				return nil, err
			}
			except = append(except, c)
		}
		out["except"] = except
	}
	return out, nil
}

// podAddr is the live address of pod id in family af.
func (e *Env) podAddr(id string, af addrFamily) (netip.Addr, bool) {
	p, ok := e.Pods[id]
	if !ok {
		return netip.Addr{}, false
	}
	if af == v6 {
		return p.IPv6()
	}
	return p.IP(), true
}

// podAddrOf is podAddr for one family, in podIP's shape.
func (e *Env) podAddrOf(af addrFamily) func(string) (netip.Addr, bool) {
	return func(id string) (netip.Addr, bool) { return e.podAddr(id, af) }
}

// fixedIPs are the addresses a pod of the fixed IP plan asks for: the
// plan's IPv4 one. On a dual-stack network its IPv6 image (v6Addr) would be
// needed too, and kube-flannel's conflist cannot ask for it: host-local
// takes one address from CNI_ARGS IP=, and two only through the "ips"
// capability, which the unmodified conflist does not declare (so no
// runtime passes it). The plan is refused with that reason rather than
// run with IPv6 addresses that its ipBlocks do not describe.
func (e *Env) fixedIPs(ip netip.Addr) ([]netip.Addr, error) {
	if !e.Family.dualStackNetwork() {
		return []netip.Addr{ip}, nil
	}
	ip6, err := v6Addr(ip)
	if err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("--family %s: a fixed IP plan needs %s and %s, and kube-flannel's conflist gives host-local one address per ADD (CNI_ARGS IP=; two need the \"ips\" capability, which the conflist does not declare): catalogs with pod_ips run on --family 4 only", e.Family, ip, ip6)
}

// clusterIPOf is the Service's ClusterIP in family af.
func (ls *liveService) clusterIPOf(af addrFamily) (netip.Addr, bool) {
	for _, ip := range ls.clusterIPs {
		if af.of(ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// familyOf is ip's address family.
func familyOf(ip netip.Addr) addrFamily {
	if ip.Is4() {
		return v4
	}
	return v6
}

// familyNote is the report's line about the family, "" for IPv4.
func familyNote(f Family) string {
	switch f {
	case Family6:
		return "note: --family 6: dual-stack Flannel pods; Services SingleStack IPv6, probes to IPv6 ClusterIPs and pod IPs, ipBlocks in IPv6 (/128 hosts, IPv4 literals in 10.244.0.0/16 moved to fd00:10:244::/56)"
	case FamilyDual:
		return "note: --family dual: dual-stack Flannel pods, RequireDualStack Services; every probe step runs once per family against the same expected table, and each ipBlock peer is given in both families"
	}
	return ""
}
