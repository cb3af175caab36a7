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
