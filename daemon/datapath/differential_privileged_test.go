package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/policy"
	"github.com/palisade-cni/palisade/tests/kernel"
	"github.com/palisade-cni/palisade/tests/packet"
)

// TestPrivilegedEngineAndDatapathAgree is a differential and property test.
// For each seed it builds a random cluster and a random sequence of policy
// and label changes, compiles each state and writes it through one Writer
// (as the agent does, incrementally), then sends random first packets
// through the programs. The verdict must equal what the engine says of the
// final state (policy.Result.Allows): so the maps hold exactly the final
// compile, nothing stale from earlier states, and the programs read them as
// the engine means them. PALISADE_DIFF_SEED=N replays one seed.
func TestPrivilegedEngineAndDatapathAgree(t *testing.T) {
	seeds := make([]uint64, 0, 60)
	if s := os.Getenv("PALISADE_DIFF_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, n)
	} else {
		for i := range cap(seeds) {
			seeds = append(seeds, uint64(i+1))
		}
	}
	const locals = 3
	netns, ifindexes := kernel.NetNSWithVeths(t, locals)
	// One set of maps for every seed, each seed with a new Writer: like an
	// agent restarting onto a changed cluster, it must leave nothing of the
	// previous seed behind.
	objs := load(t)
	scratch := load(t) // the final state of each seed, written from scratch
	sport := uint16(20000)
	budget := time.Now().Add(60 * time.Second)
	for _, seed := range seeds {
		if time.Now().After(budget) {
			t.Logf("stopped after seed %d: time budget spent", seed-1)
			break
		}
		w, err := New(objs)
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(seed, 0))
		alloc := identity.NewAllocator()
		c := newCluster(r, ifindexes, &sport)
		var res policy.Result
		for step := range 6 {
			c.mutate(r)
			res = policy.Compile(c.state(), alloc)
			if err := w.Apply(&res, uint64(step+1)); err != nil {
				t.Fatalf("seed %d step %d: apply: %v", seed, step, err)
			}
			keep := map[int]bool{}
			for _, ep := range res.Endpoints {
				keep[ep.Ifindex] = true
			}
			if err := w.Prune(keep); err != nil {
				t.Fatal(err)
			}
		}
		if err := writeFromScratch(scratch, &res); err != nil {
			t.Fatal(err)
		}
		if diff := gocmp.Diff(dump(t, scratch), dump(t, objs)); diff != "" {
			t.Fatalf("seed %d: incrementally written maps differ from a from-scratch write of the final state (-scratch +incremental):\n%s", seed, diff)
		}
		err = netns.Do(func(ns.NetNS) error { return c.probe(r, objs, &res, 120) })
		if err != nil {
			t.Fatalf("seed %d (replay with PALISADE_DIFF_SEED=%d): %v\npolicies:\n%s", seed, seed, err, c.describe())
		}
	}
}

// writeFromScratch writes res into objs with a new Writer, as an agent
// starting afresh would.
func writeFromScratch(objs *bpf.Objects, res *policy.Result) error {
	w, err := New(objs)
	if err != nil {
		return err
	}
	if err := w.Apply(res, 1); err != nil {
		return err
	}
	keep := map[int]bool{}
	for _, ep := range res.Endpoints {
		keep[ep.Ifindex] = true
	}
	return w.Prune(keep)
}

// mapDump is the content of the maps, revisions aside.
type mapDump struct {
	IPCache   map[netip.Prefix]uint32
	Endpoints map[int]uint32 // ifindex -> flags
	Ingress   map[int][]bpf.PolicyEntry
	Egress    map[int][]bpf.PolicyEntry
}

func dump(t *testing.T, objs *bpf.Objects) mapDump {
	t.Helper()
	d := mapDump{Endpoints: map[int]uint32{}, Ingress: map[int][]bpf.PolicyEntry{}, Egress: map[int][]bpf.PolicyEntry{}}
	var err error
	if d.IPCache, err = objs.IPCache(); err != nil {
		t.Fatal(err)
	}
	eps, err := objs.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	for ifindex, info := range eps {
		d.Endpoints[ifindex] = info.Flags
		for _, dir := range []bpf.Direction{bpf.ToPod, bpf.FromPod} {
			entries, err := objs.Policy(ifindex, dir)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(entries, func(a, b bpf.PolicyEntry) int { return compareKey(a.Key, b.Key) })
			if dir == bpf.ToPod {
				d.Ingress[ifindex] = entries
			} else {
				d.Egress[ifindex] = entries
			}
		}
	}
	return d
}

// cluster is a random cluster: namespaces, pods (the first ones local
// endpoints) and policies.
type cluster struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	policies   []*networkingv1.NetworkPolicy
	ifindexes  []int
	// sport numbers first packets, unique across seeds so that no packet
	// is taken for the reply of an earlier one.
	sport *uint16
}

var (
	nsNames   = []string{"ns-a", "ns-b", "ns-c"}
	appValues = []string{"web", "db", "api"}
	worldIPs  = []netip.Addr{netip.MustParseAddr("192.0.2.5"), netip.MustParseAddr("192.0.2.200"), netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("10.244.1.250")}
	cidrs     = []string{"10.244.1.0/28", "10.244.1.0/24", "192.0.2.0/24", "0.0.0.0/0", "192.0.2.0/25"}
	excepts   = []string{"10.244.1.8/29", "10.244.1.16/28", "192.0.2.0/26", "10.244.1.12/32"}
	ports     = []uint16{1, 53, 79, 80, 81, 8080, 9000}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func randomLabels(r *rand.Rand) map[string]string {
	l := map[string]string{}
	if r.IntN(4) > 0 {
		l["app"] = pick(r, appValues)
	}
	if r.IntN(2) == 0 {
		l["tier"] = pick(r, []string{"front", "back"})
	}
	return l
}

func newCluster(r *rand.Rand, ifindexes []int, sport *uint16) *cluster {
	c := &cluster{ifindexes: ifindexes, sport: sport}
	for _, n := range nsNames {
		c.namespaces = append(c.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"env": pick(r, []string{"prod", "dev"})}}})
	}
	for i := range 9 {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: pick(r, nsNames), Name: fmt.Sprintf("pod-%d", i), Labels: randomLabels(r)},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: int32(pick(r, []uint16{80, 8080})), Protocol: corev1.ProtocolTCP},
				{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				{Name: "s", ContainerPort: 9000, Protocol: corev1.ProtocolSCTP},
			}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.244.1.%d", 2+3*i)}}},
		}
		c.pods = append(c.pods, p)
	}
	return c
}

// mutate changes the cluster a little: a policy added, replaced or
// removed, a pod or namespace relabelled.
func (c *cluster) mutate(r *rand.Rand) {
	switch r.IntN(5) {
	case 0, 1:
		c.policies = append(c.policies, randomPolicy(r, len(c.policies)))
	case 2:
		if len(c.policies) > 0 {
			c.policies[r.IntN(len(c.policies))] = randomPolicy(r, r.IntN(100)+100)
		}
	case 3:
		c.pods[r.IntN(len(c.pods))].Labels = randomLabels(r)
	case 4:
		if len(c.policies) > 1 {
			i := r.IntN(len(c.policies))
			c.policies = append(c.policies[:i], c.policies[i+1:]...)
		} else {
			c.namespaces[r.IntN(len(c.namespaces))].Labels["env"] = pick(r, []string{"prod", "dev"})
		}
	}
}

func randomSelector(r *rand.Rand) *metav1.LabelSelector {
	switch r.IntN(4) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{"app": pick(r, appValues)}}
	case 2:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: "tier", Operator: pick(r, []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn}), Values: []string{"front"},
		}}}
	}
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
		Key: "app", Operator: pick(r, []metav1.LabelSelectorOperator{metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}),
	}}}
}

func randomPeers(r *rand.Rand) []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPeer
		switch r.IntN(4) {
		case 0:
			p.PodSelector = randomSelector(r)
		case 1:
			p.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"env": pick(r, []string{"prod", "dev"})}}
		case 2:
			p.PodSelector, p.NamespaceSelector = randomSelector(r), randomSelector(r)
		case 3:
			p.IPBlock = &networkingv1.IPBlock{CIDR: pick(r, cidrs)}
			if r.IntN(2) == 0 {
				p.IPBlock.Except = []string{pick(r, excepts)}
			}
		}
		out = append(out, p)
	}
	return out
}

func randomPorts(r *rand.Rand) []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if r.IntN(4) > 0 {
			p.Protocol = new(corev1.Protocol)
			*p.Protocol = pick(r, []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP})
		}
		switch r.IntN(4) {
		case 0:
		case 1:
			v := intstr.FromString(pick(r, []string{"http", "dns", "s", "nope"}))
			p.Port = &v
		default:
			n := int32(pick(r, ports))
			v := intstr.FromInt32(n)
			p.Port = &v
			if r.IntN(3) == 0 {
				end := n + int32(r.IntN(8200))
				if end > 65535 {
					end = 65535
				}
				p.EndPort = &end
			}
		}
		out = append(out, p)
	}
	return out
}

func randomPolicy(r *rand.Rand, n int) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: pick(r, nsNames), Name: fmt.Sprintf("pol-%d", n)}}
	p.Spec.PodSelector = *randomSelector(r)
	p.Spec.PolicyTypes = pick(r, [][]networkingv1.PolicyType{nil, {networkingv1.PolicyTypeIngress}, {networkingv1.PolicyTypeEgress},
		{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}})
	for range r.IntN(3) {
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randomPeers(r), Ports: randomPorts(r)})
	}
	for range r.IntN(3) {
		p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randomPeers(r), Ports: randomPorts(r)})
	}
	return p
}

func (c *cluster) state() policy.State {
	s := policy.State{Pods: c.pods, Namespaces: c.namespaces, Policies: c.policies,
		NodeIPs: []netip.Addr{netip.MustParseAddr("10.244.1.1")}}
	for i, ifindex := range c.ifindexes {
		p := c.pods[i]
		s.Endpoints = append(s.Endpoints, policy.Endpoint{ID: p.Name, Ifindex: ifindex, Pod: p, IPs: []netip.Addr{netip.MustParseAddr(p.Status.PodIPs[0].IP)}})
	}
	return s
}

// probe sends n random first packets and compares each verdict with the
// engine's.
func (c *cluster) probe(r *rand.Rand, objs *bpf.Objects, res *policy.Result, n int) error {
	for range n {
		i := r.IntN(len(c.ifindexes))
		subject := netip.MustParseAddr(c.pods[i].Status.PodIPs[0].IP)
		var peer netip.Addr
		if r.IntN(3) == 0 {
			peer = pick(r, worldIPs)
		} else {
			j := r.IntN(len(c.pods))
			if j == i {
				continue
			}
			peer = netip.MustParseAddr(c.pods[j].Status.PodIPs[0].IP)
		}
		proto := pick(r, []uint8{packet.TCP, packet.UDP, packet.SCTP, packet.ICMP})
		port := pick(r, ports)
		*c.sport++
		p := packet.Packet{Proto: proto, SrcPort: *c.sport, DstPort: port, TCPFlags: packet.SYN}
		if proto == packet.ICMP {
			p.ICMPType, port = 8, *c.sport // echo: the identifier stands in both ports
		}
		dir, d := policy.Ingress, bpf.ToPod
		p.Src, p.Dst = peer, subject
		if r.IntN(2) == 0 {
			dir, d = policy.Egress, bpf.FromPod
			p.Src, p.Dst = subject, peer
		}
		want := res.Allows(c.pods[i].Name, dir, peer, proto, port)
		got, _, err := objs.Classify(d, c.ifindexes[i], p.Frame())
		if err != nil {
			return err
		}
		if (got == bpf.VerdictPass) != want {
			return fmt.Errorf("%s of %s (%s), peer %s, proto %d port %d: datapath passes=%v, engine allows=%v",
				d, c.pods[i].Name, subject, peer, proto, port, got == bpf.VerdictPass, want)
		}
	}
	return nil
}

func (c *cluster) describe() string {
	s := ""
	for _, p := range c.pods {
		s += fmt.Sprintf("  pod %s/%s %v %s\n", p.Namespace, p.Name, p.Labels, p.Status.PodIPs[0].IP)
	}
	for _, n := range c.namespaces {
		s += fmt.Sprintf("  namespace %s %v\n", n.Name, n.Labels)
	}
	for _, p := range c.policies {
		s += fmt.Sprintf("  policy %s/%s %+v\n", p.Namespace, p.Name, p.Spec)
	}
	return s
}
