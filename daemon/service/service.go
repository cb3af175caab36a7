// Package service mirrors Services and EndpointSlices into what the
// datapath translates before judging: for each Service address, port and
// protocol, the backends a new flow may be sent to. The addresses are the
// ClusterIPs and those kube-proxy calls external: a node address on a
// NodePort, externalIPs and load-balancer ingress IPs. It picks backends the
// way kube-proxy does for traffic from pods, so that translating in the
// datapath and leaving it to kube-proxy lead to the same pods. It is pure:
// no informers, no bpf.
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

// Kind is how a Service address is reached; it orders entries that claim
// the same address, port and protocol.
type Kind uint8

const (
	ClusterIP Kind = iota
	// NodePort entries stand for every node address: their Addr is the
	// unspecified address of the family (0.0.0.0 or ::).
	NodePort
	ExternalIP
	LoadBalancer
)

// Entry is one Service address, port and protocol with its backends.
type Entry struct {
	Addr            netip.Addr
	Port            uint16
	Proto           uint8
	Kind            Kind
	AffinitySeconds uint32
	Backends        []Backend
}

// Backend is a pod address and target port.
type Backend struct {
	Addr netip.Addr
	Port uint16
}

// Compile returns the entries of every Service that has a ClusterIP,
// sorted by address, port and protocol. node is this node's name, for
// internalTrafficPolicy: Local. When two Services claim one address and
// port, the ClusterIP wins, then the Service first by namespace and name.
func Compile(services []*corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node string) []Entry {
	byService := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range endpointSlices {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name != "" {
			byService[s.Namespace+"/"+name] = append(byService[s.Namespace+"/"+name], s)
		}
	}
	services = slices.Clone(services)
	slices.SortFunc(services, func(a, b *corev1.Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var out []Entry
	for _, svc := range services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		es := byService[svc.Namespace+"/"+svc.Name]
		for _, ip := range clusterIPs(svc) {
			for _, sp := range svc.Spec.Ports {
				e := Entry{Addr: ip, Port: uint16(sp.Port), Proto: protoNumber(sp.Protocol), AffinitySeconds: affinity(svc)}
				e.Backends = backends(es, ip, sp, localOnly(svc), node)
				out = append(out, e)
				out = append(out, external(svc, es, ip, sp, e.AffinitySeconds)...)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b Entry) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Kind, b.Kind))
	})
	return slices.CompactFunc(out, func(a, b Entry) bool {
		return a.Addr == b.Addr && a.Port == b.Port && a.Proto == b.Proto
	})
}

// external returns the entries of a Service port's external addresses in
// the family of its ClusterIP cip. From a pod, kube-proxy sends all of them
// to the Service's cluster-wide endpoints whatever the traffic policies say:
// externalTrafficPolicy Local sends pod traffic to its cluster chain
// ("pod traffic for ... external destinations"), and
// internalTrafficPolicy applies to the ClusterIP only.
func external(svc *corev1.Service, es []*discoveryv1.EndpointSlice, cip netip.Addr, sp corev1.ServicePort, affinity uint32) []Entry {
	var addrs []Entry
	if sp.NodePort != 0 {
		wildcard := netip.IPv4Unspecified()
		if is6(cip) {
			wildcard = netip.IPv6Unspecified()
		}
		addrs = append(addrs, Entry{Addr: wildcard, Port: uint16(sp.NodePort), Kind: NodePort})
	}
	for _, s := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(s); err == nil && is6(a) == is6(cip) {
			addrs = append(addrs, Entry{Addr: a.Unmap(), Port: uint16(sp.Port), Kind: ExternalIP})
		}
	}
	for _, a := range loadBalancerIPs(svc) {
		if is6(a) == is6(cip) {
			addrs = append(addrs, Entry{Addr: a, Port: uint16(sp.Port), Kind: LoadBalancer})
		}
	}
	if len(addrs) == 0 {
		return nil
	}
	bs := backends(es, cip, sp, false, "")
	for i := range addrs {
		addrs[i].Proto, addrs[i].AffinitySeconds, addrs[i].Backends = protoNumber(sp.Protocol), affinity, bs
	}
	return addrs
}

// loadBalancerIPs lists the ingress IPs kube-proxy captures: those in VIP
// mode (ipMode Proxy sends traffic to the load balancer itself). A Service
// with loadBalancerSourceRanges has none here: kube-proxy filters its
// sources, which a translation at the pod would skip.
func loadBalancerIPs(svc *corev1.Service) []netip.Addr {
	if len(svc.Spec.LoadBalancerSourceRanges) > 0 {
		return nil
	}
	var out []netip.Addr
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IPMode != nil && *ing.IPMode != corev1.LoadBalancerIPModeVIP {
			continue
		}
		if a, err := netip.ParseAddr(ing.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func is6(a netip.Addr) bool { return a.Is6() && !a.Is4In6() }

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
	if is6(ip) {
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
