package inspect

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/policy"
)

// View is a consistent snapshot of what the agent knows.
//
// The flow reader asks for a View at every verdict event and palisadectl
// at every request; the agent keeps the last one. At 10 000 pods its
// indexes by name and by identity cost ~2 MB that flows never read. Only
// the index by address, which every flow reads, is built up front; the
// others are built the first time they are asked for.
type View struct {
	Result    *policy.Result
	Pods      []*corev1.Pod
	Policies  []*networkingv1.NetworkPolicy
	Endpoints []agentapi.Endpoint // the local registry
	Node      string

	podByIP map[netip.Addr]*corev1.Pod

	byName  sync.Once
	podByNN map[types.NamespacedName]*corev1.Pod

	byID   sync.Once
	idPods map[uint32][]*corev1.Pod
	idPfx  map[uint32][]netip.Prefix
}

// NewView indexes a snapshot. res must be non-nil.
func NewView(res *policy.Result, pods []*corev1.Pod, pols []*networkingv1.NetworkPolicy, eps []agentapi.Endpoint, node string) *View {
	v := &View{Result: res, Pods: pods, Policies: pols, Endpoints: eps, Node: node,
		podByIP: make(map[netip.Addr]*corev1.Pod, len(pods))}
	local := make(map[types.NamespacedName]*corev1.Pod, len(eps))
	for _, ep := range eps {
		local[types.NamespacedName{Namespace: ep.PodNamespace, Name: ep.PodName}] = nil
	}
	for _, p := range pods {
		nn := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		if _, ok := local[nn]; ok {
			local[nn] = p
		}
		if p.Spec.HostNetwork {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				v.podByIP[a] = p
			}
		}
	}
	// A local endpoint's addresses come from the CNI chain and may be ahead
	// of the Pod's status, as in the compiler.
	for _, ep := range eps {
		if p := local[types.NamespacedName{Namespace: ep.PodNamespace, Name: ep.PodName}]; p != nil {
			for _, a := range ep.IPs {
				v.podByIP[a] = p
			}
		}
	}
	return v
}

// indexByName builds the index of pods by namespace/name.
func (v *View) indexByName() {
	v.byName.Do(func() {
		v.podByNN = make(map[types.NamespacedName]*corev1.Pod, len(v.Pods))
		for _, p := range v.Pods {
			v.podByNN[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}] = p
		}
	})
}

// indexByIdentity builds the indexes of pods and prefixes by identity.
func (v *View) indexByIdentity() {
	v.byID.Do(func() {
		v.idPods, v.idPfx = map[uint32][]*corev1.Pod{}, map[uint32][]netip.Prefix{}
		for pfx, id := range v.Result.IPCache {
			v.idPfx[id] = append(v.idPfx[id], pfx)
			if pfx.IsSingleIP() {
				if p := v.podByIP[pfx.Addr()]; p != nil && !slices.Contains(v.idPods[id], p) {
					v.idPods[id] = append(v.idPods[id], p)
				}
			}
		}
		for id := range v.idPods {
			sort.Slice(v.idPods[id], func(i, j int) bool { return name(v.idPods[id][i]) < name(v.idPods[id][j]) })
		}
		for id := range v.idPfx {
			slices.SortFunc(v.idPfx[id], func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		}
	})
}

func name(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

// PodByIP returns the pod holding address a, if any.
func (v *View) PodByIP(a netip.Addr) *corev1.Pod { return v.podByIP[a.Unmap()] }

// Pod returns the pod named namespace/name.
func (v *View) Pod(nn string) *corev1.Pod {
	ns, n, ok := strings.Cut(nn, "/")
	if !ok {
		return nil
	}
	v.indexByName()
	return v.podByNN[types.NamespacedName{Namespace: ns, Name: n}]
}

// Endpoint returns the local endpoint of pod namespace/name.
func (v *View) Endpoint(nn string) (agentapi.Endpoint, policy.EndpointPolicy, bool) {
	for _, ep := range v.Endpoints {
		if ep.PodNamespace+"/"+ep.PodName != nn {
			continue
		}
		if pol, ok := v.Result.Endpoints[ep.ID]; ok {
			return ep, pol, true
		}
	}
	return agentapi.Endpoint{}, policy.EndpointPolicy{}, false
}

// EndpointByIfindex returns the local endpoint on a host-side interface.
func (v *View) EndpointByIfindex(ifindex int) (agentapi.Endpoint, bool) {
	for _, ep := range v.Endpoints {
		if ep.HostIfIndex == ifindex {
			return ep, true
		}
	}
	return agentapi.Endpoint{}, false
}

// Ref names the policy rule behind a rule reference ("" and false for 0).
func (v *View) Ref(ref uint32) (policy.RuleRef, bool) {
	r, ok := v.Result.Refs[ref]
	return r, ok
}

// RuleName is "ingress[0]" for a RuleRef.
func RuleName(r policy.RuleRef) string { return fmt.Sprintf("%s[%d]", r.Direction, r.Index) }

// Describe says what the addresses behind identity id are.
func (v *View) Describe(id uint32) string {
	switch id {
	case identity.Any:
		return "any peer"
	case identity.Host:
		return "this node"
	case identity.World:
		return "an address outside the cluster (world)"
	case identity.RemoteNode:
		return "another node"
	}
	v.indexByIdentity()
	if pods := v.idPods[id]; len(pods) > 0 {
		p := pods[0]
		var names []string
		for _, q := range pods {
			names = append(names, q.Name)
		}
		lbl := labels.FormatLabels(p.Labels)
		return fmt.Sprintf("pods {%s} in namespace %s (%s)", lbl, p.Namespace, strings.Join(names, ", "))
	}
	pfx := v.idPfx[id]
	if len(pfx) == 0 {
		return fmt.Sprintf("identity %d (no addresses now)", id)
	}
	var s []string
	for _, p := range pfx {
		s = append(s, p.String())
	}
	if len(pfx) == 1 && !pfx[0].IsSingleIP() {
		return "ipBlock " + s[0]
	}
	return "addresses " + strings.Join(s, ", ")
}

// DescribeAddr says what address a is to the agent.
func (v *View) DescribeAddr(a netip.Addr) string {
	if p := v.PodByIP(a); p != nil {
		return fmt.Sprintf("pod %s {%s}", name(p), labels.FormatLabels(p.Labels))
	}
	return v.Describe(v.Result.IdentityOf(a))
}

// ProtoName names a protocol number as the API does.
func ProtoName(p uint8) string {
	switch p {
	case policy.ProtoTCP:
		return "TCP"
	case policy.ProtoUDP:
		return "UDP"
	case policy.ProtoSCTP:
		return "SCTP"
	case policy.ProtoAny:
		return "any"
	}
	return fmt.Sprintf("proto-%d", p)
}

// ParseProto is the inverse of ProtoName for the API's protocols; "" is TCP.
func ParseProto(s string) (uint8, error) {
	switch strings.ToUpper(s) {
	case "", "TCP":
		return policy.ProtoTCP, nil
	case "UDP":
		return policy.ProtoUDP, nil
	case "SCTP":
		return policy.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: use TCP, UDP or SCTP", s)
}

func portsText(r policy.PortRange) string {
	switch {
	case r == (policy.PortRange{}):
		return "all"
	case r.First == r.Last:
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// MapReader reads back a local endpoint's policy map from the kernel.
type MapReader func(ifindex int, d policy.Direction) ([]agentapi.MapEntry, error)

// PodPolicy is the compiled policy of local pod nn. entries may be nil, in
// which case no map entries are shown.
func (v *View) PodPolicy(nn string, entries MapReader) (*agentapi.PodPolicy, error) {
	ep, pol, ok := v.Endpoint(nn)
	if !ok {
		return nil, v.notLocal(nn)
	}
	out := &agentapi.PodPolicy{Pod: nn, EndpointID: ep.ID, Identity: pol.Identity, Revision: ep.Revision}
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		dp := &out.Ingress
		rules, isolated := pol.Ingress, pol.IngressIsolated
		if d == policy.Egress {
			dp, rules, isolated = &out.Egress, pol.Egress, pol.EgressIsolated
		}
		dp.Isolated = isolated
		dp.Policies = v.isolating(pol, d)
		var mapEntries []agentapi.MapEntry
		if entries != nil && isolated {
			var err error
			if mapEntries, err = entries(ep.HostIfIndex, d); err != nil {
				return nil, fmt.Errorf("read %s policy map of %s: %w", dirName(d), nn, err)
			}
		}
		for _, r := range rules {
			ar := v.allowRule(d, r)
			for _, e := range mapEntries {
				if e.Identity == r.Peer && e.Rule == r.Ref && (r.Proto == policy.ProtoAny || e.Protocol == r.Proto) {
					ar.Entries = append(ar.Entries, e)
				}
			}
			dp.Rules = append(dp.Rules, ar)
		}
	}
	return out, nil
}

func (v *View) allowRule(d policy.Direction, r policy.Rule) agentapi.AllowRule {
	ar := agentapi.AllowRule{Identity: r.Peer, Peer: v.Describe(r.Peer), Protocol: ProtoName(r.Proto), Ports: portsText(r.Ports)}
	if ref, ok := v.Ref(r.Ref); ok {
		ar.Policy, ar.Rule = ref.Policy, RuleName(ref)
	}
	where := "from"
	if d == policy.Egress {
		where = "to"
	}
	what := "every protocol and port"
	if r.Proto != policy.ProtoAny {
		what = ProtoName(r.Proto) + " port " + ar.Ports
		if ar.Ports == "all" {
			what = "every " + ProtoName(r.Proto) + " port"
		}
	}
	ar.Text = fmt.Sprintf("allow %s %s %s on %s (%s %s)", dirName(d), where, ar.Peer, what, ar.Policy, ar.Rule)
	return ar
}

// isolating lists the policies that isolate the pod in direction d.
func (v *View) isolating(pol policy.EndpointPolicy, d policy.Direction) []string {
	out := []string{}
	for _, name := range pol.Policies {
		if np := v.policy(name); np != nil {
			in, eg := policyTypes(np)
			if (d == policy.Ingress && in) || (d == policy.Egress && eg) {
				out = append(out, name)
			}
		}
	}
	return out
}

func (v *View) policy(nn string) *networkingv1.NetworkPolicy {
	for _, p := range v.Policies {
		if p.Namespace+"/"+p.Name == nn {
			return p
		}
	}
	return nil
}

// policyTypes is the API's defaulting of spec.policyTypes, as the compiler
// applies it.
func policyTypes(pol *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(pol.Spec.PolicyTypes) == 0 {
		return true, len(pol.Spec.Egress) > 0
	}
	for _, t := range pol.Spec.PolicyTypes {
		ingress = ingress || t == networkingv1.PolicyTypeIngress
		egress = egress || t == networkingv1.PolicyTypeEgress
	}
	return ingress, egress
}

func dirName(d policy.Direction) string {
	if d == policy.Egress {
		return "egress"
	}
	return "ingress"
}

// ErrNotLocal means a pod does not run on this node (or is unknown).
type ErrNotLocal struct{ Msg string }

func (e *ErrNotLocal) Error() string { return e.Msg }

func (v *View) notLocal(nn string) error {
	p := v.Pod(nn)
	switch {
	case p == nil:
		return &ErrNotLocal{fmt.Sprintf("pod %s does not exist (as namespace/name); palisadectl endpoints lists this node's pods", nn)}
	case p.Spec.NodeName != v.Node:
		return &ErrNotLocal{fmt.Sprintf("pod %s runs on node %s, not on %s; ask the agent on %s", nn, p.Spec.NodeName, v.Node, p.Spec.NodeName)}
	}
	return &ErrNotLocal{fmt.Sprintf("pod %s has no programmed endpoint on this node yet", nn)}
}
