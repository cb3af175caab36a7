// Package datapath writes compiled policy into the BPF maps: it converts
// policy rules to map keys, diffs against what it wrote before and swaps
// whole per-endpoint maps. It is the only package that knows both the
// policy types and the bpf types.
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
	objs          *bpf.Objects
	ipcache       map[netip.Prefix]uint32
	written       map[int]endpointState
	services      map[bpf.ServiceKey]serviceState
	nextServiceID uint32
}

type endpointState struct {
	ingress, egress []bpf.PolicyEntry
}

// New returns a writer that starts from what the maps hold now, so that a
// restarted agent deletes what is stale and rewrites the rest.
func New(objs *bpf.Objects) (*Writer, error) {
	cur, err := objs.IPCache()
	if err != nil {
		return nil, err
	}
	w := &Writer{objs: objs, ipcache: cur, written: map[int]endpointState{}, nextServiceID: 1}
	if err := w.loadServices(); err != nil {
		return nil, err
	}
	return w, nil
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
	for _, ep := range res.Endpoints {
		if err := w.applyEndpoint(ep, revision); err != nil {
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

func (w *Writer) applyEndpoint(ep policy.EndpointPolicy, revision uint64) error {
	ingress, err := entries(ep.Ingress)
	if err != nil {
		return err
	}
	egress, err := entries(ep.Egress)
	if err != nil {
		return err
	}
	old, had := w.written[ep.Ifindex]
	if !had || !slices.Equal(old.ingress, ingress) {
		if err := w.objs.SwapPolicy(ep.Ifindex, bpf.ToPod, ingress); err != nil {
			return err
		}
	}
	if !had || !slices.Equal(old.egress, egress) {
		if err := w.objs.SwapPolicy(ep.Ifindex, bpf.FromPod, egress); err != nil {
			return err
		}
	}
	w.written[ep.Ifindex] = endpointState{ingress: ingress, egress: egress}
	info := bpf.EndpointInfo{Revision: revision, Identity: ep.Identity}
	if ep.IngressIsolated {
		info.Flags |= bpf.FlagIngressIsolated
	}
	if ep.EgressIsolated {
		info.Flags |= bpf.FlagEgressIsolated
	}
	return w.objs.SetEndpoint(ep.Ifindex, info)
}

// Remove deletes the entries of the endpoint on ifindex: from then on its
// interface drops everything until it is gone.
func (w *Writer) Remove(ifindex int) error {
	delete(w.written, ifindex)
	return w.objs.DeleteEndpoint(ifindex)
}

// Prune removes endpoint entries of interfaces not in keep, such as those
// left from before a restart for pods deleted meanwhile.
func (w *Writer) Prune(keep map[int]bool) error {
	cur, err := w.objs.Endpoints()
	if err != nil {
		return err
	}
	var errs []error
	for ifindex := range cur {
		if !keep[ifindex] {
			if err := w.Remove(ifindex); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
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
	slices.SortFunc(out, func(a, b bpf.PolicyEntry) int { return compareKey(a.Key, b.Key) })
	return out, nil
}

// compareKey orders policy keys, so that equal policies compare equal.
func compareKey(a, b bpf.PolicyKey) int {
	return cmp.Or(cmp.Compare(a.Identity, b.Identity), cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Prefixlen, b.Prefixlen), cmp.Compare(a.PortNet, b.PortNet))
}
