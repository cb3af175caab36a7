package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Service translation types shared with the C programs (service.h).
type (
	ServiceKey   = palisadeServiceKey
	ServiceValue = palisadeServiceValue
	BackendKey   = palisadeBackendKey
	BackendValue = palisadeBackendValue
)

// Backend is one address a Service's port leads to.
type Backend struct {
	Addr netip.Addr
	Port uint16
}

// NewServiceKey returns the key of a Service's address, port and protocol.
func NewServiceKey(addr netip.Addr, port uint16, proto uint8) ServiceKey {
	return ServiceKey{Addr: addr.Unmap().As16(), PortNet: htons(port), Proto: proto}
}

// Address returns the key's address, IPv4 unmapped.
func (k ServiceKey) Address() netip.Addr { return netip.AddrFrom16(k.Addr).Unmap() }

// Port returns the key's port in host byte order.
func (k ServiceKey) Port() uint16 { return ntohs(k.PortNet) }

// SetService writes a Service's backends and then its entry, so a packet
// never picks a slot that is not written yet. Slots beyond the new count
// (up to oldCount) are deleted after the entry shrinks.
func (o *Objects) SetService(key ServiceKey, id, affinitySeconds uint32, backends []Backend, oldCount uint32) error {
	for i, b := range backends {
		bk := BackendKey{ServiceId: id, Slot: uint32(i + 1)}
		bv := BackendValue{Addr: b.Addr.Unmap().As16(), PortNet: htons(b.Port)}
		if err := o.objs.PalBackends.Put(bk, bv); err != nil {
			return fmt.Errorf("write backend %d of service %d: %w", i+1, id, err)
		}
	}
	val := ServiceValue{Id: id, Count: uint32(len(backends)), AffinitySec: affinitySeconds}
	if err := o.objs.PalServices.Put(key, val); err != nil {
		return fmt.Errorf("write service %s:%d: %w", key.Address(), key.Port(), err)
	}
	return o.deleteBackends(id, uint32(len(backends))+1, oldCount)
}

// DeleteService removes a Service's entry and then its backends.
func (o *Objects) DeleteService(key ServiceKey, id, count uint32) error {
	if err := o.objs.PalServices.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete service %s:%d: %w", key.Address(), key.Port(), err)
	}
	return o.deleteBackends(id, 1, count)
}

func (o *Objects) deleteBackends(id, from, to uint32) error {
	for slot := from; slot <= to; slot++ {
		err := o.objs.PalBackends.Delete(BackendKey{ServiceId: id, Slot: slot})
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete backend %d of service %d: %w", slot, id, err)
		}
	}
	return nil
}

// Services reads the whole service table.
func (o *Objects) Services() (map[ServiceKey]ServiceValue, error) {
	out := map[ServiceKey]ServiceValue{}
	var k ServiceKey
	var v ServiceValue
	it := o.objs.PalServices.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// AddNodeAddr marks addr as a node's: a flow to it on a NodePort is
// translated like one to the Service's ClusterIP.
func (o *Objects) AddNodeAddr(addr netip.Addr) error {
	if err := o.objs.PalNodeAddrs.Put(addr.Unmap().As16(), uint8(1)); err != nil {
		return fmt.Errorf("add node address %s: %w", addr, err)
	}
	return nil
}

// DeleteNodeAddr forgets a node address.
func (o *Objects) DeleteNodeAddr(addr netip.Addr) error {
	err := o.objs.PalNodeAddrs.Delete(addr.Unmap().As16())
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete node address %s: %w", addr, err)
	}
	return nil
}

// NodeAddrs reads the set of node addresses.
func (o *Objects) NodeAddrs() ([]netip.Addr, error) {
	var out []netip.Addr
	var k [16]byte
	var v uint8
	it := o.objs.PalNodeAddrs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, netip.AddrFrom16(k).Unmap())
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	return out, nil
}
