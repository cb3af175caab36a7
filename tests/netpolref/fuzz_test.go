package netpolref

import (
	"fmt"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/policy"
)

// FuzzCompilerAgainstReference compiles a generated cluster with
// daemon/policy and asks both the compiled result (Result.Allows, which
// walks the rules as the datapath walks its maps) and the reference about
// every (subject pod, peer, direction, protocol, port): any disagreement
// fails, with the cluster's policies in the message.
func FuzzCompilerAgainstReference(f *testing.F) {
	for _, seed := range [][]byte{
		{},
		{1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 3, 1, 0, 2},
		{2, 1, 1, 2, 0, 4, 1, 2, 3, 0, 1, 2, 2, 3, 3, 0, 2, 2, 1, 2, 2, 0, 1, 1, 2, 2, 2, 2},
		[]byte("palisade policy compiler vs the API text"),
		[]byte("\x02\x01\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19"),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Generate(data)
		if msg := Disagreement(c); msg != "" {
			t.Fatal(msg)
		}
	})
}

// Disagreement compiles c and compares every verdict with the reference;
// it returns the first disagreement described, or "".
func Disagreement(c Cluster) string {
	s := policy.State{Pods: c.Pods, Namespaces: c.Namespaces, Policies: c.Policies, NodeIPs: c.NodeIPs}
	for _, p := range c.Pods {
		s.Endpoints = append(s.Endpoints, policy.Endpoint{ID: p.Namespace + "/" + p.Name, Pod: p, IPs: []netip.Addr{addrOf(p.Status.PodIPs[0].IP)}})
	}
	res := policy.Compile(s, identity.NewAllocator())
	peers := append([]netip.Addr{NodeIP}, Externals...)
	for _, p := range c.Pods {
		peers = append(peers, addrOf(p.Status.PodIPs[0].IP))
	}
	for _, subject := range c.Pods {
		id := subject.Namespace + "/" + subject.Name
		self := addrOf(subject.Status.PodIPs[0].IP)
		for _, peer := range peers {
			if peer == self {
				continue // a pod's traffic with itself never leaves it
			}
			for _, proto := range ProbeProtos {
				for _, port := range ProbePorts {
					for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
						got := res.Allows(id, d, peer, proto, port)
						want := c.Ingress(subject, peer, proto, port)
						if d == policy.Egress {
							want = c.Egress(subject, peer, proto, port)
						}
						if got != want {
							return fmt.Sprintf("%s %s %s proto %d port %d: compiler allows=%v, reference %v\nproblems: %v\n%s",
								id, []string{"from", "to"}[d], peer, proto, port, got, want, res.Problems, describe(c))
						}
					}
				}
			}
		}
	}
	return ""
}

func addrOf(s string) netip.Addr { return netip.MustParseAddr(s) }

// describe prints the cluster for a failure message.
func describe(c Cluster) string {
	out := "namespaces:\n"
	for _, n := range c.Namespaces {
		out += fmt.Sprintf("  %s %v\n", n.Name, n.Labels)
	}
	out += "pods:\n"
	for _, p := range c.Pods {
		out += fmt.Sprintf("  %s/%s %s %v ports %v\n", p.Namespace, p.Name, p.Status.PodIPs[0].IP, p.Labels, p.Spec.Containers[0].Ports)
	}
	for _, p := range c.Policies {
		b, _ := yaml.Marshal(struct {
			Namespace string                         `json:"namespace"`
			Name      string                         `json:"name"`
			Spec      networkingv1.NetworkPolicySpec `json:"spec"`
		}{p.Namespace, p.Name, p.Spec})
		out += "---\n" + string(b)
	}
	return out
}
