package policy

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// readConfPolicy decodes one of the example policies shipped in conf/,
// strictly, into namespace prod.
func readConfPolicy(t *testing.T, name string) *networkingv1.NetworkPolicy {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "conf", "policies", name))
	if err != nil {
		t.Fatal(err)
	}
	var p networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p.Namespace = "prod"
	return &p
}

// The seeds' examples, as shipped in conf/policies, mean what the API says.
func TestSeedExamples(t *testing.T) {
	web := map[string]string{"app": "web"}
	tests := []struct {
		file   string
		labels map[string]string // the subject's labels
		probes []probe
	}{
		{"default-deny.yaml", nil, []probe{in(clientIP, tcp, 80, false), out(clientIP, udp, 53, false), out(nodeIP, udp, 53, true)}},
		{"default-deny-ingress.yaml", nil, []probe{in(clientIP, tcp, 80, false), in(devIP, udp, 53, false), out(clientIP, tcp, 80, true)}},
		{"backend-access.yaml", map[string]string{"role": "backend"}, []probe{
			in(clientIP, tcp, 6379, true), in(clientIP, udp, 6379, false), in(otherIP, tcp, 6379, false), in(devIP, tcp, 6379, false)}},
		{"allow-external.yaml", web, []probe{in(outsideIP, tcp, 80, true), in(devIP, tcp, 80, true), in(outsideIP, udp, 80, false), in(outsideIP, tcp, 443, false)}},
		{"allow-dns.yaml", web, []probe{out(kubeDNSIP, udp, 53, true), out(kubeDNSIP, udp, 1053, true), out(kubeDNSIP, tcp, 53, false), out(clientIP, udp, 53, false), in(clientIP, tcp, 80, true)}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			s := withKubeDNS(cluster())
			s.Endpoints[0].Pod.Labels = tt.labels
			s.Policies = []*networkingv1.NetworkPolicy{readConfPolicy(t, tt.file)}
			res := Compile(s, identity.NewAllocator())
			for _, p := range tt.probes {
				if got := res.Allows("server", p.dir, p.peer, p.proto, p.port); got != p.want {
					t.Errorf("%s %s proto %d port %d: allowed=%v, want %v", []string{"from", "to"}[p.dir], p.peer, p.proto, p.port, got, p.want)
				}
			}
		})
	}
}

var kubeDNSIP = netip.MustParseAddr("10.244.2.53")

func withKubeDNS(s State) State {
	s.Namespaces = append(s.Namespaces, ns("kube-system", map[string]string{"kubernetes.io/metadata.name": "kube-system"}))
	s.Pods = append(s.Pods, pod("kube-system", "coredns", kubeDNSIP, map[string]string{"k8s-app": "kube-dns"}))
	return s
}

// The traps listed in the seeds' README: the API's meaning wins over the
// prose.
func TestSeedTraps(t *testing.T) {
	t.Run("label keys are case-sensitive: Tier does not match tier", func(t *testing.T) {
		s := cluster()
		s.Pods[1].Labels = map[string]string{"tier": "frontend"}
		s.Policies = []*networkingv1.NetworkPolicy{netpol("caps", ingressRule(peers(podPeer(map[string]string{"Tier": "frontend"}))))}
		res := Compile(s, identity.NewAllocator())
		if res.Allows("server", Ingress, clientIP, tcp, 80) {
			t.Error("Tier=frontend admitted a pod labelled tier=frontend")
		}
	})
	t.Run("a policy with no ingress rules denies intra-namespace traffic too", func(t *testing.T) {
		s := cluster()
		s.Policies = []*networkingv1.NetworkPolicy{netpol("deny", types(networkingv1.PolicyTypeIngress))}
		res := Compile(s, identity.NewAllocator())
		if res.Allows("server", Ingress, clientIP, tcp, 80) {
			t.Error("a pod of the same namespace got in")
		}
	})
}

func TestHostNetworkPodsArePeersByTheirNodeAddress(t *testing.T) {
	s := cluster()
	hostPod := pod("prod", "agent", nodeIP, map[string]string{"role": "frontend"})
	hostPod.Spec.HostNetwork = true
	s.Pods = append(s.Pods, hostPod)
	s.Policies = []*networkingv1.NetworkPolicy{netpol("fe", ingressRule(peers(podPeer(map[string]string{"role": "frontend"}))))}
	res := Compile(s, identity.NewAllocator())
	if res.IdentityOf(nodeIP) != identity.Host {
		t.Errorf("the node address has identity %d, want host", res.IdentityOf(nodeIP))
	}
	remote := netip.MustParseAddr("198.18.0.12")
	s.RemoteNodeIPs = []netip.Addr{remote}
	hostPod2 := pod("prod", "agent-2", remote, map[string]string{"role": "frontend"})
	hostPod2.Spec.HostNetwork = true
	s.Pods = append(s.Pods, hostPod2)
	res = Compile(s, identity.NewAllocator())
	if res.Allows("server", Ingress, remote, tcp, 80) {
		t.Error("a podSelector admitted a hostNetwork pod's node address")
	}
}

func TestIPv6AndDualStack(t *testing.T) {
	s := cluster()
	v6 := netip.MustParseAddr("fd00:10:244:1::11")
	s.Pods[1].Status.PodIPs = append(s.Pods[1].Status.PodIPs, corev1.PodIP{IP: v6.String()})
	s.Policies = []*networkingv1.NetworkPolicy{
		netpol("fe", ingressRule(peers(podPeer(map[string]string{"role": "frontend"})), port(corev1.ProtocolTCP, 80))),
		netpol("v6block", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "2001:db8::/32", Except: []string{"2001:db8:1::/48"}}}))),
	}
	res := Compile(s, identity.NewAllocator())
	for _, p := range []probe{
		in(clientIP, tcp, 80, true), in(v6, tcp, 80, true), in(v6, tcp, 81, false),
		in(netip.MustParseAddr("2001:db8:2::1"), udp, 9, true), in(netip.MustParseAddr("2001:db8:1::1"), udp, 9, false),
		in(netip.MustParseAddr("2001:db9::1"), udp, 9, false),
	} {
		if got := res.Allows("server", p.dir, p.peer, p.proto, p.port); got != p.want {
			t.Errorf("from %s proto %d port %d: allowed=%v, want %v", p.peer, p.proto, p.port, got, p.want)
		}
	}
	if _, ok := res.IPCache[netip.PrefixFrom(v6, 128)]; !ok {
		t.Error("the pod's IPv6 address is not in the ipcache")
	}
}
