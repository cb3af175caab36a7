package policy

import (
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// addrState is what a compile's pass over the addresses leaves for the
// next compile to patch. Never modified once made: a compile copies what
// it changes, so that the same Previous may serve more than one compile.
type addrState struct {
	// patchable is false when the next compile must walk every pod (a
	// pod, or an endpoint's ID, given twice). The pods themselves are the
	// State's: a set of them, kept, cost ~0.3 MB at 10 000 pods; the next
	// compile builds one only when it patches.
	patchable bool
	// local and endpoints are localClaims'.
	local     map[nsName]bool
	endpoints map[string]Endpoint
	// contested holds every claim (a pod once per claim) of an address
	// claimed more than once; each address's claimant is in the
	// compiler's podKeys.
	contested map[netip.Addr][]*corev1.Pod
	// nodes are the remote node addresses' identities.
	nodes map[netip.Addr]uint32
	// refs counts the addresses (claimed pod addresses and remote node
	// addresses) per identity other than the blocks'.
	refs map[uint32]int
	// identities, keys and universe are the blocks' identities and those
	// of refs, their allocator keys and their sorted numbers.
	identities map[uint32]*ident
	keys       map[string]bool
	universe   []uint32
}

// patchAddresses fills the ipcache from the previous compile's, changing
// only the addresses that the pods and endpoints changed since claim or
// claimed, instead of working out every pod address's claimant and
// identity again: at 10 000 pods that walk was most of a compile. It
// reports false, having set nothing, when anything the walk reads besides
// the pods and endpoints changed (namespace labels, node addresses or
// labels, the allocator forgot keys, the local pods), when the previous
// compile left nothing to patch, or when many pods changed: the caller
// then walks (addAddresses). The blocks must be prev's.
func (c *compiler) patchAddresses(prev *compiler) bool {
	if !c.addressInputsAsIn(prev) {
		return false
	}
	local, eps, unique := c.localClaims()
	if !unique || !maps.Equal(local, prev.addr.local) {
		return false
	}
	added, removed, ok := podChanges(prev.s.Pods, c.s.Pods)
	if !ok {
		return false
	}
	p := &addrPatch{c: c, prev: &prev.addr, prevIPCache: prev.ipcache, prevKeys: prev.podKeys, won: map[netip.Addr]*corev1.Pod{}}
	// Claims withdrawn, then claims made: a contested address's claimant
	// is the least of those left, whatever the order.
	for id, was := range prev.addr.endpoints {
		if is, ok := eps[id]; !ok || is.Pod != was.Pod || !slices.Equal(is.IPs, was.IPs) {
			if !p.unclaimAll(was.Pod, was.IPs) {
				return false
			}
		}
	}
	for _, pod := range removed {
		if !p.unclaimAll(pod, statusClaims(pod, local)) {
			return false
		}
	}
	for id, is := range eps {
		if was, ok := prev.addr.endpoints[id]; !ok || is.Pod != was.Pod || !slices.Equal(is.IPs, was.IPs) {
			if !p.claimAll(is.Pod, is.IPs) {
				return false
			}
		}
	}
	for _, pod := range added {
		if !p.claimAll(pod, statusClaims(pod, local)) {
			return false
		}
	}
	p.apply()
	c.addr.patchable, c.addr.local, c.addr.endpoints = true, local, eps
	c.addr.nodes = prev.addr.nodes
	return true
}

// addressInputsAsIn reports whether everything addAddresses reads, but the
// pods and endpoints, is as prev read it, and prev left what to patch.
func (c *compiler) addressInputsAsIn(prev *compiler) bool {
	return prev.addr.patchable && prev.alloc == c.alloc &&
		// A key the allocator forgot since prev would be numbered anew.
		c.alloc.Forgets() == prev.allocForgets &&
		maps.EqualFunc(prev.nsLabels, c.nsLabels, maps.Equal) &&
		sameAddrs(prev.s.RemoteNodeIPs, c.s.RemoteNodeIPs) && sameAddrs(prev.s.NodeIPs, c.s.NodeIPs) &&
		maps.EqualFunc(prev.s.NodeLabels, c.s.NodeLabels, maps.Equal) &&
		(len(prev.cnps) > 0) == (len(c.cnps) > 0)
}

// sameAddrs reports whether a and b hold the same addresses, in whatever
// order: the agent lists them from the Node cache, whose order changes
// from one sync to the next.
func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	if slices.Equal(a, b) {
		return true
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, netip.Addr.Compare)
	slices.SortFunc(b, netip.Addr.Compare)
	return slices.Equal(a, b)
}

// podChanges compares pods with the previous ones, each given once: the
// pods added and removed (an update is both: the informers replace a
// changed object). ok is false when a pod is given twice, or when so many
// changed that walking them all costs no more.
func podChanges(prev, pods []*corev1.Pod) (added, removed []*corev1.Pod, ok bool) {
	// true: a previous pod not listed again yet.
	left := make(map[*corev1.Pod]bool, len(prev))
	for _, pod := range prev {
		left[pod] = true
	}
	for _, pod := range pods {
		was, listed := left[pod]
		switch {
		case !listed:
			added = append(added, pod)
		case !was:
			return nil, nil, false
		}
		left[pod] = false
	}
	// Those of prev listed again are the pods not added.
	if len(prev) != len(pods)-len(added) {
		for pod, was := range left {
			if was {
				removed = append(removed, pod)
			}
		}
	}
	if len(added)+len(removed) > 64+len(pods)/8 {
		return nil, nil, false
	}
	return added, removed, true
}

// addrPatch changes copies of the previous compile's contested claims,
// then of its ipcache, podKeys, identities and keys, at the addresses
// touched.
type addrPatch struct {
	c    *compiler
	prev *addrState
	// prevIPCache and prevKeys are the previous compile's ipcache and
	// podKeys.
	prevIPCache map[netip.Prefix]uint32
	prevKeys    map[netip.Addr]heldKey
	// won holds the claimant of each address touched, nil for none; the
	// others' are in prevKeys. Only the few touched are written, instead
	// of a copy of every address's.
	won       map[netip.Addr]*corev1.Pod
	contested map[netip.Addr][]*corev1.Pod
}

// own makes the contested claims the patch's own copy, once.
func (p *addrPatch) own() {
	if p.contested == nil {
		p.contested = maps.Clone(p.prev.contested)
	}
}

// winner returns a's claimant as the patch has it so far.
func (p *addrPatch) winner(a netip.Addr) (*corev1.Pod, bool) {
	if w, ok := p.won[a]; ok {
		return w, w != nil
	}
	k, ok := p.prevKeys[a]
	return k.pod, ok
}

func (p *addrPatch) claimAll(pod *corev1.Pod, addrs []netip.Addr) bool {
	for _, a := range addrs {
		if !p.claim(pod, a) {
			return false
		}
	}
	return true
}

func (p *addrPatch) unclaimAll(pod *corev1.Pod, addrs []netip.Addr) bool {
	for _, a := range addrs {
		if !p.unclaim(pod, a) {
			return false
		}
	}
	return true
}

// claim adds pod's claim on a; false if its claimant cannot be told.
func (p *addrPatch) claim(pod *corev1.Pod, a netip.Addr) bool {
	p.own()
	claims, ok := p.contested[a]
	if !ok {
		w, held := p.winner(a)
		if !held {
			p.won[a] = pod
			return true
		}
		claims = []*corev1.Pod{w}
	}
	// Never append to the previous compile's slice.
	claims = append(slices.Clip(claims), pod)
	p.contested[a] = claims
	return p.settle(a, claims)
}

// unclaim withdraws one claim of pod on a; false if there is none, which
// would mean the previous compile's claims are not what they seemed.
func (p *addrPatch) unclaim(pod *corev1.Pod, a netip.Addr) bool {
	p.own()
	claims, ok := p.contested[a]
	if !ok {
		if w, held := p.winner(a); !held || w != pod {
			return false
		}
		p.won[a] = nil
		return true
	}
	i := slices.Index(claims, pod)
	if i < 0 {
		return false
	}
	claims = slices.Delete(slices.Clone(claims), i, i+1)
	if len(claims) == 1 {
		delete(p.contested, a)
		p.won[a] = claims[0]
		return true
	}
	p.contested[a] = claims
	return p.settle(a, claims)
}

// settle gives a to the least of its claims in claimOrder; false if two
// different pods tie, where the walk's answer would follow their order.
func (p *addrPatch) settle(a netip.Addr, claims []*corev1.Pod) bool {
	w := claims[0]
	for _, pod := range claims[1:] {
		switch o := claimOrder(pod, w); {
		case o < 0:
			w = pod
		case o == 0 && pod != w:
			return false
		}
	}
	p.won[a] = w
	return true
}

// apply gives each touched address whose claimant changed its new
// claimant's identity (or back what it has without one), counting the
// identities' addresses so that an identity no address has is dropped.
func (p *addrPatch) apply() {
	c, prev := p.c, p.prev
	c.addr.contested = prev.contested
	if p.contested != nil {
		c.addr.contested = p.contested
	}
	// Every address claimed or unclaimed is in won.
	var moved []netip.Addr
	for a, w := range p.won {
		if k, was := p.prevKeys[a]; !was || k.pod != w {
			moved = append(moved, a)
		}
	}
	if len(moved) == 0 {
		// Nothing moved: share everything, as nothing is modified.
		c.ipcache, c.podKeys = p.prevIPCache, p.prevKeys
		c.addr.refs, c.addr.identities, c.addr.keys, c.addr.universe = prev.refs, prev.identities, prev.keys, prev.universe
		return
	}
	c.ipcache, c.podKeys = maps.Clone(p.prevIPCache), maps.Clone(p.prevKeys)
	c.addr.refs = maps.Clone(prev.refs)
	c.identities, c.usedKeys = maps.Clone(prev.identities), maps.Clone(prev.keys)
	c.addr.universe = slices.Clone(prev.universe)
	var fresh []podAddr
	for _, a := range moved {
		if k, ok := p.prevKeys[a]; ok {
			p.deref(k.ident)
			delete(c.podKeys, a)
		}
		if w := p.won[a]; w != nil {
			fresh = append(fresh, podAddr{w, a})
		} else {
			p.unset(a)
		}
	}
	// In claimOrder, as addAddresses describes new identities.
	slices.SortFunc(fresh, comparePodAddrs)
	for _, pa := range fresh {
		k := c.podKeyOf(pa.pod, pa.addr)
		c.podKeys[pa.addr] = heldKey{pa.pod, k}
		p.ref(k.ident)
		if !slices.Contains(c.s.NodeIPs, pa.addr) {
			c.ipcache[netip.PrefixFrom(pa.addr, pa.addr.BitLen())] = k.ident.id
		}
	}
	c.addr.identities, c.addr.keys = c.identities, c.usedKeys
}

// unset gives a, which no pod claims now, what the walk would: this
// node's identity, a remote node's, its block's, or nothing.
func (p *addrPatch) unset(a netip.Addr) {
	c := p.c
	pfx := netip.PrefixFrom(a, a.BitLen())
	switch id, node := p.prev.nodes[a]; {
	case slices.Contains(c.s.NodeIPs, a):
		c.ipcache[pfx] = identity.Host
	case node:
		c.ipcache[pfx] = id
	default:
		if id, ok := c.blocks.ipcache[pfx]; ok {
			c.ipcache[pfx] = id
		} else {
			delete(c.ipcache, pfx)
		}
	}
}

// ref counts one more address of in, adding it if it had none.
func (p *addrPatch) ref(in *ident) {
	c := p.c
	c.addr.refs[in.id]++
	if c.addr.refs[in.id] > 1 {
		return
	}
	c.identities[in.id] = in
	c.usedKeys[in.key] = true
	if i, found := slices.BinarySearch(c.addr.universe, in.id); !found {
		c.addr.universe = slices.Insert(c.addr.universe, i, in.id)
	}
}

// deref counts one address of in fewer, dropping it with the last.
func (p *addrPatch) deref(in *ident) {
	c := p.c
	c.addr.refs[in.id]--
	if c.addr.refs[in.id] > 0 {
		return
	}
	delete(c.addr.refs, in.id)
	delete(c.identities, in.id)
	delete(c.usedKeys, in.key)
	if i, found := slices.BinarySearch(c.addr.universe, in.id); found {
		c.addr.universe = slices.Delete(c.addr.universe, i, i+1)
	}
}
