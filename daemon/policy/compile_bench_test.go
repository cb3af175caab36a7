package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// scaleState is a cluster of pods spread over 50 namespaces with a few
// label sets each, policies of realistic shapes (default deny per
// namespace, selector allows with ports and ranges, ipBlocks), and 100 local
// endpoints: one node's share.
func scaleState(pods, policies int) State {
	var s State
	for n := range 50 {
		s.Namespaces = append(s.Namespaces, ns(fmt.Sprintf("ns-%d", n), map[string]string{"team": fmt.Sprintf("t%d", n%7)}))
	}
	for i := range pods {
		ip := netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(1 + i%250)})
		p := pod(fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("p-%d", i), ip,
			map[string]string{"app": fmt.Sprintf("a%d", i%20), "tier": []string{"web", "api", "db"}[i%3]},
			corev1.ContainerPort{Name: "http", ContainerPort: 8080})
		s.Pods = append(s.Pods, p)
		if i < 100 {
			s.Endpoints = append(s.Endpoints, Endpoint{ID: p.Name, Ifindex: 10 + i, Pod: p, IPs: []netip.Addr{ip}})
		}
	}
	for i := range policies {
		namespace := fmt.Sprintf("ns-%d", i%50)
		var p *networkingv1.NetworkPolicy
		switch i % 4 {
		case 0:
			p = netpol(fmt.Sprintf("deny-%d", i), inNamespace(namespace), types(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
		case 1:
			p = netpol(fmt.Sprintf("web-%d", i), inNamespace(namespace), selecting(map[string]string{"tier": "api"}),
				ingressRule(peers(podPeer(map[string]string{"tier": "web"})), port(corev1.ProtocolTCP, 8080), named(corev1.ProtocolTCP, "http")))
		case 2:
			p = netpol(fmt.Sprintf("team-%d", i), inNamespace(namespace), selecting(map[string]string{"app": fmt.Sprintf("a%d", i%20)}),
				ingressRule(peers(nsPeer(map[string]string{"team": fmt.Sprintf("t%d", i%7)})), portRange(30000, 32767)))
		case 3:
			// Three distinct blocks per policy, as the testbed benchmark's
			// filler policies have: every prefix is an identity of its own.
			var blocks []networkingv1.NetworkPolicyPeer
			for j := range 3 {
				n := i*3 + j
				blocks = append(blocks, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
					CIDR: fmt.Sprintf("172.%d.%d.0/24", 16+n/256%16, n%256), Except: []string{fmt.Sprintf("172.%d.%d.128/25", 16+n/256%16, n%256)}}})
			}
			p = netpol(fmt.Sprintf("out-%d", i), inNamespace(namespace), egressRule(blocks, port(corev1.ProtocolTCP, 443)))
		}
		s.Policies = append(s.Policies, p)
	}
	return s
}

// BenchmarkCompile measures a compile as the cluster grows: "full" from
// scratch (the agent's first sync), "again" with the last Result as
// Previous and nothing changed (a sync after a pod event that moves no
// rule), "policy-updated" with the last Result and one policy replaced by
// an equal new object (a sync after a policy update), "pod-relabelled"
// with the last Result and one pod, not a local one, replaced by a new
// object whose labels alternate between its own and a set no other pod
// has (a sync after a pod label change that adds or drops an identity). Run: go test -run '^$' -bench Compile ./daemon/policy
func BenchmarkCompile(b *testing.B) {
	for _, pods := range []int{1000, 5000, 10000} {
		for _, policies := range []int{100, 1000} {
			s := scaleState(pods, policies)
			b.Run(fmt.Sprintf("pods=%d/policies=%d/full", pods, policies), func(b *testing.B) {
				alloc := identity.NewAllocator()
				var res Result
				for b.Loop() {
					res = Compile(s, alloc)
				}
				reportSize(b, res)
			})
			b.Run(fmt.Sprintf("pods=%d/policies=%d/again", pods, policies), func(b *testing.B) {
				alloc := identity.NewAllocator()
				res := Compile(s, alloc)
				for b.Loop() {
					s.Previous = &res
					res = Compile(s, alloc)
				}
				reportSize(b, res)
			})
			b.Run(fmt.Sprintf("pods=%d/policies=%d/policy-updated", pods, policies), func(b *testing.B) {
				alloc := identity.NewAllocator()
				res := Compile(s, alloc)
				changed := s
				changed.Policies = slices.Clone(s.Policies)
				for b.Loop() {
					// A new object, as the informer delivers an update.
					changed.Policies[0] = changed.Policies[0].DeepCopy()
					changed.Previous = &res
					res = Compile(changed, alloc)
				}
				reportSize(b, res)
			})
			b.Run(fmt.Sprintf("pods=%d/policies=%d/pod-relabelled", pods, policies), func(b *testing.B) {
				alloc := identity.NewAllocator()
				res := Compile(s, alloc)
				changed := s
				changed.Pods = slices.Clone(s.Pods)
				i := len(s.Pods) / 2
				for n := 0; b.Loop(); n++ {
					p := s.Pods[i].DeepCopy()
					if n%2 == 0 {
						p.Labels["tier"] = "relabelled"
					}
					changed.Pods[i] = p
					changed.Previous = &res
					res = Compile(changed, alloc)
				}
				reportSize(b, res)
			})
		}
	}
}

func reportSize(b *testing.B, res Result) {
	rules := 0
	for _, ep := range res.Endpoints {
		rules += len(ep.Ingress) + len(ep.Egress)
	}
	b.ReportMetric(float64(len(res.IPCache)), "ipcache-entries")
	b.ReportMetric(float64(rules), "rules")
}
