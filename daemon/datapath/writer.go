// Package datapath writes compiled policy into the BPF maps: it converts
// policy rules to map keys, shares one rule set between the endpoints whose
// rules are equal, diffs against what it wrote before and writes only the
// difference, new entries before stale ones go. It is the only package that
// knows both the policy types and the bpf types.
package datapath

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/policy"
)

// Writer owns the maps' content.
type Writer struct {
	objs    *bpf.Objects
	ipcache map[netip.Prefix]uint32
	// sets are the rule sets in pal_set_rules; byHash finds them by content.
	sets    map[uint32]*ruleSet
	byHash  map[uint64][]uint32
	nextSet uint32
	// endpoints are the endpoint entries written, by ifindex.
	endpoints     map[int]endpointState
	services      map[bpf.ServiceKey]serviceState
	nextServiceID uint32
	// nodeAddrs is the set pal_node_addrs holds.
	nodeAddrs map[netip.Addr]bool
}

// ruleSet is one set's rules as the map holds them, each direction sorted
// by compareKey, and how many endpoints follow it.
type ruleSet struct {
	id              uint32
	ingress, egress []bpf.PolicyEntry
	hash            uint64
	users           int
}

func (s *ruleSet) of(d bpf.Direction) *[]bpf.PolicyEntry {
	if d == bpf.FromPod {
		return &s.egress
	}
	return &s.ingress
}

// endpointState is an endpoint's entry: its set, and the policy rules the
// set was made from, so that an Apply skips converting rules that did not
// change (most of them in most syncs). ok is false when those are unknown.
type endpointState struct {
	set             uint32
	ingress, egress []policy.Rule
	host            hostAllowed // the set has the node's entry (withHost)
	ok              bool
}

// hostAllowed is where an endpoint's set carries hostEntry: in each
// direction NetworkPolicy alone isolates.
type hostAllowed struct{ ingress, egress bool }

func hostOf(ep policy.EndpointPolicy) hostAllowed {
	return hostAllowed{ep.IngressIsolated && !ep.IngressTiered, ep.EgressIsolated && !ep.EgressTiered}
}

// content is the entries an endpoint's rules convert to.
type content struct {
	ingress, egress []bpf.PolicyEntry
	hash            uint64
}

// New returns a writer that starts from what the maps hold now, so that a
// restarted agent changes only what is stale. Rule sets no endpoint follows
// are deleted.
func New(objs *bpf.Objects) (*Writer, error) {
	cur, err := objs.IPCache()
	if err != nil {
		return nil, err
	}
	w := &Writer{objs: objs, ipcache: cur, sets: map[uint32]*ruleSet{}, byHash: map[uint64][]uint32{},
		nextSet: 1, endpoints: map[int]endpointState{}, nextServiceID: 1}
	rules, err := objs.Policies()
	if err != nil {
		return nil, err
	}
	for slot, es := range rules {
		sortEntries(es)
		set := w.sets[slot.Set]
		if set == nil {
			set = &ruleSet{id: slot.Set}
			w.sets[slot.Set] = set
		}
		*set.of(slot.Dir) = es
		w.nextSet = max(w.nextSet, slot.Set+1)
	}
	eps, err := objs.Endpoints()
	if err != nil {
		return nil, err
	}
	for ifindex, info := range eps {
		w.endpoints[ifindex] = endpointState{set: info.RuleSet}
		if set := w.sets[info.RuleSet]; set != nil {
			set.users++
		} else {
			// An endpoint of a set with no rules at all.
			w.sets[info.RuleSet] = &ruleSet{id: info.RuleSet, users: 1}
		}
		w.nextSet = max(w.nextSet, info.RuleSet+1)
	}
	var errs []error
	for _, set := range w.sets {
		set.hash = hashEntries(set.ingress, set.egress)
		w.byHash[set.hash] = append(w.byHash[set.hash], set.id)
		if set.users == 0 {
			errs = append(errs, w.dropSet(set))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := w.loadServices(); err != nil {
		return nil, err
	}
	return w, nil
}

// ApplyEndpoint programs one endpoint ahead of the next Apply: the ipcache
// entries of its addresses, its rule set (an existing one when another
// endpoint has the same rules), then its endpoint entry. It changes no rule
// set another endpoint follows, so it is safe with a Result older than the
// endpoint.
func (w *Writer) ApplyEndpoint(ep policy.EndpointPolicy, ipcache map[netip.Prefix]uint32, revision uint64) error {
	for p, id := range ipcache {
		if cur, ok := w.ipcache[p]; ok && cur == id {
			continue
		}
		if err := w.objs.UpsertIPCache(p, id); err != nil {
			return err
		}
		w.ipcache[p] = id
	}
	c, err := convert(nil, ep)
	if err != nil {
		return err
	}
	set := w.find(c)
	if set == nil {
		if set, err = w.newSet(c); err != nil {
			return err
		}
	}
	if err := w.follow(ep, set, revision); err != nil {
		return err
	}
	return w.dropUnused()
}

// Apply makes the maps equal res at revision. New ipcache entries and
// rules go in before stale ones go out, and each endpoint's entry is
// written after the rule set it follows, so no packet sees a policy that
// is not whole. Endpoints of the node not in res are left to Remove.
func (w *Writer) Apply(res *policy.Result, revision uint64) error {
	var errs []error
	for p, id := range res.IPCache {
		if cur, ok := w.ipcache[p]; ok && cur == id {
			continue
		}
		if err := w.objs.UpsertIPCache(p, id); err != nil {
			errs = append(errs, err)
			continue
		}
		w.ipcache[p] = id
	}
	groups, err := w.group(res)
	errs = append(errs, err)
	errs = append(errs, w.applyGroups(groups, revision)...)
	errs = append(errs, w.dropUnused())
	for p := range w.ipcache {
		if _, ok := res.IPCache[p]; ok {
			continue
		}
		if err := w.objs.DeleteIPCache(p); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(w.ipcache, p)
	}
	return errors.Join(errs...)
}

// sameRules is slices.Equal, at once when both are the same slice: the
// compiler hands out the rules of pods alike, and of pods whose policy did
// not change, as one read-only slice.
func sameRules(a, b []policy.Rule) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b)
}

// group is the endpoints that want the same rules.
type group struct {
	want    content
	members []policy.EndpointPolicy
	set     *ruleSet // the set they will follow
}

// group sorts res's endpoints by the rules they want. An endpoint whose
// policy rules did not change wants its set's content, unconverted.
func (w *Writer) group(res *policy.Result) ([]*group, error) {
	conv := converted{}
	byHash := map[uint64][]*group{}
	var out []*group
	var errs []error
	for _, ep := range res.Endpoints {
		var c content
		if st, ok := w.endpoints[ep.Ifindex]; ok && st.ok && st.host == hostOf(ep) &&
			sameRules(st.ingress, ep.Ingress) && sameRules(st.egress, ep.Egress) {
			set := w.sets[st.set]
			c = content{ingress: set.ingress, egress: set.egress, hash: set.hash}
		} else {
			var err error
			if c, err = convert(conv, ep); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.ID, err))
				continue
			}
		}
		var g *group
		for _, cand := range byHash[c.hash] {
			if cand.want.equal(c) {
				g = cand
				break
			}
		}
		if g == nil {
			g = &group{want: c}
			byHash[c.hash] = append(byHash[c.hash], g)
			out = append(out, g)
		}
		g.members = append(g.members, ep)
	}
	return out, errors.Join(errs...)
}

// applyGroups gives every group a set holding the rules it wants, then
// points its members at it. A group takes, in this order: a set that
// holds its rules already; a set only its own members follow, changed in
// place; a new set. A set another group takes as it is must not change, so
// the first kind is settled for every group before any set changes.
func (w *Writer) applyGroups(groups []*group, revision uint64) []error {
	claimed := map[uint32]bool{}
	for _, g := range groups {
		if g.set = w.find(g.want); g.set != nil {
			claimed[g.set.id] = true
		}
	}
	var errs []error
	for _, g := range groups {
		if g.set != nil {
			continue
		}
		set := w.ownSet(g, claimed)
		var err error
		if set != nil {
			claimed[set.id] = true
			err = w.rewrite(set, g.want)
		} else {
			set, err = w.newSet(g.want)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		g.set = set
	}
	for _, g := range groups {
		if g.set == nil {
			continue
		}
		for _, ep := range g.members {
			if err := w.follow(ep, g.set, revision); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.ID, err))
			}
		}
	}
	return errs
}

// ownSet returns an unclaimed set that only members of g follow, the one
// most of them do, or nil.
func (w *Writer) ownSet(g *group, claimed map[uint32]bool) *ruleSet {
	count := map[uint32]int{}
	for _, ep := range g.members {
		if st, ok := w.endpoints[ep.Ifindex]; ok {
			count[st.set]++
		}
	}
	var best *ruleSet
	for id, n := range count {
		set := w.sets[id]
		if set == nil || claimed[id] || set.users != n {
			continue
		}
		if best == nil || n > best.users || (n == best.users && id < best.id) {
			best = set
		}
	}
	return best
}

// find returns a set holding exactly c, or nil.
func (w *Writer) find(c content) *ruleSet {
	for _, id := range w.byHash[c.hash] {
		if set := w.sets[id]; set != nil && c.equal(content{ingress: set.ingress, egress: set.egress, hash: set.hash}) {
			return set
		}
	}
	return nil
}

// newSet writes c as a new rule set.
func (w *Writer) newSet(c content) (*ruleSet, error) {
	set := &ruleSet{id: w.nextSet}
	w.nextSet++
	w.sets[set.id] = set
	set.hash = hashEntries(nil, nil)
	w.byHash[set.hash] = append(w.byHash[set.hash], set.id)
	return set, w.rewrite(set, c)
}

// rewrite makes set hold c, writing only the difference.
func (w *Writer) rewrite(set *ruleSet, c content) error {
	var errs []error
	for _, d := range bpf.Directions {
		want := c.ingress
		if d == bpf.FromPod {
			want = c.egress
		}
		errs = append(errs, w.update(set, d, want))
	}
	w.rehash(set)
	return errors.Join(errs...)
}

// update makes the rules of set in direction d equal want.
func (w *Writer) update(set *ruleSet, d bpf.Direction, want []bpf.PolicyEntry) error {
	have := set.of(d)
	add, del := diff(*have, want)
	if len(add) == 0 && len(del) == 0 {
		return nil
	}
	if err := w.objs.UpdatePolicy(set.id, d, add, del); err != nil {
		// Part of the change may be in: learn what is, so that the next
		// try writes the rest.
		if cur, rerr := w.objs.SetRules(set.id, d); rerr == nil {
			sortEntries(cur)
			*have = cur
		}
		return err
	}
	*have = want
	return nil
}

func (w *Writer) rehash(set *ruleSet) {
	w.unindex(set)
	set.hash = hashEntries(set.ingress, set.egress)
	w.byHash[set.hash] = append(w.byHash[set.hash], set.id)
}

// unindex removes set from byHash.
func (w *Writer) unindex(set *ruleSet) {
	ids := slices.DeleteFunc(w.byHash[set.hash], func(id uint32) bool { return id == set.id })
	if len(ids) == 0 {
		delete(w.byHash, set.hash)
	} else {
		w.byHash[set.hash] = ids
	}
}

// follow points the endpoint entry of ep at set, with ep's flags, its
// addresses and the revision.
func (w *Writer) follow(ep policy.EndpointPolicy, set *ruleSet, revision uint64) error {
	info := bpf.EndpointInfo{Revision: revision, Identity: ep.Identity, RuleSet: set.id}
	if err := info.SetAddrs(ep.IPs); err != nil {
		return fmt.Errorf("addresses of endpoint %s: %w", ep.ID, err)
	}
	if ep.IngressIsolated {
		info.Flags |= bpf.FlagIngressIsolated
	}
	if ep.EgressIsolated {
		info.Flags |= bpf.FlagEgressIsolated
	}
	if err := w.objs.SetEndpoint(ep.Ifindex, info); err != nil {
		return err
	}
	if st, ok := w.endpoints[ep.Ifindex]; ok {
		if old := w.sets[st.set]; old != nil {
			old.users--
		}
	}
	set.users++
	w.endpoints[ep.Ifindex] = endpointState{set: set.id, ingress: ep.Ingress, egress: ep.Egress, host: hostOf(ep), ok: true}
	return nil
}

// dropUnused deletes the rule sets no endpoint follows.
func (w *Writer) dropUnused() error {
	var errs []error
	for _, set := range w.sets {
		if set.users <= 0 {
			errs = append(errs, w.dropSet(set))
		}
	}
	return errors.Join(errs...)
}

func (w *Writer) dropSet(set *ruleSet) error {
	if err := w.rewrite(set, content{}); err != nil {
		return fmt.Errorf("delete rule set %d: %w", set.id, err)
	}
	delete(w.sets, set.id)
	w.unindex(set)
	return nil
}

// diff returns the entries of want not in have (or with another value) and
// the keys of have not in want. Both are sorted by compareKey.
func diff(have, want []bpf.PolicyEntry) (add []bpf.PolicyEntry, del []bpf.PolicyKey) {
	i, j := 0, 0
	for i < len(have) || j < len(want) {
		switch {
		case j == len(want) || (i < len(have) && compareKey(have[i].Key, want[j].Key) < 0):
			del = append(del, have[i].Key)
			i++
		case i == len(have) || compareKey(have[i].Key, want[j].Key) > 0:
			add = append(add, want[j])
			j++
		default:
			if have[i].Value != want[j].Value {
				add = append(add, want[j])
			}
			i++
			j++
		}
	}
	return add, del
}

// Remove deletes the endpoint entry of ifindex, from when on its interface
// drops everything, then its rule set if no other endpoint follows it.
func (w *Writer) Remove(ifindex int) error {
	if err := w.objs.DeleteEndpoint(ifindex); err != nil {
		return err
	}
	if st, ok := w.endpoints[ifindex]; ok {
		if set := w.sets[st.set]; set != nil {
			set.users--
		}
		delete(w.endpoints, ifindex)
	}
	return w.dropUnused()
}

// Prune removes the endpoint entries of interfaces not in keep, such as
// those left from before a restart for pods deleted meanwhile, and the
// rule sets only they followed.
func (w *Writer) Prune(keep map[int]bool) error {
	cur, err := w.objs.Endpoints()
	if err != nil {
		return err
	}
	stale := map[int]bool{}
	for ifindex := range cur {
		stale[ifindex] = !keep[ifindex]
	}
	for ifindex := range w.endpoints {
		stale[ifindex] = !keep[ifindex]
	}
	var errs []error
	for ifindex, gone := range stale {
		if gone {
			if err := w.Remove(ifindex); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// convert returns the entries of ep's rules, memoized in conv (may be nil).
func convert(conv converted, ep policy.EndpointPolicy) (content, error) {
	in, err := conv.entries(ep.Ingress)
	if err != nil {
		return content{}, err
	}
	eg, err := conv.entries(ep.Egress)
	if err != nil {
		return content{}, err
	}
	host := hostOf(ep)
	if host.ingress {
		in = withHost(in)
	}
	if host.egress {
		eg = withHost(eg)
	}
	return content{ingress: in, egress: eg, hash: hashEntries(in, eg)}, nil
}

// hostEntry allows the pod's own node, which NetworkPolicy always allows,
// in a direction it isolates. The datapath has no exception for the node
// (an admin tier may deny it): where cluster policies judge a direction,
// their folded rules carry the node's answer instead (policy.tiers).
var hostEntry = func() bpf.PolicyEntry {
	keys, err := bpf.PolicyKeys(bpf.IdentityHost, policy.ProtoAny, bpf.PortRange{})
	if err != nil || len(keys) != 1 {
		panic(fmt.Sprintf("policy key of the node: %v %v", keys, err))
	}
	return bpf.PolicyEntry{Key: keys[0]}
}()

// withHost returns es with hostEntry, es itself untouched (it may be
// memoized).
func withHost(es []bpf.PolicyEntry) []bpf.PolicyEntry {
	if slices.ContainsFunc(es, func(e bpf.PolicyEntry) bool { return e.Key == hostEntry.Key }) {
		return es
	}
	out := append(slices.Clone(es), hostEntry)
	sortEntries(out)
	return out
}

func (c content) equal(o content) bool {
	return c.hash == o.hash && slices.Equal(c.ingress, o.ingress) && slices.Equal(c.egress, o.egress)
}

// hashEntries is a hash of a set's content, for finding sets by it.
func hashEntries(ingress, egress []bpf.PolicyEntry) uint64 {
	h := fnv.New64a()
	var b [24]byte
	for i, es := range [][]bpf.PolicyEntry{ingress, egress} {
		binary.LittleEndian.PutUint32(b[:4], uint32(i)|0xd1d0<<16)
		_, _ = h.Write(b[:4])
		for _, e := range es {
			k := e.Key
			binary.LittleEndian.PutUint32(b[0:], k.Prefixlen)
			binary.LittleEndian.PutUint32(b[4:], k.Identity)
			b[8], b[9] = k.Proto, 0
			binary.LittleEndian.PutUint16(b[10:], k.PortNet)
			binary.LittleEndian.PutUint32(b[12:], e.Value.Rule)
			binary.LittleEndian.PutUint32(b[16:], e.Value.Flags)
			_, _ = h.Write(b[:20])
		}
	}
	return h.Sum64()
}

// converted memoizes entries by the rule list's backing array, within one
// Apply: the lists are not modified meanwhile. A nil converted converts
// every time.
type converted map[ruleList][]bpf.PolicyEntry

type ruleList struct {
	first *policy.Rule
	n     int
}

func (c converted) entries(rules []policy.Rule) ([]bpf.PolicyEntry, error) {
	if c == nil || len(rules) == 0 {
		return entries(rules)
	}
	key := ruleList{&rules[0], len(rules)}
	if es, ok := c[key]; ok {
		return es, nil
	}
	es, err := entries(rules)
	if err == nil {
		c[key] = es
	}
	return es, err
}

// entries converts rules to map entries, sorted so that equal policies
// compare equal.
func entries(rules []policy.Rule) ([]bpf.PolicyEntry, error) {
	var out []bpf.PolicyEntry
	seen := map[bpf.PolicyKey]bool{}
	for _, r := range rules {
		keys, err := bpf.PolicyKeys(r.Peer, r.Proto, bpf.PortRange{First: r.Ports.First, Last: r.Ports.Last})
		if err != nil {
			return nil, fmt.Errorf("rule %+v: %w", r, err)
		}
		for _, k := range keys {
			if !seen[k] {
				seen[k] = true
				v := bpf.PolicyValue{Rule: r.Ref}
				if r.Deny {
					v.Flags = bpf.PolicyDeny
				}
				out = append(out, bpf.PolicyEntry{Key: k, Value: v})
			}
		}
	}
	sortEntries(out)
	return out, nil
}

func sortEntries(es []bpf.PolicyEntry) {
	slices.SortFunc(es, func(a, b bpf.PolicyEntry) int { return compareKey(a.Key, b.Key) })
}

// compareKey orders policy keys, so that equal policies compare equal.
func compareKey(a, b bpf.PolicyKey) int {
	return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Prefixlen, b.Prefixlen), cmp.Compare(a.PortNet, b.PortNet))
}
