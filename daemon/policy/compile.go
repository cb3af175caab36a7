package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// Endpoint is a local pod interface to compile policy for.
type Endpoint struct {
	ID      string
	Ifindex int
	// Pod is the endpoint's Pod as the API has it; nil while unknown.
	Pod *corev1.Pod
	// IPs are the addresses the CNI chain gave the interface; they may be
	// ahead of the Pod's status.
	IPs []netip.Addr
}

// State is everything the compiler reads.
type State struct {
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies (admin tiers).
	ClusterPolicies []*cnpv1.ClusterNetworkPolicy
	Endpoints       []Endpoint
	// NodeIPs are the addresses of this node, one peer (identity.Host):
	// NetworkPolicy always allows traffic with it, and a cluster policy's
	// nodes or networks peer that selects any of them selects it.
	// RemoteNodeIPs are the addresses of the other nodes.
	NodeIPs       []netip.Addr
	RemoteNodeIPs []netip.Addr
	// NodeLabels are the labels of the node each remote node address
	// belongs to, which cluster policies' nodes peers select;
	// LocalNodeLabels are this node's.
	NodeLabels      map[netip.Addr]map[string]string
	LocalNodeLabels map[string]string
	// Previous, when set, is the last Result compiled with the same
	// allocator: the rules of pods alike are taken from it where nothing
	// they depend on changed, instead of compiled again.
	Previous *Result
}

// PortRange is an inclusive port range in host byte order; {0, 0} is all.
type PortRange struct{ First, Last uint16 }

// Protocol numbers used in rules; 0 is every protocol.
const (
	ProtoAny  uint8 = 0
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Rule allows traffic with one peer identity on a protocol and ports; with
// Deny it drops it. Deny rules appear only in a direction cluster policies
// judge, whose rules are read as the datapath's longest-prefix lookup reads
// them (Result.Verdict): a rule for a port range wins over one for its
// whole protocol, which wins over one for the whole peer.
type Rule struct {
	Peer  uint32
	Proto uint8
	Ports PortRange
	Deny  bool
	// Ref is the policy rule that allows, a key of Result.Refs. Its number
	// stays the same across compiles, so that an unrelated change does not
	// rewrite every map entry that names the rule.
	Ref uint32
}

// EndpointPolicy is one endpoint's compiled policy.
type EndpointPolicy struct {
	ID       string
	Ifindex  int
	Identity uint32
	// IPs are the endpoint's addresses, the only sources the datapath
	// lets it send from.
	IPs             []netip.Addr
	IngressIsolated bool
	EgressIsolated  bool
	Ingress         []Rule
	Egress          []Rule
	// Policies names (namespace/name) every policy that selects the pod.
	Policies []string
	// ClusterPolicies names the cluster policies with rules for the pod;
	// IngressTiered and EgressTiered are the directions they judge.
	ClusterPolicies             []string
	IngressTiered, EgressTiered bool
}

// RuleRef names the policy rule behind a Rule.
type RuleRef struct {
	Policy    string // namespace/name; a cluster policy's name alone
	Direction string // "ingress" or "egress"
	Index     int
	// Tier is set for a cluster policy's rule: "Admin" or "Baseline";
	// Action is its action as judged, Name its name if it has one.
	Tier   string `json:",omitempty"`
	Action string `json:",omitempty"`
	Name   string `json:",omitempty"`
}

// Result is the compiled state.
type Result struct {
	IPCache   map[netip.Prefix]uint32
	Endpoints map[string]EndpointPolicy
	// Unknown lists endpoints whose Pod the API has not shown yet: they get
	// no endpoint entry, so the datapath drops their traffic.
	Unknown []string
	Refs    map[uint32]RuleRef
	// Problems are policy parts that could not be understood. Each such
	// part matches nothing; the policy still isolates the pods it selects.
	Problems []error
	// ClusterProblems lists, per cluster policy name, what of it could not
	// be understood; a policy without an entry was compiled whole.
	ClusterProblems map[string][]string

	// comp is the compiler that made the Result, kept for CompileEndpoint.
	comp *compiler
}

// ClusterPolicyObjects returns the cluster policies the Result was compiled
// from, in judging order.
func (r *Result) ClusterPolicyObjects() []*cnpv1.ClusterNetworkPolicy {
	if r.comp == nil {
		return nil
	}
	return r.comp.cnps
}

// Compile computes the desired datapath state. alloc keeps identity numbers
// stable across calls.
func Compile(s State, alloc *identity.Allocator) Result {
	c := newCompiler(s, alloc)
	if p := s.Previous; p != nil && p.comp != nil {
		p.comp.mu.Lock()
		// The node's own labels and addresses decide which cluster
		// policy peers select identity.Host, outside the universe. A
		// compile from the same Previous that was thrown away may have
		// made the allocator forget the numbers of Previous's rules:
		// reused, they would name rules the allocator no longer holds.
		if alloc.Forgets() == p.comp.allocForgets && slices.Equal(p.comp.cnps, c.cnps) &&
			maps.Equal(p.comp.s.LocalNodeLabels, c.s.LocalNodeLabels) && slices.Equal(p.comp.s.NodeIPs, c.s.NodeIPs) {
			if slices.Equal(p.comp.universe, c.universe) {
				c.prev, c.prevGen = p.comp, p.comp.universeGen
			} else if diff, ok := c.universeDiff(p.comp); ok {
				c.prev, c.prevGen, c.diff = p.comp, p.comp.universeGen, diff
			}
		}
		p.comp.mu.Unlock()
	}
	// Neither the compiler nor its Result may keep the previous one: each
	// would keep every compiler before it.
	c.s.Previous = nil
	defer func() { c.prev = nil }()
	res := Result{IPCache: c.ipcache, Endpoints: map[string]EndpointPolicy{}}
	for _, ep := range s.Endpoints {
		if ep.Pod == nil {
			res.Unknown = append(res.Unknown, ep.ID)
			continue
		}
		res.Endpoints[ep.ID] = c.endpoint(ep)
	}
	sort.Strings(res.Unknown)
	// CompileEndpoint may number more rules: the Result keeps its own.
	res.Refs = maps.Clone(c.refs)
	res.Problems = dedupeErrors(c.problems)
	res.ClusterProblems = map[string][]string{}
	for k, v := range c.cnpProblems {
		v = slices.Clone(v)
		slices.Sort(v)
		res.ClusterProblems[k] = slices.Compact(v)
	}
	res.comp = c
	// Most keys are the blocks': look there first.
	alloc.Retain(c.blocks.keys, c.usedKeys, c.addr.keys)
	c.allocForgets = alloc.Forgets()
	return res
}

// CompileEndpoint compiles the policy of a local endpoint the Result does
// not hold yet, such as a pod that is starting, against the cluster as the
// Result saw it, and returns it with the ipcache entries of the endpoint's
// addresses. The Result itself does not change: the next Compile, which
// has the endpoint, also gives other endpoints the rules that concern it.
// It may run concurrently with a Compile that has r as its Previous.
func (r *Result) CompileEndpoint(ep Endpoint) (EndpointPolicy, map[netip.Prefix]uint32, error) {
	if r.comp == nil {
		return EndpointPolicy{}, nil, errors.New("result was not compiled here")
	}
	if ep.Pod == nil {
		return EndpointPolicy{}, nil, fmt.Errorf("endpoint %s: pod unknown", ep.ID)
	}
	if len(ep.IPs) == 0 {
		return EndpointPolicy{}, nil, fmt.Errorf("endpoint %s: no addresses", ep.ID)
	}
	c := r.comp
	c.mu.Lock()
	defer c.mu.Unlock()
	// A namespace's labels are part of its pods' identities.
	if _, ok := c.nsLabels[ep.Pod.Namespace]; !ok {
		return EndpointPolicy{}, nil, fmt.Errorf("endpoint %s: namespace %s not compiled yet", ep.ID, ep.Pod.Namespace)
	}
	entries := map[netip.Prefix]uint32{}
	for _, a := range ep.IPs {
		known := len(c.identities)
		id := c.podIdentity(ep.Pod, a)
		entries[netip.PrefixFrom(a, a.BitLen())] = id
		if len(c.identities) > known {
			// A new identity: rules whose peers select the pod itself
			// must name it, so the memoized peer lists are stale.
			c.indexIdentity(id)
			c.peerIDs = map[peerKey][]uint32{}
			c.cnpPeers = map[any]cnpPeerMemo{}
			c.shapes = map[string]shape{}
			c.universe = append(c.universe, id)
			slices.Sort(c.universe)
			c.universeGen++
		}
	}
	// The node's own addresses keep their identity whatever claims them.
	for _, a := range c.s.NodeIPs {
		delete(entries, netip.PrefixFrom(a, a.BitLen()))
	}
	out := c.endpoint(ep)
	a := ep.IPs[0]
	if id, ok := entries[netip.PrefixFrom(a, a.BitLen())]; ok {
		out.Identity = id
	}
	return out, entries, nil
}

type compiler struct {
	// mu guards the memos CompileEndpoint changes after Compile, against
	// the next Compile reusing them.
	mu         sync.Mutex
	s          State
	alloc      *identity.Allocator
	nsLabels   map[string]map[string]string
	nsKeys     map[string]string // namespace -> its labels as a string
	ipcache    map[netip.Prefix]uint32
	identities map[uint32]*ident
	// sharedIdentities is set while identities is addr.identities.
	sharedIdentities bool
	// usedKeys are the allocator keys the compile used, but, once
	// newCompiler returns, those of addr.keys.
	usedKeys map[string]bool
	refs     map[uint32]RuleRef
	ruleNums map[ruleKey]uint32
	// shapes memoizes the policy of pods alike (shapeKey).
	shapes map[string]shape
	// universe lists every identity, sorted. Identity numbers are stable
	// per description, so an equal list means equal peers for every rule.
	universe []uint32
	// prev is the previous compiler when its universe is this one's: its
	// shapes are reused where their namespace's policies are the same.
	prev    *compiler
	prevGen uint64 // prev's universeGen when its universe was this one
	// diff, when set, are the pod identities in one of prev's universe
	// and this one's but not both: prev's shapes are reused only where
	// no peer of their namespace's policies selects any of them
	// (independent memoizes that per namespace).
	diff        []*ident
	independent map[string]bool
	// diffReused counts the shapes reused across a diff (tests read it).
	diffReused int
	// universeGen counts CompileEndpoint's additions to universe.
	universeGen uint64
	nsPolicies  map[string][]*networkingv1.NetworkPolicy
	problems    []error
	// podKeys are the claimants addAddresses found for pod addresses and
	// the identities it gave them, for the next compile; prevPodKeys are
	// the previous compile's, while it runs. Neither changes once
	// addAddresses is done: CompileEndpoint, which may run at the same
	// time as the next compile, does not record its pods.
	podKeys, prevPodKeys map[netip.Addr]heldKey
	// checked holds the previous compile's identities prevPodIdentity has
	// found still allocated under their key in this compile, with that key:
	// thousands of pod addresses share a few hundred identities, and
	// hashing a ~120-byte key twice per address was most of a sync's work.
	checked map[*ident]string
	// addr is what the pass over the addresses left, for the next compile
	// to patch (addrs.go). Never modified once newCompiler returns.
	addr addrState
	// allocForgets is the allocator's Forgets after this compile's Retain.
	allocForgets uint64
	// patched is set when patchAddresses made the ipcache (tests read it).
	patched bool
	// blocks is what the policies' ipBlocks and named ports give, shared
	// with the compilers before and after this one while the policies stay
	// the same objects. Read-only.
	blocks *blockIndex
	parsed map[*metav1.LabelSelector]labels.Selector
	// Indexes for peer matching, so a rule looks only at the identities
	// that can match it: pod identities for selectors; for an ipBlock,
	// the prefix identities inside it (blocks.inside) and the addresses
	// it contains.
	podIDs       []uint32
	blockMembers map[netip.Prefix][]uint32
	// peerIDs memoizes each rule's matching identities: they do not
	// depend on the endpoint the rule is compiled for.
	peerIDs map[peerKey][]uint32

	// cnps are the cluster policies in judging order (sortCNPs).
	cnps []*cnpv1.ClusterNetworkPolicy
	// cnpPeers memoizes each cluster policy rule's peers, keyed by the rule.
	cnpPeers     map[any]cnpPeerMemo
	cnpBrokenWhy map[*cnpv1.ClusterNetworkPolicy]string
	cnpProblems  map[string][]string
	// nodeIDs are the identities of remote node addresses.
	nodeIDs []uint32
}

type namedPort struct {
	name  string
	proto uint8
}

// ident describes the addresses behind one identity.
type ident struct {
	id uint32
	// key is the allocator key the identity was described by: the pods
	// that share the identity keep this one copy of it (podKey.key).
	key       string
	pod       bool // pod addresses (not a node, not an ipBlock prefix)
	namespace string
	nsLabels  labels.Set
	podLabels labels.Set
	// blocks are the ipBlock prefixes that contain these addresses.
	blocks []netip.Prefix
	// ports resolves the named ports egress rules use.
	ports map[namedPort]uint16
	// prefix is set for an ipBlock prefix's own identity.
	prefix netip.Prefix
	// node is set for a remote node's addresses, with its labels.
	node       bool
	nodeLabels labels.Set
}

func newCompiler(s State, alloc *identity.Allocator) *compiler {
	// Listers return policies in no particular order. Where two policies
	// allow the same traffic, the rule named is the first one's: sorting
	// makes that, and so each map entry, the same in every compile.
	s.Policies = slices.Clone(s.Policies)
	slices.SortFunc(s.Policies, comparePolicies)
	// The next compile compares its pods with these: a caller that
	// reuses its slice must not change them.
	s.Pods = slices.Clone(s.Pods)
	var prev *compiler
	if s.Previous != nil {
		prev = s.Previous.comp
	}
	c := &compiler{
		s:          s,
		alloc:      alloc,
		nsLabels:   map[string]map[string]string{},
		nsKeys:     map[string]string{},
		usedKeys:   map[string]bool{},
		refs:       map[uint32]RuleRef{},
		ruleNums:   map[ruleKey]uint32{},
		shapes:     map[string]shape{},
		nsPolicies: map[string][]*networkingv1.NetworkPolicy{},
		parsed:     map[*metav1.LabelSelector]labels.Selector{},
		peerIDs:    map[peerKey][]uint32{},

		cnps:         sortCNPs(s.ClusterPolicies),
		cnpPeers:     map[any]cnpPeerMemo{},
		cnpBrokenWhy: map[*cnpv1.ClusterNetworkPolicy]string{},
		cnpProblems:  map[string][]string{},
	}
	if prev != nil && prev.alloc == alloc {
		c.blocks = prev.blocks.reuse(s.Policies, c.cnps)
	}
	patchable := c.blocks != nil
	if patchable {
		c.prevPodKeys = prev.podKeys
	} else {
		c.blocks = newBlockIndex(s.Policies, c.cnps, alloc)
	}
	c.problems = slices.Clone(c.blocks.problems)
	for _, ns := range s.Namespaces {
		c.nsLabels[ns.Name] = ns.Labels
	}
	c.patched = patchable && c.patchAddresses(prev)
	if !c.patched {
		c.addAddresses()
	}
	c.prevPodKeys, c.checked = nil, nil
	// The rules' compile adds keys and CompileEndpoint identities, which
	// the next compile must not find in what addAddresses left: the keys
	// go to a set of their own, the identities to a copy made on the
	// first (identity), the universe to a copy made by append. Copying
	// them all here cost ~0.13 MB kept at 10 000 x 1 000, and two clones.
	c.identities, c.sharedIdentities = c.addr.identities, true
	c.usedKeys = map[string]bool{}
	c.universe = slices.Clip(c.addr.universe)
	c.index()
	for _, pol := range s.Policies {
		c.nsPolicies[pol.Namespace] = append(c.nsPolicies[pol.Namespace], pol)
	}
	c.checkCNPs()
	return c
}

// index builds the peer-matching indexes over the identities of pods and
// nodes; the blocks' own identities are indexed in c.blocks.
func (c *compiler) index() {
	c.blockMembers = map[netip.Prefix][]uint32{}
	for id, in := range c.identities {
		if !in.prefix.IsValid() {
			c.indexIdentity(id)
		}
	}
}

// indexIdentity indexes the identity of a pod or a node.
func (c *compiler) indexIdentity(id uint32) {
	in := c.identities[id]
	if in.pod {
		c.podIDs = append(c.podIDs, id)
	}
	if in.node {
		c.nodeIDs = append(c.nodeIDs, id)
	}
	for _, b := range in.blocks {
		c.blockMembers[b] = append(c.blockMembers[b], id)
	}
}

func allPeers(pol *networkingv1.NetworkPolicy) []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for _, r := range pol.Spec.Ingress {
		out = append(out, r.From...)
	}
	for _, r := range pol.Spec.Egress {
		out = append(out, r.To...)
	}
	return out
}

// addAddresses fills the ipcache: pod IPs, node IPs and ipBlock prefixes,
// walking every pod; patchAddresses is the shortcut when few changed.
func (c *compiler) addAddresses() {
	// The blocks' entries first, so that an address of a pod or a node
	// that is also a block takes the pod's or the node's identity.
	c.ipcache = make(map[netip.Prefix]uint32, len(c.blocks.ipcache)+len(c.s.Pods)+len(c.s.RemoteNodeIPs)+len(c.s.NodeIPs))
	maps.Copy(c.ipcache, c.blocks.ipcache)
	c.identities = maps.Clone(c.blocks.identities)
	c.addr.nodes = map[netip.Addr]uint32{}
	c.addr.refs = map[uint32]int{}
	for _, a := range c.s.RemoteNodeIPs {
		id := c.nodeIdentity(a)
		c.addr.nodes[a] = id
		c.addr.refs[id]++
		c.ipcache[netip.PrefixFrom(a, a.BitLen())] = id
	}
	c.podKeys = make(map[netip.Addr]heldKey, len(c.s.Pods))
	// The claimants are kept in podKeys alone: a second map of 10 000
	// addresses, kept for the next compile, cost ~0.6 MB at 10 000 pods.
	winners := c.claimants()
	// Most addresses keep the previous compile's identity. The rest are
	// described in claimOrder, so that the identities new keys get do not
	// depend on the map's order either; sorting only those, not every pod
	// (10 000 of them), keeps a sync after one change cheap.
	var fresh []podAddr
	for a, pod := range winners {
		pa := podAddr{pod, a}
		k, ok := c.prevPodIdentity(pa)
		if !ok {
			fresh = append(fresh, pa)
			continue
		}
		c.podKeys[a] = heldKey{pod, k}
		c.addr.refs[k.ident.id]++
		c.ipcache[netip.PrefixFrom(a, a.BitLen())] = k.ident.id
	}
	slices.SortFunc(fresh, comparePodAddrs)
	for _, pa := range fresh {
		k := c.podKeyOf(pa.pod, pa.addr)
		c.podKeys[pa.addr] = heldKey{pa.pod, k}
		c.addr.refs[k.ident.id]++
		c.ipcache[netip.PrefixFrom(pa.addr, pa.addr.BitLen())] = k.ident.id
	}
	// The node's own addresses last: they are always allowed, whatever else
	// claims them.
	for _, a := range c.s.NodeIPs {
		c.ipcache[netip.PrefixFrom(a, a.BitLen())] = identity.Host
	}
	c.addr.identities, c.addr.keys = c.identities, c.usedKeys
	c.addr.universe = slices.Sorted(maps.Keys(c.identities))
}

// nodeIdentity returns the identity of remote node address a, describing
// it if the compile has none yet.
func (c *compiler) nodeIdentity(a netip.Addr) uint32 {
	sig := c.blocks.of(a)
	// A node's labels are part of its identity only when a cluster
	// policy could select by them: otherwise every remote node
	// shares one.
	var lbl labels.Set
	if len(c.cnps) > 0 {
		lbl = c.s.NodeLabels[a]
	}
	key := "node|" + prefixList(sig)
	if lbl != nil {
		key += "|" + labelString(lbl)
	}
	if in := c.identities[c.alloc.ID(key)]; in != nil {
		c.usedKeys[key] = true
		return in.id
	}
	return c.identity(key, &ident{blocks: sig, node: true, nodeLabels: lbl})
}

// comparePodAddrs orders pod addresses by claimOrder, then address.
func comparePodAddrs(x, y podAddr) int {
	return cmp.Or(claimOrder(x.pod, y.pod), x.addr.Compare(y.addr))
}

// comparePolicies orders policies as the compiler reads them: by
// namespace, then name.
func comparePolicies(a, b *networkingv1.NetworkPolicy) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// claimOrder orders the pods claiming an address, first the winner: a
// live pod (not Succeeded nor Failed) before a finished one, then the
// newest (the pod created last holds what the IPAM handed out last),
// then by namespace, name and UID, so that the result never depends on
// the order the pods come in. Two objects of one pod (an endpoint's and
// the informer's, across an update) tie on all of these: the newer
// resourceVersion wins, then the labels decide, so that the order of the
// endpoints does not.
func claimOrder(a, b *corev1.Pod) int {
	finished := func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	}
	if fa, fb := finished(a), finished(b); fa != fb {
		if fa {
			return 1
		}
		return -1
	}
	if c := b.CreationTimestamp.Time.Compare(a.CreationTimestamp.Time); c != 0 {
		return c
	}
	if c := cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name), strings.Compare(string(a.UID), string(b.UID))); c != 0 {
		return c
	}
	if c := compareVersions(b.ResourceVersion, a.ResourceVersion); c != 0 {
		return c
	}
	return strings.Compare(labelString(a.Labels), labelString(b.Labels))
}

// compareVersions orders resourceVersions. They are opaque to clients, but
// the API server's are decimal numbers, which this orders as numbers; any
// others it still orders, one way whatever the order they come in.
func compareVersions(a, b string) int {
	return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b))
}

// claimants maps each pod address to the pod that holds it. A local
// endpoint's IPs come from the CNI chain and win over the Pod's status,
// which lags behind. Two pods may claim one address: a finished pod's
// endpoint the runtime has not torn down yet while host-local gave the
// address to a new pod, or a stale status. The first claim in claimOrder
// takes it, whatever the order the pods come in, so that a peer never gets
// the identity of the pod the address used to belong to. The claims go
// straight into the one map: this runs over every pod in every sync.
func (c *compiler) claimants() map[netip.Addr]*corev1.Pod {
	out := make(map[netip.Addr]*corev1.Pod, len(c.s.Pods))
	// Every claim of a contested address is kept, for patchAddresses.
	c.addr.contested = map[netip.Addr][]*corev1.Pod{}
	claim := func(pod *corev1.Pod, a netip.Addr) {
		w, ok := out[a]
		if !ok {
			out[a] = pod
			return
		}
		if _, ok := c.addr.contested[a]; !ok {
			c.addr.contested[a] = []*corev1.Pod{w}
		}
		c.addr.contested[a] = append(c.addr.contested[a], pod)
		if claimOrder(pod, w) < 0 {
			out[a] = pod
		}
	}
	local, eps, unique := c.localClaims()
	for _, ep := range c.s.Endpoints {
		if ep.Pod != nil {
			for _, a := range ep.IPs {
				claim(ep.Pod, a)
			}
		}
	}
	pods := make(map[*corev1.Pod]struct{}, len(c.s.Pods))
	for _, pod := range c.s.Pods {
		pods[pod] = struct{}{}
		for _, a := range statusClaims(pod, local) {
			claim(pod, a)
		}
	}
	// Endpoints under one ID twice, or a pod twice, and the next compile
	// could not tell what changed: it walks every pod again.
	if unique && len(pods) == len(c.s.Pods) {
		c.addr.local, c.addr.endpoints, c.addr.patchable = local, eps, true
	}
	return out
}

// nsName names a pod by namespace and name without joining them.
type nsName struct{ namespace, name string }

// localClaims returns the local endpoints that have a Pod, by ID, and
// their pods' names: those pods' addresses are their endpoints', not their
// status's. unique is false when two such endpoints share an ID.
func (c *compiler) localClaims() (local map[nsName]bool, eps map[string]Endpoint, unique bool) {
	local, eps, unique = map[nsName]bool{}, map[string]Endpoint{}, true
	for _, ep := range c.s.Endpoints {
		if ep.Pod != nil {
			if _, dup := eps[ep.ID]; dup {
				unique = false
			}
			eps[ep.ID] = ep
			local[nsName{ep.Pod.Namespace, ep.Pod.Name}] = true
		}
	}
	return local, eps, unique
}

// statusClaims lists the addresses pod's status claims, in its order: none
// for a local pod (its endpoint's claim instead), a hostNetwork pod (a
// peer by its node's address only) or a finished one (it no longer owns
// them).
func statusClaims(pod *corev1.Pod, local map[nsName]bool) []netip.Addr {
	if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	if local[nsName{pod.Namespace, pod.Name}] {
		return nil
	}
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// podIdentity returns the identity of pod's address a, describing it if
// the compile has none yet.
func (c *compiler) podIdentity(pod *corev1.Pod, a netip.Addr) uint32 {
	return c.podKeyOf(pod, a).ident.id
}

// podKeyOf is podIdentity with the allocator key it went by.
func (c *compiler) podKeyOf(pod *corev1.Pod, a netip.Addr) podKey {
	blocks := c.blocks.of(a)
	var ports []string
	for np := range c.blocks.egressPort {
		if n, ok := resolvePort(pod, np); ok {
			ports = append(ports, fmt.Sprintf("%s/%d=%d", np.name, np.proto, n))
		}
	}
	sort.Strings(ports)
	nsKey := c.nsKey(pod.Namespace)
	key := strings.Join([]string{"pod", pod.Namespace, nsKey, labelString(pod.Labels),
		prefixList(blocks), strings.Join(ports, ",")}, "|")
	// Most pods share their identity with others: describe it once.
	if in := c.identities[c.alloc.ID(key)]; in != nil {
		if in.key == key {
			// Kept in podKeys for every pod address: ~10 000 strings of
			// ~120 bytes at 10 000 pods, mostly equal.
			key = in.key
		}
		c.usedKeys[key] = true
		return podKey{nsKey: nsKey, key: key, ident: in}
	}
	in := &ident{
		pod:       true,
		namespace: pod.Namespace,
		nsLabels:  labels.Set(c.nsLabels[pod.Namespace]),
		podLabels: labels.Set(pod.Labels),
		blocks:    blocks,
		ports:     map[namedPort]uint16{},
	}
	for np := range c.blocks.egressPort {
		if n, ok := resolvePort(pod, np); ok {
			in.ports[np] = n
		}
	}
	c.identity(key, in)
	return podKey{nsKey: nsKey, key: key, ident: in}
}

// podKey is what podKeyOf found for one pod address. It depends on the Pod
// object, the address, the namespace's labels (nsKey) and the blocks alone,
// so the next compile takes it over when all four are the same: working it
// out is most of a compile that reuses the rest.
type podKey struct {
	nsKey string
	key   string
	ident *ident // never modified once made
}

// heldKey is an address's claimant and the podKey it got there.
type heldKey struct {
	pod *corev1.Pod
	podKey
}

type podAddr struct {
	pod  *corev1.Pod
	addr netip.Addr
}

// prevPodIdentity returns the identity the previous compile gave pod's
// address a, false if anything it depends on changed since.
func (c *compiler) prevPodIdentity(pa podAddr) (podKey, bool) {
	held, ok := c.prevPodKeys[pa.addr]
	if !ok || held.pod != pa.pod || held.nsKey != c.nsKey(pa.pod.Namespace) {
		return podKey{}, false
	}
	k := held.podKey
	// The allocator's table does not change for a key it holds until
	// Retain, after the compile: one check per identity and key is enough.
	if key, ok := c.checked[k.ident]; ok && key == k.key {
		return k, true
	}
	if c.alloc.ID(k.key) != k.ident.id {
		return podKey{}, false
	}
	if c.checked == nil {
		c.checked = map[*ident]string{}
	}
	c.checked[k.ident] = k.key
	c.usedKeys[k.key] = true
	if c.identities[k.ident.id] == nil {
		c.identities[k.ident.id] = k.ident
	}
	return k, true
}

// nsKey is namespace ns's labels as a string.
func (c *compiler) nsKey(ns string) string {
	k, ok := c.nsKeys[ns]
	if !ok {
		k = labelString(c.nsLabels[ns])
		c.nsKeys[ns] = k
	}
	return k
}

func (c *compiler) identity(key string, id *ident) uint32 {
	id.id, id.key = c.alloc.ID(key), key
	c.usedKeys[key] = true
	if c.sharedIdentities {
		c.identities, c.sharedIdentities = maps.Clone(c.identities), false
	}
	c.identities[id.id] = id
	return id.id
}

func (c *compiler) problem(pol *networkingv1.NetworkPolicy, format string, args ...any) {
	c.problems = append(c.problems, policyProblem(pol, format, args...))
}

func policyProblem(pol *networkingv1.NetworkPolicy, format string, args ...any) error {
	return &Problem{Namespace: pol.Namespace, Name: pol.Name, UID: string(pol.UID), Message: fmt.Sprintf(format, args...)}
}

// Problem is a part of a NetworkPolicy the compiler could not understand:
// the agent reports it as an Event on the policy (daemon/policyevents).
type Problem struct {
	Namespace, Name, UID string
	Message              string
}

func (p *Problem) Error() string {
	return fmt.Sprintf("networkpolicy %s/%s: %s", p.Namespace, p.Name, p.Message)
}

// dedupeErrors drops repeated messages, keeping the first of each.
func dedupeErrors(errs []error) []error {
	seen := map[string]bool{}
	return slices.DeleteFunc(errs, func(e error) bool {
		dup := seen[e.Error()]
		seen[e.Error()] = true
		return dup
	})
}

func labelString(s labels.Set) string { return labels.FormatLabels(s) }

func prefixList(ps []netip.Prefix) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.String())
	}
	return b.String()
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
