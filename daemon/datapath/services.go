package datapath

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/service"
)

type serviceState struct {
	id       uint32
	affinity uint32
	backends []bpf.Backend
	// count is how many backend slots the map holds for the service.
	count uint32
}

// loadServices learns what a previous agent left in the service maps, so
// that ids are not reused and stale entries can be removed.
func (w *Writer) loadServices() error {
	cur, err := w.objs.Services()
	if err != nil {
		return err
	}
	w.services = map[bpf.ServiceKey]serviceState{}
	for k, v := range cur {
		// Unknown backends: the first apply rewrites the entry.
		w.services[k] = serviceState{id: v.Id, affinity: v.AffinitySec, count: v.Count}
		w.nextServiceID = max(w.nextServiceID, v.Id+1)
	}
	addrs, err := w.objs.NodeAddrs()
	if err != nil {
		return err
	}
	w.nodeAddrs = map[netip.Addr]bool{}
	for _, a := range addrs {
		w.nodeAddrs[a] = true
	}
	return nil
}

// ApplyNodeAddrs makes the node-address set, which NodePort entries apply
// to, equal addrs: new addresses first, stale ones last.
func (w *Writer) ApplyNodeAddrs(addrs []netip.Addr) error {
	var errs []error
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		want[a] = true
		if w.nodeAddrs[a] {
			continue
		}
		if err := w.objs.AddNodeAddr(a); err != nil {
			errs = append(errs, err)
			continue
		}
		w.nodeAddrs[a] = true
	}
	for a := range w.nodeAddrs {
		if want[a] {
			continue
		}
		if err := w.objs.DeleteNodeAddr(a); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(w.nodeAddrs, a)
	}
	return errors.Join(errs...)
}

// ApplyServices makes the service maps equal entries: new and changed
// services first, stale ones last.
func (w *Writer) ApplyServices(entries []service.Entry) error {
	var errs []error
	want := map[bpf.ServiceKey]bool{}
	for _, e := range entries {
		key := bpf.NewServiceKey(e.Addr, e.Port, e.Proto)
		want[key] = true
		backends := make([]bpf.Backend, len(e.Backends))
		for i, b := range e.Backends {
			backends[i] = bpf.Backend{Addr: b.Addr, Port: b.Port}
		}
		cur, ok := w.services[key]
		if ok && cur.backends != nil && cur.affinity == e.AffinitySeconds && slices.Equal(cur.backends, backends) {
			continue
		}
		if !ok {
			cur.id = w.nextServiceID
			w.nextServiceID++
		}
		if err := w.objs.SetService(key, cur.id, e.AffinitySeconds, backends, cur.count); err != nil {
			errs = append(errs, err)
			continue
		}
		w.services[key] = serviceState{id: cur.id, affinity: e.AffinitySeconds, backends: backends, count: uint32(len(backends))}
	}
	for key, cur := range w.services {
		if want[key] {
			continue
		}
		if err := w.objs.DeleteService(key, cur.id, cur.count); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(w.services, key)
	}
	return errors.Join(errs...)
}
