package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// A compile given the previous Result must equal a compile from scratch,
// and take the previous rules only where nothing they depend on changed:
// the namespace's policy objects and the identities.
func TestCompileReusesOnlyWhatDidNotChange(t *testing.T) {
	frontend := podPeer(map[string]string{"role": "frontend"})
	backendPolicy := netpol("backend", selecting(map[string]string{"role": "backend"}),
		ingressRule(peers(frontend), port(corev1.ProtocolTCP, 6379)),
		egressRule(peers(nsPeer(map[string]string{"env": "dev"})), named(corev1.ProtocolTCP, "http")))
	blockPolicy := netpol("blocks", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
		CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}}), port(corev1.ProtocolTCP, 80)))
	badPolicy := netpol("bad", ingressRule(peers(networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: "Bogus"}}}})))
	// An ipBlock that does not parse is a problem of the index, which
	// names the policy's UID.
	badBlockPolicy := netpol("bad-block", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
		CIDR: "10.250.0.0/16", Except: []string{"nonsense"}}}), port(corev1.ProtocolTCP, 80)))
	badBlockPolicy.UID = "bad-block-1"
	// Every state shares the objects it does not change, as informer
	// caches do.
	base := cluster()
	base.Policies = []*networkingv1.NetworkPolicy{backendPolicy, blockPolicy, badPolicy, badBlockPolicy}
	start := func() State {
		s := base
		s.Pods = slices.Clone(base.Pods)
		s.Namespaces = slices.Clone(base.Namespaces)
		s.Policies = slices.Clone(base.Policies)
		return s
	}
	// reused: the server's rules come from the previous Result;
	// blocksReused: so do the ipBlocks' identities and indexes;
	// clientReused: so does the identity of the prod client's address.
	for _, tt := range []struct {
		name         string
		change       func(*State)
		reused       bool
		blocksReused bool
		clientReused bool
	}{
		{"nothing", func(*State) {}, true, true, true},
		{"a pod like another appears", func(s *State) {
			s.Pods = append(s.Pods, pod("prod", "client-2", netip.MustParseAddr("10.244.1.30"), map[string]string{"role": "frontend"},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
		}, true, true, true},
		{"a pod appears inside an except", func(s *State) {
			s.Pods = append(s.Pods, pod("prod", "client-3", netip.MustParseAddr("10.244.2.30"), map[string]string{"role": "frontend"},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080}))
		}, false, true, true},
		{"a peer's labels change", func(s *State) {
			s.Pods[1] = pod("prod", "client", clientIP, map[string]string{"role": "frontend", "tier": "web"},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080})
		}, false, true, false},
		{"a peer leaves the selector", func(s *State) {
			s.Pods[1] = pod("prod", "client", clientIP, map[string]string{"role": "batch"},
				corev1.ContainerPort{Name: "http", ContainerPort: 8080})
		}, false, true, false},
		{"a pod enters the selector", func(s *State) {
			s.Pods[2] = pod("prod", "other", otherIP, map[string]string{"role": "frontend"},
				corev1.ContainerPort{Name: "http", ContainerPort: 9090})
		}, false, true, true},
		{"a peer's named port changes", func(s *State) {
			s.Pods[3] = pod("dev", "client", devIP, map[string]string{"role": "frontend"}, corev1.ContainerPort{Name: "http", ContainerPort: 8081})
		}, false, true, true},
		// The index is kept while no policy's ipBlocks or named egress
		// ports change, and so is every pod address's identity.
		{"a policy's port is updated", func(s *State) {
			updated := backendPolicy.DeepCopy()
			*updated.Spec.Ingress[0].Ports[0].Port = intstr.FromInt32(6380)
			s.Policies[0] = updated
		}, false, true, true},
		{"a policy's peer is removed", func(s *State) {
			updated := backendPolicy.DeepCopy()
			updated.Spec.Ingress[0].From = nil
			s.Policies[0] = updated
		}, false, true, true},
		{"a policy without ipBlocks appears", func(s *State) {
			s.Policies = append(s.Policies, netpol("more", ingressRule(peers(frontend), port(corev1.ProtocolTCP, 7000))))
		}, false, true, true},
		{"a policy without ipBlocks goes", func(s *State) { s.Policies = slices.Delete(s.Policies, 2, 3) }, false, true, true},
		{"an ipBlock policy is made again under its name", func(s *State) {
			again := blockPolicy.DeepCopy()
			again.UID = "another"
			s.Policies[1] = again
		}, false, false, false},
		{"a policy with a bad ipBlock changes its port", func(s *State) {
			updated := badBlockPolicy.DeepCopy()
			*updated.Spec.Ingress[0].Ports[0].Port = intstr.FromInt32(81)
			s.Policies[3] = updated
		}, false, true, true},
		{"a policy with a bad ipBlock is made again under its name", func(s *State) {
			again := badBlockPolicy.DeepCopy()
			again.UID = "bad-block-2"
			s.Policies[3] = again
		}, false, false, false},
		{"a policy's ipBlock changes", func(s *State) {
			updated := blockPolicy.DeepCopy()
			updated.Spec.Ingress[0].From[0].IPBlock.Except = []string{"10.244.1.0/24"}
			s.Policies[1] = updated
		}, false, false, false},
		{"a policy with an ipBlock appears", func(s *State) {
			s.Policies = append(s.Policies, netpol("more", ingressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{
				CIDR: "10.244.1.0/24"}}), port(corev1.ProtocolTCP, 80))))
		}, false, false, false},
		{"a policy's named egress port changes", func(s *State) {
			updated := backendPolicy.DeepCopy()
			updated.Spec.Egress[0].Ports[0].Port = ptr(intstr.FromString("https"))
			s.Policies[0] = updated
		}, false, false, false},
		{"a policy with a named egress port goes", func(s *State) { s.Policies = s.Policies[1:] }, false, false, false},
		{"a namespace's labels change", func(s *State) {
			s.Namespaces[1] = ns("dev", map[string]string{"env": "staging"})
		}, false, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			alloc := identity.NewAllocator()
			prev := Compile(start(), alloc)
			next := start()
			tt.change(&next)
			// With the previous Result first, as the agent compiles: the
			// allocator still holds every key the previous compile used.
			next.Previous = &prev
			got := Compile(next, alloc)
			fresh := compileAfresh(t, next, alloc, got)
			if shared := reflect.ValueOf(got.comp.blocks.set).UnsafePointer() == reflect.ValueOf(prev.comp.blocks.set).UnsafePointer(); shared != tt.blocksReused {
				t.Errorf("previous ipBlock index reused: %v, want %v", shared, tt.blocksReused)
			}
			client, ok := prev.comp.podKeys[clientIP]
			if !ok || client.pod != base.Pods[1] {
				t.Fatal("the first compile has no identity for the client's address")
			}
			held := got.comp.podKeys[clientIP]
			if shared := held.pod == next.Pods[1] && held.ident == client.ident; shared != tt.clientReused {
				t.Errorf("previous identity of the client's address reused: %v, want %v", shared, tt.clientReused)
			}
			if d := gocmp.Diff(errorStrings(fresh.Problems), errorStrings(got.Problems)); d != "" {
				t.Errorf("problems (-from scratch +with the previous Result):\n%s", d)
			}
			for _, r := range got.Endpoints["server"].Ingress {
				if _, ok := got.Refs[r.Ref]; !ok {
					t.Errorf("rule %+v names a rule the Result does not know", r)
				}
			}
			was, is := prev.Endpoints["server"].Ingress, got.Endpoints["server"].Ingress
			if len(was) == 0 || len(is) == 0 {
				t.Fatalf("server has no ingress rules: %v then %v", was, is)
			}
			if shared := &was[0] == &is[0]; shared != tt.reused {
				t.Errorf("previous rules reused: %v, want %v", shared, tt.reused)
			}
			if got.comp.prev != nil || got.comp.s.Previous != nil {
				t.Error("the Result keeps the previous compile alive")
			}
			// Rule numbers the reused rules name stay allocated.
			again := Compile(next, alloc)
			if d := gocmp.Diff(got.Endpoints, again.Endpoints, equateAddrs); d != "" {
				t.Errorf("endpoints renumbered in the compile after (-then +now):\n%s", d)
			}
		})
	}
}

func errorStrings(errs []error) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

// A Previous older than the last compile may name identities the allocator
// has forgotten since: those are described again, under their new numbers.
func TestCompileWithAnOlderPreviousRenumbersForgottenIdentities(t *testing.T) {
	alloc := identity.NewAllocator()
	s := cluster()
	old := Compile(s, alloc)
	without := s
	without.Pods = s.Pods[:1] // the client's identity is forgotten
	Compile(without, alloc)
	s.Previous = &old
	got := Compile(s, alloc)
	compileAfresh(t, s, alloc, got)
	if was, is := old.IPCache[netip.PrefixFrom(clientIP, 32)], got.IPCache[netip.PrefixFrom(clientIP, 32)]; was == is {
		t.Errorf("the client's address kept identity %d, which the allocator had forgotten", was)
	}
}

// The agent programs a starting pod (CompileEndpoint on the last Result)
// while the next sync compiles with that Result as Previous. Run with -race:
// the two share only what neither modifies.
func TestCompileEndpointDuringTheNextCompile(t *testing.T) {
	s := cluster()
	s.Policies = []*networkingv1.NetworkPolicy{netpol("blocks", ingressRule(peers(
		networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}},
		podPeer(map[string]string{"role": "frontend"}))))}
	alloc := identity.NewAllocator()
	prev := Compile(s, alloc)
	newcomer := pod("prod", "newcomer", netip.MustParseAddr("10.244.2.40"), map[string]string{"role": "cache"})
	ep := Endpoint{ID: "newcomer", Ifindex: 9, Pod: newcomer, IPs: []netip.Addr{netip.MustParseAddr("10.244.2.40")}}

	next := s
	next.Previous = &prev
	done := make(chan error)
	go func() {
		_, _, err := prev.CompileEndpoint(ep)
		done <- err
	}()
	got := Compile(next, alloc)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	compileAfresh(t, next, alloc, got)
}

// compileAfresh compiles s without its Previous and reports where got, the
// compile with it, differs; it returns the fresh Result.
func compileAfresh(t *testing.T, s State, alloc *identity.Allocator, got Result) Result {
	t.Helper()
	s.Previous = nil
	fresh := Compile(s, alloc)
	if d := gocmp.Diff(fresh.Endpoints, got.Endpoints, equateAddrs); d != "" {
		t.Errorf("endpoints (-from scratch +with the previous Result):\n%s", d)
	}
	if d := gocmp.Diff(fresh.IPCache, got.IPCache); d != "" {
		t.Errorf("ipcache (-from scratch +with the previous Result):\n%s", d)
	}
	return fresh
}

// A run of the changes the agent sees, each compiled with the previous
// Result as the agent compiles, must give what a compile from scratch
// gives after every step: no reuse may leave a rule or an identity stale.
// The changes are drawn from a fixed seed, over scaleState's shapes (pod,
// namespace and ipBlock peers, named ports).
func TestCompileStepsEqualCompilesFromScratch(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 1))
	s := scaleState(300, 40)
	// Addresses a pod may take that are something else without it: this
	// node's, a remote node's and a /32 ipBlock.
	nodeIP, blockIP := netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("192.168.2.1")
	s.NodeIPs, s.RemoteNodeIPs = []netip.Addr{nodeIP}, []netip.Addr{netip.MustParseAddr("192.168.0.1")}
	s.Policies = append(s.Policies, netpol("to-one", inNamespace("ns-1"),
		egressRule(peers(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: blockIP.String() + "/32"}}))),
		// A named port toward every pod: its rules name each pod
		// identity that declares the port.
		netpol("to-http", inNamespace("ns-2"), egressRule(nil, named(corev1.ProtocolTCP, "http"))))
	alloc := identity.NewAllocator()
	prev := Compile(s, alloc)
	// squatter names the pod on one of those addresses, if any.
	var squatter string
	changes := []struct {
		name  string
		apply func(*State)
	}{
		{"pod label", func(s *State) {
			i := rng.IntN(len(s.Pods))
			p := s.Pods[i].DeepCopy()
			p.Labels["tier"] = []string{"web", "api", "db", "other"}[rng.IntN(4)]
			s.Pods[i] = p
			for j, ep := range s.Endpoints {
				if ep.Pod.Namespace == p.Namespace && ep.Pod.Name == p.Name {
					s.Endpoints[j].Pod = p
				}
			}
		}},
		{"namespace label", func(s *State) {
			i := rng.IntN(len(s.Namespaces))
			n := s.Namespaces[i].DeepCopy()
			n.Labels["team"] = fmt.Sprintf("t%d", rng.IntN(9))
			s.Namespaces[i] = n
		}},
		{"policy port", func(s *State) {
			i := rng.IntN(len(s.Policies))
			p := s.Policies[i].DeepCopy()
			for _, r := range p.Spec.Ingress {
				for k := range r.Ports {
					if r.Ports[k].Port != nil && r.Ports[k].Port.Type == intstr.Int {
						r.Ports[k].Port = ptr(intstr.FromInt32(int32(8000 + rng.IntN(3))))
					}
				}
			}
			s.Policies[i] = p
		}},
		{"policy peer removed", func(s *State) {
			i := rng.IntN(len(s.Policies))
			p := s.Policies[i].DeepCopy()
			if len(p.Spec.Ingress) > 0 {
				p.Spec.Ingress[0].From = nil
			}
			s.Policies[i] = p
		}},
		{"policy ipBlock", func(s *State) {
			i := rng.IntN(len(s.Policies))
			p := s.Policies[i].DeepCopy()
			for _, r := range p.Spec.Egress {
				for _, to := range r.To {
					if to.IPBlock != nil {
						to.IPBlock.CIDR = fmt.Sprintf("10.244.%d.0/24", rng.IntN(4))
					}
				}
			}
			s.Policies[i] = p
		}},
		{"policy deleted", func(s *State) {
			if len(s.Policies) > 1 {
				i := rng.IntN(len(s.Policies))
				s.Policies = slices.Delete(s.Policies, i, i+1)
			}
		}},
		{"pod address changed", func(s *State) {
			// Off the endpoints, whose addresses come from the CNI chain.
			i := 100 + rng.IntN(len(s.Pods)-100)
			p := s.Pods[i].DeepCopy()
			p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.245.%d.%d", rng.IntN(4), 1+rng.IntN(250))}}
			p.Status.PodIP = p.Status.PodIPs[0].IP
			s.Pods[i] = p
		}},
		{"pod re-created on its address", func(s *State) {
			// Deleted, then made again under another name with the same
			// address and other labels: a peer must get the new pod's
			// identity.
			i := 100 + rng.IntN(len(s.Pods)-100)
			p := s.Pods[i].DeepCopy()
			p.Name, p.UID = fmt.Sprintf("again-%d", rng.Int()), ktypes.UID(fmt.Sprintf("uid-%d", rng.Int()))
			p.Labels = map[string]string{"app": fmt.Sprintf("a%d", rng.IntN(20)), "tier": []string{"web", "api", "db", "other"}[rng.IntN(4)]}
			s.Pods = append(slices.Delete(s.Pods, i, i+1), p)
		}},
		{"pod address reused while its old pod lingers", func(s *State) {
			// host-local handed a finished pod's address to a new one.
			i := 100 + rng.IntN(len(s.Pods)-100)
			old := s.Pods[i].DeepCopy()
			old.Status.Phase = corev1.PodSucceeded
			s.Pods[i] = old
			p := old.DeepCopy()
			p.Name, p.UID = fmt.Sprintf("reuse-%d", rng.Int()), ktypes.UID(fmt.Sprintf("uid-%d", rng.Int()))
			p.Status.Phase = corev1.PodRunning
			p.CreationTimestamp.Time = p.CreationTimestamp.Time.Add(time.Minute)
			p.Labels = map[string]string{"tier": []string{"web", "api", "db"}[rng.IntN(3)]}
			s.Pods = append(s.Pods, p)
		}},
		{"pod address claimed twice", func(s *State) {
			// A new pod whose address a live pod's stale status still
			// shows: the newer pod takes it.
			i := 100 + rng.IntN(len(s.Pods)-100)
			p := s.Pods[i].DeepCopy()
			p.Name, p.UID = fmt.Sprintf("twin-%d", rng.Int()), ktypes.UID(fmt.Sprintf("uid-%d", rng.Int()))
			p.CreationTimestamp.Time = p.CreationTimestamp.Time.Add(time.Duration(1+rng.IntN(3)) * time.Minute)
			p.Labels = map[string]string{"tier": []string{"web", "api", "db", "other"}[rng.IntN(4)]}
			s.Pods = append(s.Pods, p)
		}},
		{"remote node address", func(s *State) {
			s.RemoteNodeIPs = []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + rng.IntN(3))})}
		}},
		{"pod deleted", func(s *State) {
			i := 100 + rng.IntN(len(s.Pods)-100)
			s.Pods = slices.Delete(s.Pods, i, i+1)
		}},
		{"pod finished", func(s *State) {
			i := 100 + rng.IntN(len(s.Pods)-100)
			p := s.Pods[i].DeepCopy()
			p.Status.Phase = corev1.PodFailed
			s.Pods[i] = p
		}},
		{"endpoint address changed", func(s *State) {
			// The CNI chain gave the interface another address, ahead of
			// the Pod's status.
			j := rng.IntN(len(s.Endpoints))
			s.Endpoints[j].IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 246, byte(rng.IntN(4)), byte(1 + rng.IntN(250))})}
		}},
		{"pod takes a node's or a block's address, or gives it back", func(s *State) {
			i := slices.IndexFunc(s.Pods, func(p *corev1.Pod) bool { return p.Name == squatter })
			for i < 0 || slices.ContainsFunc(s.Endpoints, func(ep Endpoint) bool { return ep.Pod.Name == s.Pods[i].Name }) {
				i, squatter = rng.IntN(len(s.Pods)), ""
			}
			p := s.Pods[i].DeepCopy()
			a := netip.AddrFrom4([4]byte{10, 245, byte(rng.IntN(4)), byte(1 + rng.IntN(250))})
			if squatter == "" {
				a = []netip.Addr{nodeIP, blockIP, s.RemoteNodeIPs[0]}[rng.IntN(3)]
				squatter = p.Name
			} else {
				squatter = ""
			}
			p.Status.PodIPs = []corev1.PodIP{{IP: a.String()}}
			s.Pods[i] = p
		}},
		{"a pod's endpoint registered", func(s *State) {
			// Its address from the CNI chain, ahead of its status: the
			// status's address is no longer the pod's.
			i := 100 + rng.IntN(len(s.Pods)-100)
			a := netip.AddrFrom4([4]byte{10, 248, byte(rng.IntN(4)), byte(1 + rng.IntN(250))})
			s.Endpoints = append(s.Endpoints, Endpoint{ID: s.Pods[i].Name + "-ep", Ifindex: 2000 + i, Pod: s.Pods[i], IPs: []netip.Addr{a}})
		}},
		{"a pod's endpoint removed", func(s *State) {
			j := rng.IntN(len(s.Endpoints))
			s.Endpoints = slices.Delete(s.Endpoints, j, j+1)
		}},
		{"pods listed in another order", func(s *State) {
			rng.Shuffle(len(s.Pods), func(i, j int) { s.Pods[i], s.Pods[j] = s.Pods[j], s.Pods[i] })
		}},
		{"local pod started", func(s *State) {
			n := rng.Int()
			a := netip.AddrFrom4([4]byte{10, 247, byte(rng.IntN(4)), byte(1 + rng.IntN(250))})
			p := pod(fmt.Sprintf("ns-%d", rng.IntN(50)), fmt.Sprintf("local-%d", n), a,
				map[string]string{"tier": []string{"web", "api", "db", "other"}[rng.IntN(4)]})
			s.Pods = append(s.Pods, p)
			s.Endpoints = append(s.Endpoints, Endpoint{ID: p.Name, Ifindex: 1000 + n%1000, Pod: p, IPs: []netip.Addr{a}})
		}},
		{"policy created", func(s *State) {
			n := fmt.Sprintf("new-%d", rng.Int())
			s.Policies = append(s.Policies, netpol(n, inNamespace(fmt.Sprintf("ns-%d", rng.IntN(50))),
				ingressRule(peers(podPeer(map[string]string{"tier": "db"})), port(corev1.ProtocolTCP, 5432))))
		}},
	}
	// Taking an address and giving it back are two steps: draw them
	// twice as often.
	squat := slices.IndexFunc(changes, func(ch struct {
		name  string
		apply func(*State)
	}) bool {
		return strings.HasPrefix(ch.name, "pod takes")
	})
	changes = append(changes, changes[squat])
	patched, diffReused := 0, 0
	for step := range 160 {
		ch := changes[rng.IntN(len(changes))]
		next := s
		next.Pods = slices.Clone(s.Pods)
		next.Namespaces = slices.Clone(s.Namespaces)
		next.Policies = slices.Clone(s.Policies)
		next.Endpoints = slices.Clone(s.Endpoints)
		ch.apply(&next)
		next.Previous = &prev
		got := Compile(next, alloc)
		if got.comp.patched {
			patched++
		}
		diffReused += got.comp.diffReused
		t.Run(fmt.Sprintf("%d %s", step, ch.name), func(t *testing.T) { compileAfresh(t, next, alloc, got) })
		s, prev = next, got
		s.Previous = nil
	}
	// The shortcut must have been taken, or the steps prove nothing of it.
	if patched < 40 {
		t.Errorf("%d of 160 steps patched the previous addresses, want at least 40", patched)
	}
	t.Logf("%d of 160 steps patched the previous addresses", patched)
	// Nor of the shapes reused across identities added or dropped.
	if diffReused < 100 {
		t.Errorf("%d shapes reused across a changed universe, want at least 100", diffReused)
	}
	t.Logf("%d shapes reused across a changed universe", diffReused)
}

// TestCompilePatchesWhateverTheListOrder: the agent lists pods,
// namespaces, nodes and endpoints from caches whose order changes from one
// sync to the next; a compile after nothing but a new order still patches
// the previous addresses (and gives what a compile from scratch gives).
func TestCompilePatchesWhateverTheListOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 1))
	s := scaleState(300, 40)
	s.NodeIPs = []netip.Addr{netip.MustParseAddr("192.168.1.1"), netip.MustParseAddr("10.244.9.0")}
	for n := range 5 {
		s.RemoteNodeIPs = append(s.RemoteNodeIPs, netip.AddrFrom4([4]byte{192, 168, 0, byte(1 + n)}))
	}
	alloc := identity.NewAllocator()
	prev := Compile(s, alloc)
	for i := range 5 {
		next := s
		next.Pods, next.Namespaces, next.Endpoints = shuffled(rng, s.Pods), shuffled(rng, s.Namespaces), shuffled(rng, s.Endpoints)
		next.RemoteNodeIPs, next.NodeIPs = shuffled(rng, s.RemoteNodeIPs), shuffled(rng, s.NodeIPs)
		next.Previous = &prev
		got := Compile(next, alloc)
		if !got.comp.patched {
			t.Errorf("compile %d walked every pod again", i)
		}
		compileAfresh(t, next, alloc, got)
		prev = got
	}
}

// shuffled returns a shuffled copy of l.
func shuffled[T any](rng *rand.Rand, l []T) []T {
	l = slices.Clone(l)
	rng.Shuffle(len(l), func(i, j int) { l[i], l[j] = l[j], l[i] })
	return l
}

// TestCompileAfterAThrownAwayCompileNumbersRulesAfresh: the controller
// compiles again from the same Previous when an endpoint was programmed
// during a compile. The first compile's Retain may forget the numbers of
// rules only Previous had; the second must not reuse Previous's rules
// under those numbers, which the allocator no longer holds.
func TestCompileAfterAThrownAwayCompileNumbersRulesAfresh(t *testing.T) {
	s := cluster()
	s.Policies = []*networkingv1.NetworkPolicy{netpol("backend", selecting(map[string]string{"role": "backend"}),
		ingressRule(peers(podPeer(map[string]string{"role": "frontend"})), port(corev1.ProtocolTCP, 6379)))}
	// A remote pod like the server keeps the server's identity in use.
	s.Pods = append(s.Pods, pod("prod", "server-2", netip.MustParseAddr("10.244.1.20"), map[string]string{"role": "backend"},
		corev1.ContainerPort{Name: "redis", ContainerPort: 6379},
		corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}))
	alloc := identity.NewAllocator()
	prev := Compile(s, alloc)
	// Thrown away: the server relabelled, so no policy selects it.
	other := s
	other.Pods = slices.Clone(s.Pods)
	server := s.Pods[0].DeepCopy()
	server.Labels = map[string]string{"role": "cache"}
	other.Pods[0] = server
	other.Endpoints = []Endpoint{{ID: "server", Ifindex: 7, Pod: server, IPs: []netip.Addr{serverIP}}}
	other.Previous = &prev
	forgets := alloc.Forgets()
	Compile(other, alloc)
	if alloc.Forgets() == forgets {
		t.Fatal("the thrown-away compile forgot no key: the case tests nothing")
	}
	s.Previous = &prev
	compileAfresh(t, s, alloc, Compile(s, alloc))
}
