package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// SetEndpoint writes the endpoint entry of the host-side ifindex. Write it
// after the endpoint's policy maps: the flags take effect at once.
func (o *Objects) SetEndpoint(ifindex int, info EndpointInfo) error {
	if err := o.objs.PalEndpoints.Put(uint32(ifindex), info); err != nil {
		return fmt.Errorf("write endpoint of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Endpoint reads the endpoint entry of ifindex.
func (o *Objects) Endpoint(ifindex int) (EndpointInfo, error) {
	var info EndpointInfo
	if err := o.objs.PalEndpoints.Lookup(uint32(ifindex), &info); err != nil {
		return info, fmt.Errorf("read endpoint of ifindex %d: %w", ifindex, err)
	}
	return info, nil
}

// Endpoints lists the ifindexes that have an endpoint entry.
func (o *Objects) Endpoints() (map[int]EndpointInfo, error) {
	out := map[int]EndpointInfo{}
	var k uint32
	var v EndpointInfo
	it := o.objs.PalEndpoints.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// DeleteEndpoint removes the endpoint entry and both policy maps of ifindex.
// Missing entries count as removed.
func (o *Objects) DeleteEndpoint(ifindex int) error {
	var errs []error
	if err := o.objs.PalEndpoints.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete endpoint of ifindex %d: %w", ifindex, err))
	}
	for _, d := range Directions {
		slot := PolicySlot{Ifindex: uint32(ifindex), Dir: d.dir()}
		if err := o.objs.PalPolicy.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete %s policy of ifindex %d: %w", d, ifindex, err))
		}
	}
	return errors.Join(errs...)
}

// PolicyEntry is one allow rule of an endpoint in one direction.
type PolicyEntry struct {
	Key   PolicyKey
	Value PolicyValue
}

// SwapPolicy replaces the rules of ifindex in direction d at once: it fills
// a new inner map and then points the outer map at it, so a packet sees
// either the old rules or the new ones.
func (o *Objects) SwapPolicy(ifindex int, d Direction, entries []PolicyEntry) error {
	spec := o.inner.Copy()
	if len(entries) > int(spec.MaxEntries) {
		return fmt.Errorf("policy of ifindex %d %s has %d entries, more than the %d a map holds", ifindex, d, len(entries), spec.MaxEntries)
	}
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create %s policy map for ifindex %d: %w", d, ifindex, err)
	}
	defer inner.Close()
	for _, e := range entries {
		if err := inner.Put(e.Key, e.Value); err != nil {
			return fmt.Errorf("fill %s policy map for ifindex %d: %w", d, ifindex, err)
		}
	}
	slot := PolicySlot{Ifindex: uint32(ifindex), Dir: d.dir()}
	if err := o.objs.PalPolicy.Put(slot, inner); err != nil {
		return fmt.Errorf("swap %s policy map of ifindex %d: %w", d, ifindex, err)
	}
	return nil
}

// Policy reads the rules of ifindex in direction d.
func (o *Objects) Policy(ifindex int, d Direction) ([]PolicyEntry, error) {
	slot := PolicySlot{Ifindex: uint32(ifindex), Dir: d.dir()}
	var id ebpf.MapID
	if err := o.objs.PalPolicy.Lookup(slot, &id); err != nil {
		return nil, fmt.Errorf("read %s policy of ifindex %d: %w", d, ifindex, err)
	}
	inner, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("open %s policy map of ifindex %d: %w", d, ifindex, err)
	}
	defer inner.Close()
	var out []PolicyEntry
	var e PolicyEntry
	it := inner.Iterate()
	for it.Next(&e.Key, &e.Value) {
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s policy of ifindex %d: %w", d, ifindex, err)
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
