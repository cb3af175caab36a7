// Package service mirrors Services and EndpointSlices into what the
// datapath translates before judging: for each ClusterIP, port and
// protocol, the backends a new flow may be sent to. It picks backends the
// way kube-proxy does, so that translating in the datapath and leaving it to
// kube-proxy lead to the same pods. It is pure: no informers, no bpf.
package service

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// defaultAffinitySeconds is the API's default ClientIP affinity timeout
// (three hours).
const defaultAffinitySeconds = 10800

// Entry is one Service address, port and protocol with its backends.
type Entry struct {
	Addr            netip.Addr
	Port            uint16
	Proto           uint8
	AffinitySeconds uint32
	Backends        []Backend
}

// Backend is a pod address and target port.
type Backend struct {
	Addr netip.Addr
	Port uint16
}

// Compile returns the entries of every ClusterIP Service, sorted. node is
// this node's name, for internalTrafficPolicy: Local.
func Compile(services []*corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node string) []Entry {
	byService := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range endpointSlices {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name != "" {
			byService[s.Namespace+"/"+name] = append(byService[s.Namespace+"/"+name], s)
		}
	}
	var out []Entry
	for _, svc := range services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		for _, ip := range clusterIPs(svc) {
			for _, sp := range svc.Spec.Ports {
				e := Entry{Addr: ip, Port: uint16(sp.Port), Proto: protoNumber(sp.Protocol), AffinitySeconds: affinity(svc)}
				e.Backends = backends(byService[svc.Namespace+"/"+svc.Name], ip, sp, localOnly(svc), node)
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	return out
}

// clusterIPs lists a Service's cluster addresses; a headless Service has
// none.
func clusterIPs(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func affinity(svc *corev1.Service) uint32 {
	if svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return 0
	}
	if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		return uint32(*c.ClientIP.TimeoutSeconds)
	}
	return defaultAffinitySeconds
}

func localOnly(svc *corev1.Service) bool {
	p := svc.Spec.InternalTrafficPolicy
	return p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal
}

// backends collects the endpoints of a Service port in the family of ip.
// Like kube-proxy: ready endpoints; if none, serving ones that are
// terminating, so that connections drain instead of failing.
func backends(es []*discoveryv1.EndpointSlice, ip netip.Addr, sp corev1.ServicePort, local bool, node string) []Backend {
	family := discoveryv1.AddressTypeIPv4
	if ip.Is6() && !ip.Is4In6() {
		family = discoveryv1.AddressTypeIPv6
	}
	var ready, terminating []Backend
	for _, s := range es {
		if s.AddressType != family {
			continue
		}
		port, ok := slicePort(s, sp)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 || (local && (ep.NodeName == nil || *ep.NodeName != node)) {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			b := Backend{Addr: a, Port: port}
			switch c := ep.Conditions; {
			case c.Ready == nil || *c.Ready:
				ready = append(ready, b)
			case (c.Serving == nil || *c.Serving) && c.Terminating != nil && *c.Terminating:
				terminating = append(terminating, b)
			}
		}
	}
	if len(ready) == 0 {
		ready = terminating
	}
	slices.SortFunc(ready, func(a, b Backend) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port)) })
	return slices.Compact(ready)
}

// slicePort finds the slice's port for a Service port: same name (both
// empty for an unnamed port) and protocol.
func slicePort(s *discoveryv1.EndpointSlice, sp corev1.ServicePort) (uint16, bool) {
	for _, p := range s.Ports {
		name, proto := "", corev1.ProtocolTCP
		if p.Name != nil {
			name = *p.Name
		}
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if name == sp.Name && protoNumber(proto) == protoNumber(sp.Protocol) && p.Port != nil {
			return uint16(*p.Port), true
		}
	}
	return 0, false
}

func protoNumber(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolUDP:
		return 17
	case corev1.ProtocolSCTP:
		return 132
	}
	return 6
}
