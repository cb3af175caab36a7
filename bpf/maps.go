package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetEndpoint writes the endpoint entry of the host-side ifindex. Write it
// after the rules of its set: the flags and the set take effect at once.
func (o *Objects) SetEndpoint(ifindex int, info EndpointInfo) error {
	if err := o.objs.PalEp.Put(uint32(ifindex), info); err != nil {
		return fmt.Errorf("write endpoint of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Endpoint reads the endpoint entry of ifindex.
func (o *Objects) Endpoint(ifindex int) (EndpointInfo, error) {
	var info EndpointInfo
	if err := o.objs.PalEp.Lookup(uint32(ifindex), &info); err != nil {
		return info, fmt.Errorf("read endpoint of ifindex %d: %w", ifindex, err)
	}
	return info, nil
}

// Endpoints lists the ifindexes that have an endpoint entry.
func (o *Objects) Endpoints() (map[int]EndpointInfo, error) {
	out := map[int]EndpointInfo{}
	var k uint32
	var v EndpointInfo
	it := o.objs.PalEp.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// DeleteEndpoint removes the endpoint entry of ifindex: from then on its
// interface drops everything. Its rule set stays: other endpoints may
// follow it. A missing entry counts as removed.
func (o *Objects) DeleteEndpoint(ifindex int) error {
	if err := o.objs.PalEp.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// PolicyEntry is one allow rule of a rule set in one direction. Its key is
// relative to the set: RuleSet and Dir are zero and Prefixlen counts from
// the identity (PolicyKeys makes such keys).
type PolicyEntry struct {
	Key   PolicyKey
	Value PolicyValue
}

// policyKeyOffset is the prefix length of a rule key's set and dir, which
// precede what PolicyKeys describes.
const policyKeyOffset = 64

// mapKey places the set-relative key k in pal_set_rules.
func mapKey(set uint32, d Direction, k PolicyKey) PolicyKey {
	k.Prefixlen += policyKeyOffset
	k.RuleSet, k.Dir = set, d.dir()
	return k
}

// UpdatePolicy changes the rules of set in direction d in place,
// make-before-break: add (new entries and new values of existing keys)
// goes in first, then del comes out. Where every entry allows, a packet
// judged meanwhile gets the verdict of the old rules or of the new ones.
// With deny entries (admin tiers) a stale, more specific entry can answer
// until it comes out; a flow admitted so carries the old revision and is
// judged again on its next packet once the endpoint's revision moves on.
func (o *Objects) UpdatePolicy(set uint32, d Direction, add []PolicyEntry, del []PolicyKey) error {
	for _, e := range add {
		if err := o.objs.PalSetRules.Put(mapKey(set, d, e.Key), e.Value); err != nil {
			return fmt.Errorf("write %s rule %+v of rule set %d: %w", d, e.Key, set, err)
		}
	}
	for _, k := range del {
		if err := o.objs.PalSetRules.Delete(mapKey(set, d, k)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s rule %+v of rule set %d: %w", d, k, set, err)
		}
	}
	return nil
}

// SetPolicy makes the rules of set in direction d equal entries, with
// UpdatePolicy's ordering. It reads the whole rules map to find what is
// there; the agent's writer, which knows, calls UpdatePolicy instead.
func (o *Objects) SetPolicy(set uint32, d Direction, entries []PolicyEntry) error {
	cur, err := o.SetRules(set, d)
	if err != nil {
		return err
	}
	want := map[PolicyKey]bool{}
	for _, e := range entries {
		want[e.Key] = true
	}
	var del []PolicyKey
	for _, e := range cur {
		if !want[e.Key] {
			del = append(del, e.Key)
		}
	}
	return o.UpdatePolicy(set, d, entries, del)
}

// Policy reads the rules the endpoint of ifindex follows in direction d,
// those of its set, with keys relative to the set. It walks the whole
// rules map.
func (o *Objects) Policy(ifindex int, d Direction) ([]PolicyEntry, error) {
	info, err := o.Endpoint(ifindex)
	if err != nil {
		return nil, err
	}
	return o.SetRules(info.RuleSet, d)
}

// SetRules reads the rules of set in direction d. It walks the whole rules
// map.
func (o *Objects) SetRules(set uint32, d Direction) ([]PolicyEntry, error) {
	all, err := o.Policies()
	if err != nil {
		return nil, err
	}
	return all[PolicySlot{Set: set, Dir: d}], nil
}

// PolicySlot names the rules of one rule set in one direction.
type PolicySlot struct {
	Set uint32
	Dir Direction
}

// Policies reads every rule set, with keys relative to their set.
func (o *Objects) Policies() (map[PolicySlot][]PolicyEntry, error) {
	out := map[PolicySlot][]PolicyEntry{}
	var k PolicyKey
	var v PolicyValue
	it := o.objs.PalSetRules.Iterate()
	for it.Next(&k, &v) {
		slot := PolicySlot{Set: k.RuleSet, Dir: ToPod}
		if k.Dir == FromPod.dir() {
			slot.Dir = FromPod
		}
		k.Prefixlen -= policyKeyOffset
		k.RuleSet, k.Dir = 0, 0
		out[slot] = append(out[slot], PolicyEntry{Key: k, Value: v})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return out, nil
}

// UpsertIPCache maps prefix p to identity.
func (o *Objects) UpsertIPCache(p netip.Prefix, identity uint32) error {
	if err := o.objs.PalIpcache.Put(NewIPCacheKey(p), IPCacheValue{Identity: identity}); err != nil {
		return fmt.Errorf("write ipcache entry %s: %w", p, err)
	}
	return nil
}

// DeleteIPCache removes prefix p; a missing entry counts as removed.
func (o *Objects) DeleteIPCache(p netip.Prefix) error {
	err := o.objs.PalIpcache.Delete(NewIPCacheKey(p))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ipcache entry %s: %w", p, err)
	}
	return nil
}

// IPCache reads the whole ipcache.
func (o *Objects) IPCache() (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	var k IPCacheKey
	var v IPCacheValue
	it := o.objs.PalIpcache.Iterate()
	for it.Next(&k, &v) {
		out[k.Prefix()] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipcache: %w", err)
	}
	return out, nil
}

// Drops reads the per-reason packet counters, summed over CPUs.
func (o *Objects) Drops() (map[int]uint64, error) {
	out := map[int]uint64{}
	var perCPU []uint64
	for reason := uint32(0); reason < o.objs.PalDrops.MaxEntries(); reason++ {
		if err := o.objs.PalDrops.Lookup(reason, &perCPU); err != nil {
			return nil, fmt.Errorf("read drop counter %d: %w", reason, err)
		}
		var sum uint64
		for _, n := range perCPU {
			sum += n
		}
		out[int(reason)] = sum
	}
	return out, nil
}

// Events is the verdict ring buffer, for a ringbuf.Reader.
func (o *Objects) Events() *ebpf.Map { return o.objs.PalEvents }
