package service

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func ptr[T any](v T) *T { return &v }

func svc(name string, tweak func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	if tweak != nil {
		tweak(s)
	}
	return s
}

type ep struct {
	addr              string
	node              string
	ready, terminated *bool
}

func slice(service string, ports []discoveryv1.EndpointPort, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: service + "-abc", Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.addr},
			NodeName:   ptr(e.node),
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Terminating: e.terminated},
		})
	}
	return s
}

var httpPort = []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}}

func on8080(addrs ...string) []Backend {
	var out []Backend
	for _, a := range addrs {
		out = append(out, Backend{netip.MustParseAddr(a), 8080})
	}
	return out
}

func TestCompile(t *testing.T) {
	vip := netip.MustParseAddr("10.96.0.10")
	tests := []struct {
		name   string
		svcs   []*corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   []Entry
	}{
		{"ready endpoints are the backends, on the target port",
			[]*corev1.Service{svc("web", nil)},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.3"}, ep{addr: "10.244.2.4", ready: ptr(true)}, ep{addr: "10.244.1.9", ready: ptr(false)})},
			[]Entry{{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.3", "10.244.2.4")}}},
		{"terminating serving endpoints stand in only when none is ready",
			[]*corev1.Service{svc("web", nil)},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.5", ready: ptr(false), terminated: ptr(true)})},
			[]Entry{{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.5")}}},
		{"a headless Service has no entry",
			[]*corev1.Service{svc("web", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} })},
			nil, nil},
		{"slices of another Service do not count",
			[]*corev1.Service{svc("web", nil)},
			[]*discoveryv1.EndpointSlice{slice("db", httpPort, ep{addr: "10.244.1.3"})},
			[]Entry{{Addr: vip, Port: 80, Proto: 6}}},
		{"the slice port is matched by name and protocol",
			[]*corev1.Service{svc("web", func(s *corev1.Service) {
				s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})
			})},
			[]*discoveryv1.EndpointSlice{slice("web", append(httpPort, discoveryv1.EndpointPort{Name: ptr("dns"), Port: ptr(int32(1053)), Protocol: ptr(corev1.ProtocolUDP)}), ep{addr: "10.244.1.3"})},
			[]Entry{
				{Addr: vip, Port: 53, Proto: 17, Backends: []Backend{{netip.MustParseAddr("10.244.1.3"), 1053}}},
				{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.3")},
			}},
		{"ClientIP affinity defaults to three hours",
			[]*corev1.Service{svc("web", func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })},
			nil,
			[]Entry{{Addr: vip, Port: 80, Proto: 6, AffinitySeconds: 10800}}},
		{"internalTrafficPolicy Local keeps this node's endpoints",
			[]*corev1.Service{svc("web", func(s *corev1.Service) {
				s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
			})},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.3", node: "node-1"}, ep{addr: "10.244.2.4", node: "node-2"})},
			[]Entry{{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.3")}}},
		{"a NodePort is an entry for every node address, cluster-wide, whatever the traffic policies",
			[]*corev1.Service{svc("web", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeNodePort
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
				s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			})},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.3", node: "node-1"}, ep{addr: "10.244.2.4", node: "node-2"})},
			[]Entry{
				{Addr: netip.IPv4Unspecified(), Port: 30080, Proto: 6, Kind: NodePort, AffinitySeconds: 10800, Backends: on8080("10.244.1.3", "10.244.2.4")},
				{Addr: vip, Port: 80, Proto: 6, AffinitySeconds: 10800, Backends: on8080("10.244.1.3")},
			}},
		{"externalIPs and VIP-mode load-balancer IPs of the family are entries on the Service port",
			[]*corev1.Service{svc("web", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.Ports[0].NodePort = 30080
				s.Spec.ExternalIPs = []string{"192.0.2.7", "2001:db8::7"}
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
					{IP: "203.0.113.9"},
					{IP: "203.0.113.10", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
					{Hostname: "lb.example"},
				}
			})},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.3"})},
			[]Entry{
				{Addr: netip.IPv4Unspecified(), Port: 30080, Proto: 6, Kind: NodePort, Backends: on8080("10.244.1.3")},
				{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.3")},
				{Addr: netip.MustParseAddr("192.0.2.7"), Port: 80, Proto: 6, Kind: ExternalIP, Backends: on8080("10.244.1.3")},
				{Addr: netip.MustParseAddr("203.0.113.9"), Port: 80, Proto: 6, Kind: LoadBalancer, Backends: on8080("10.244.1.3")},
			}},
		{"load-balancer IPs are left to kube-proxy when it filters their sources",
			[]*corev1.Service{svc("web", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeLoadBalancer
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
				s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.9"}}
			})},
			nil,
			[]Entry{{Addr: vip, Port: 80, Proto: 6}}},
		{"a dual-stack NodePort has an entry per family, each with its family's endpoints",
			[]*corev1.Service{svc("web", func(s *corev1.Service) {
				s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:10:96::10")
				s.Spec.Ports[0].NodePort = 30080
			})},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.3"}), func() *discoveryv1.EndpointSlice {
				s := slice("web", httpPort, ep{addr: "fd00:10:244:1::3"})
				s.Name, s.AddressType = "web-v6", discoveryv1.AddressTypeIPv6
				return s
			}()},
			[]Entry{
				{Addr: netip.IPv4Unspecified(), Port: 30080, Proto: 6, Kind: NodePort, Backends: on8080("10.244.1.3")},
				{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.3")},
				{Addr: netip.IPv6Unspecified(), Port: 30080, Proto: 6, Kind: NodePort, Backends: on8080("fd00:10:244:1::3")},
				{Addr: netip.MustParseAddr("fd00:10:96::10"), Port: 80, Proto: 6, Backends: on8080("fd00:10:244:1::3")},
			}},
		{"UDP and SCTP NodePorts keep their protocol",
			[]*corev1.Service{svc("dns", func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{
					{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP},
					{Name: "sig", Port: 36412, NodePort: 30412, Protocol: corev1.ProtocolSCTP},
				}
			})},
			nil,
			[]Entry{
				{Addr: netip.IPv4Unspecified(), Port: 30053, Proto: 17, Kind: NodePort},
				{Addr: netip.IPv4Unspecified(), Port: 30412, Proto: 132, Kind: NodePort},
				{Addr: vip, Port: 53, Proto: 17},
				{Addr: vip, Port: 36412, Proto: 132},
			}},
		{"an externalIP that is another Service's ClusterIP does not take it over",
			[]*corev1.Service{
				svc("web", nil),
				svc("aaa", func(s *corev1.Service) {
					s.Spec.ClusterIP, s.Spec.ClusterIPs = "10.96.0.11", []string{"10.96.0.11"}
					s.Spec.ExternalIPs = []string{"10.96.0.10"}
				}),
			},
			[]*discoveryv1.EndpointSlice{slice("web", httpPort, ep{addr: "10.244.1.3"})},
			[]Entry{
				{Addr: vip, Port: 80, Proto: 6, Backends: on8080("10.244.1.3")},
				{Addr: netip.MustParseAddr("10.96.0.11"), Port: 80, Proto: 6},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Compile(tt.svcs, tt.slices, "node-1")
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestNodeAddrs(t *testing.T) {
	node := func(name, cidr string, addrs ...string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
		if cidr != "" {
			n.Spec.PodCIDRs = []string{cidr}
		}
		for _, a := range addrs {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
		return n
	}
	pod := func(ip string, hostNetwork bool) *corev1.Pod {
		return &corev1.Pod{Spec: corev1.PodSpec{HostNetwork: hostNetwork}, Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	addrs := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range s {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	tests := []struct {
		name  string
		nodes []*corev1.Node
		pods  []*corev1.Pod
		own   []netip.Addr
		want  []netip.Addr
	}{
		{"status addresses and the pod CIDR's VTEP and gateway of every node, hostnames skipped",
			[]*corev1.Node{node("node-2", "10.244.2.0/24", "198.18.0.12", "203.0.113.2"), node("node-1", "10.244.1.0/24", "198.18.0.11")},
			nil, nil,
			addrs("10.244.1.0", "10.244.1.1", "10.244.2.0", "10.244.2.1", "198.18.0.11", "198.18.0.12", "203.0.113.2")},
		{"both families of a dual-stack node",
			[]*corev1.Node{func() *corev1.Node {
				n := node("node-1", "10.244.1.0/24", "198.18.0.11", "fd00:198:18::11")
				n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, "fd00:10:244:1::/64")
				return n
			}()},
			nil, nil,
			addrs("10.244.1.0", "10.244.1.1", "198.18.0.11", "fd00:10:244:1::", "fd00:10:244:1::1", "fd00:198:18::11")},
		{"this node's own interfaces count, but not loopback or link-local",
			[]*corev1.Node{node("node-1", "", "198.18.0.11")},
			nil,
			addrs("198.18.0.11", "10.244.1.1", "127.0.0.1", "fe80::1", "::ffff:192.168.7.1"),
			addrs("10.244.1.1", "192.168.7.1", "198.18.0.11")},
		{"an address a pod holds is a pod's, not a gateway; a hostNetwork pod's is the node's",
			[]*corev1.Node{node("node-1", "10.244.1.0/24", "198.18.0.11")},
			[]*corev1.Pod{pod("10.244.1.1", false), pod("198.18.0.11", true)},
			nil,
			addrs("10.244.1.0", "198.18.0.11")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NodeAddrs(tt.nodes, tt.pods, tt.own)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
