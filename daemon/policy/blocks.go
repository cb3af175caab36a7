package policy

import (
	"fmt"
	"net/netip"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// blockIndex is what a compile takes from the policies' ipBlocks and named
// ports alone: every prefix with its identity, which prefixes lie inside
// which, and the named ports egress rules use. Building it is most of a
// compile when policies carry thousands of prefixes, and neither a pod's
// event nor most policy changes change it, so compiles share it (reuse)
// while the policies' ipBlocks and named egress ports are the same. It is
// never modified once built: compilers read it concurrently.
type blockIndex struct {
	// policies are the policies it was built from, in the compiler's order;
	// cnps the cluster policies, in theirs.
	policies []*networkingv1.NetworkPolicy
	cnps     []*cnpv1.ClusterNetworkPolicy
	// blocks are every ipBlock cidr and except, sorted; set holds them.
	blocks []netip.Prefix
	set    map[netip.Prefix]bool
	// bits4 and bits6 are the prefix lengths in use, shortest first: of
	// looks up only those (a few, against 33 or 129).
	bits4, bits6 []int
	egressPort   map[namedPort]bool
	// identities, ipcache and keys are the blocks' identities, their
	// ipcache entries and their allocator keys.
	identities map[uint32]*ident
	ipcache    map[netip.Prefix]uint32
	keys       map[string]bool
	// inside lists, per block, the identities of the blocks inside it
	// (itself included).
	inside map[netip.Prefix][]uint32
	// problems are the ipBlocks that do not parse.
	problems []error
}

// newBlockIndex builds the index of policies, which must be sorted as the
// compiler sorts them.
func newBlockIndex(policies []*networkingv1.NetworkPolicy, cnps []*cnpv1.ClusterNetworkPolicy, alloc *identity.Allocator) *blockIndex {
	b := &blockIndex{
		policies:   policies,
		cnps:       cnps,
		set:        map[netip.Prefix]bool{},
		egressPort: map[namedPort]bool{},
		inside:     map[netip.Prefix][]uint32{},
	}
	b.collect()
	b.identities = make(map[uint32]*ident, len(b.blocks))
	b.ipcache = make(map[netip.Prefix]uint32, len(b.blocks))
	b.keys = make(map[string]bool, len(b.blocks))
	for _, p := range b.blocks {
		key := "cidr|" + p.String()
		id := alloc.ID(key)
		b.identities[id] = &ident{id: id, prefix: p}
		b.ipcache[p] = id
		b.keys[key] = true
		for _, outer := range b.of(p.Addr()) {
			if outer.Bits() <= p.Bits() {
				b.inside[outer] = append(b.inside[outer], id)
			}
		}
	}
	return b
}

// reuse returns an index for policies and cnps (sorted as the compiler
// sorts them) that shares b's content, or nil when that content could
// differ. An update to a policy makes a new object, but most updates, and
// the policies created or deleted, carry no ipBlock and no named egress
// port: the index they would build is b's, and building it again cost a
// policy change most of its compile (the benchmark's 8 000 prefixes). So a
// policy b was not built from is compared by what collect reads of it
// alone; any difference there, and any cluster policy change, rebuilds.
func (b *blockIndex) reuse(policies []*networkingv1.NetworkPolicy, cnps []*cnpv1.ClusterNetworkPolicy) *blockIndex {
	if !slices.Equal(b.cnps, cnps) {
		return nil
	}
	if slices.Equal(b.policies, policies) {
		return b
	}
	i, j := 0, 0
	for i < len(b.policies) || j < len(policies) {
		var was, is *networkingv1.NetworkPolicy
		switch {
		case j == len(policies) || (i < len(b.policies) && comparePolicies(b.policies[i], policies[j]) < 0):
			was = b.policies[i]
			i++
		case i == len(b.policies) || comparePolicies(b.policies[i], policies[j]) > 0:
			is = policies[j]
			j++
		default:
			was, is = b.policies[i], policies[j]
			i++
			j++
		}
		switch {
		case was == is:
		case was == nil:
			if len(blockInputs(is)) > 0 {
				return nil
			}
		case is == nil:
			if len(blockInputs(was)) > 0 {
				return nil
			}
		// A problem names the policy's UID: a policy made again under
		// its name is another one.
		case was.UID != is.UID || !slices.Equal(blockInputs(was), blockInputs(is)):
			return nil
		}
	}
	// Never modified once built: the copy shares b's maps and slices.
	shared := *b
	shared.policies = policies
	return &shared
}

// blockInputs lists what collect reads of pol, in the order it reads it:
// every ipBlock's cidr and excepts, and the named ports of egress rules.
func blockInputs(pol *networkingv1.NetworkPolicy) []string {
	var out []string
	for _, peer := range allPeers(pol) {
		if peer.IPBlock != nil {
			out = append(out, "cidr "+peer.IPBlock.CIDR)
			for _, e := range peer.IPBlock.Except {
				out = append(out, "except "+e)
			}
		}
	}
	for _, r := range pol.Spec.Egress {
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.Type == intstr.String {
				out = append(out, fmt.Sprintf("port %s/%d", p.Port.StrVal, protoOf(p.Protocol)))
			}
		}
	}
	return out
}

// collect finds every ipBlock prefix and every named port an egress rule
// uses: addresses are split into identities along them.
func (b *blockIndex) collect() {
	addPrefix := func(p netip.Prefix) {
		if p = p.Masked(); !b.set[p] {
			b.set[p] = true
			b.blocks = append(b.blocks, p)
		}
	}
	add := func(pol *networkingv1.NetworkPolicy, s string) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			b.problems = append(b.problems, policyProblem(pol, "ipBlock %q is not a CIDR: %v", s, err))
			return
		}
		addPrefix(p)
	}
	for _, pol := range b.policies {
		for _, peer := range allPeers(pol) {
			if peer.IPBlock == nil {
				continue
			}
			add(pol, peer.IPBlock.CIDR)
			for _, e := range peer.IPBlock.Except {
				add(pol, e)
			}
		}
		for _, r := range pol.Spec.Egress {
			for _, p := range r.Ports {
				if p.Port != nil && p.Port.Type == intstr.String {
					b.egressPort[namedPort{p.Port.StrVal, protoOf(p.Protocol)}] = true
				}
			}
		}
	}
	b.cnpCollect(addPrefix)
	slices.SortFunc(b.blocks, comparePrefix)
	for _, p := range b.blocks {
		if p.Addr().Is4() {
			b.bits4 = append(b.bits4, p.Bits())
		} else {
			b.bits6 = append(b.bits6, p.Bits())
		}
	}
	for _, bits := range []*[]int{&b.bits4, &b.bits6} {
		slices.Sort(*bits)
		*bits = slices.Compact(*bits)
	}
}

// of lists the blocks that contain a, shortest first: one lookup per
// prefix length, not one per block.
func (b *blockIndex) of(a netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	lengths := b.bits6
	if a.Is4() {
		lengths = b.bits4
	}
	for _, bits := range lengths {
		if p, err := a.Prefix(bits); err == nil && b.set[p] {
			out = append(out, p)
		}
	}
	return out
}
