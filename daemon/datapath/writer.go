// Package datapath writes compiled policy into the BPF maps: it converts
// policy rules to map keys, diffs against what it wrote before and writes
// only the difference, new entries before stale ones go. It is the only
// package that knows both the policy types and the bpf types.
package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/policy"
)

// Writer owns the maps' content.
type Writer struct {
	objs    *bpf.Objects
	ipcache map[netip.Prefix]uint32
	written map[int]endpointState
	// applied is the policy each endpoint's entries were last made from,
	// so that an Apply skips converting and diffing rules that did not
	// change, most of them in most syncs.
	applied       map[int]appliedRules
	services      map[bpf.ServiceKey]serviceState
	nextServiceID uint32
}

// endpointState is an endpoint's rules as the map holds them, each
// direction sorted by compareKey.
type endpointState struct {
	ingress, egress []bpf.PolicyEntry
}

func (s *endpointState) of(d bpf.Direction) *[]bpf.PolicyEntry {
	if d == bpf.FromPod {
		return &s.egress
	}
	return &s.ingress
}

type appliedRules struct {
	ingress, egress []policy.Rule
}

// New returns a writer that starts from what the maps hold now, so that a
// restarted agent changes only what is stale.
func New(objs *bpf.Objects) (*Writer, error) {
	cur, err := objs.IPCache()
	if err != nil {
		return nil, err
	}
	w := &Writer{objs: objs, ipcache: cur, written: map[int]endpointState{}, applied: map[int]appliedRules{}, nextServiceID: 1}
	rules, err := objs.Policies()
	if err != nil {
		return nil, err
	}
	for slot, es := range rules {
		sortEntries(es)
		st := w.written[slot.Ifindex]
		*st.of(slot.Dir) = es
		w.written[slot.Ifindex] = st
	}
	if err := w.loadServices(); err != nil {
		return nil, err
	}
	return w, nil
}

// ApplyEndpoint programs one endpoint ahead of the next Apply: the ipcache
// entries of its addresses, its rules, then its endpoint entry. It deletes
// nothing, so it is safe with a Result older than the endpoint.
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
	return w.applyEndpoint(ep, revision, nil)
}

// Apply makes the maps equal res at revision. New ipcache entries and
// policies go in before stale ones go out, and each endpoint's entry is
// written after its policy maps, so no packet sees a policy that is not
// whole. Endpoints of the node not in res are left to Remove.
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
	// Pods alike share their compiled rules: convert each list once.
	conv := converted{}
	for _, ep := range res.Endpoints {
		if err := w.applyEndpoint(ep, revision, conv); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", ep.ID, err))
		}
	}
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

func (w *Writer) applyEndpoint(ep policy.EndpointPolicy, revision uint64, conv converted) error {
	if err := w.applyRules(ep, conv); err != nil {
		return err
	}
	info := bpf.EndpointInfo{Revision: revision, Identity: ep.Identity}
	if ep.IngressIsolated {
		info.Flags |= bpf.FlagIngressIsolated
	}
	if ep.EgressIsolated {
		info.Flags |= bpf.FlagEgressIsolated
	}
	return w.objs.SetEndpoint(ep.Ifindex, info)
}

// applyRules makes the rule entries of ep's interface equal its policy.
func (w *Writer) applyRules(ep policy.EndpointPolicy, conv converted) error {
	if prev, ok := w.applied[ep.Ifindex]; ok && slices.Equal(prev.ingress, ep.Ingress) && slices.Equal(prev.egress, ep.Egress) {
		return nil
	}
	delete(w.applied, ep.Ifindex)
	ingress, err := conv.entries(ep.Ingress)
	if err != nil {
		return err
	}
	egress, err := conv.entries(ep.Egress)
	if err != nil {
		return err
	}
	for d, want := range map[bpf.Direction][]bpf.PolicyEntry{bpf.ToPod: ingress, bpf.FromPod: egress} {
		if err := w.update(ep.Ifindex, d, want); err != nil {
			return err
		}
	}
	w.applied[ep.Ifindex] = appliedRules{ingress: ep.Ingress, egress: ep.Egress}
	return nil
}

// update makes the rules of ifindex in direction d equal want, writing only
// the difference from what the map holds.
func (w *Writer) update(ifindex int, d bpf.Direction, want []bpf.PolicyEntry) error {
	st := w.written[ifindex]
	have := st.of(d)
	add, del := diff(*have, want)
	if len(add) == 0 && len(del) == 0 {
		return nil
	}
	if err := w.objs.UpdatePolicy(ifindex, d, add, del); err != nil {
		// Part of the change may be in: learn what is, so that the next
		// try writes the rest.
		cur, rerr := w.objs.Policy(ifindex, d)
		if rerr == nil {
			sortEntries(cur)
			*have = cur
			w.written[ifindex] = st
		}
		return err
	}
	*have = want
	w.written[ifindex] = st
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

// Remove deletes the endpoint entry of ifindex, then its rules: from the
// first step on its interface drops everything until it is gone.
func (w *Writer) Remove(ifindex int) error {
	delete(w.applied, ifindex)
	if err := w.objs.DeleteEndpoint(ifindex); err != nil {
		return err
	}
	var errs []error
	for _, d := range bpf.Directions {
		if err := w.update(ifindex, d, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	delete(w.written, ifindex)
	return nil
}

// Prune removes the endpoint entries and rules of interfaces not in keep,
// such as those left from before a restart for pods deleted meanwhile.
func (w *Writer) Prune(keep map[int]bool) error {
	cur, err := w.objs.Endpoints()
	if err != nil {
		return err
	}
	stale := map[int]bool{}
	for ifindex := range cur {
		stale[ifindex] = !keep[ifindex]
	}
	for ifindex := range w.written {
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
				out = append(out, bpf.PolicyEntry{Key: k, Value: bpf.PolicyValue{Rule: r.Ref}})
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
