package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// apiTimeout bounds one group of API calls made by the runner.
const apiTimeout = 20 * time.Second

// objectTimeout bounds a step that makes or removes pods or namespaces,
// and the reset after a case: CNI ADD and DEL for several pods, and the
// namespace controller emptying a namespace, are slow on a loaded machine.
const objectTimeout = 2 * time.Minute

// Env is a model brought up on the testbed: a control plane, nodes each
// running palisade-agent, the model's namespaces, pods spread round-robin
// over the nodes (or placed by the model's fixed IP plan), and one
// ClusterIP Service per model Service whose EndpointSlice follows the pods
// its selector matches. Cases may add and remove pods and namespaces; Reset
// puts the model back.
type Env struct {
	Model    *Model
	CP       *testbed.ControlPlane
	Nodes    []*testbed.Node
	Pods     map[string]*testbed.Pod // the pods alive now, by id
	SCTPMode string

	// KubeProxy: kube-controller-manager writes the EndpointSlices and
	// kube-proxy (iptables) runs on every node; otherwise the runner
	// writes the slices itself and there is no kube-proxy.
	KubeProxy bool
	// Explain: after each probe step, ask the agents to explain every
	// probed pair and compare with the observation (explain.go).
	Explain bool
	// Via is how probes reach their destination (via.go); set by
	// WithVia, since it decides the type of the Services Setup makes.
	Via Via
	// Family is the address family of the run (family.go); af is the
	// one the probe in progress uses, the first of Family's otherwise.
	Family Family
	af     addrFamily

	tb        testing.TB
	explain   *explainer
	order     []string // alive pod ids: model order, then run-time pods
	scopes    map[string]*scope
	next      int // round-robin position of the next pod without a fixed IP
	nextHost  int // round-robin position of the next hostNetwork pod
	services  []*liveService
	podLabels map[string]map[string]string // current labels, by pod id
	dirtyPods map[string]bool
	dirtyNS   map[string]bool
	// What cases changed that Reset must undo.
	runtimePods   map[string]bool
	createdNS     map[string]bool
	deletedNS     map[string]bool
	deletedPods   map[string]bool
	removedModel  []ModelService
	appliedPolicy map[string]*networkingv1.NetworkPolicy // by namespace/name, this case
}

type liveService struct {
	spec ModelService
	// clusterIPs are all its ClusterIPs, one per family it has.
	clusterIPs []netip.Addr
	nodePorts  map[string]int // by servicePortKey, with Via nodeport
	backends   []string       // pod ids in its EndpointSlice
	// owner is the pod the Service was made for (its selector matches
	// that pod alone when made); deleting the pod deletes it.
	owner string
	model bool
	scope *scope
}

// SetupOption changes how Setup brings the model up.
type SetupOption func(*Env)

// NodesFor is how many nodes the model needs: n, or more when its fixed IP
// plan puts a pod in 10.244.N.0/24 for a larger N (node N's pod CIDR).
func NodesFor(m *Model, n int) (int, error) {
	for id, s := range m.PodIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return 0, fmt.Errorf("pod_ips %s: %w", id, err)
		}
		idx, err := nodeIndexOf(ip)
		if err != nil {
			return 0, fmt.Errorf("pod_ips %s: %w", id, err)
		}
		n = max(n, idx)
	}
	return n, nil
}

// nodeIndexOf is the N of the node whose pod CIDR, 10.244.N.0/24, holds
// ip; an address the testbed gives no node is an error, never moved.
func nodeIndexOf(ip netip.Addr) (int, error) {
	if !ip.Is4() || !testbed.ClusterCIDR.Contains(ip) {
		return 0, fmt.Errorf("%s is in no node's pod CIDR (node N has 10.244.N.0/24, inside %s)", ip, testbed.ClusterCIDR)
	}
	b := ip.As4()
	if b[2] == 0 {
		return 0, fmt.Errorf("%s: the testbed numbers nodes from 1 (10.244.0.0/24 is no node's)", ip)
	}
	// host-local hands out .2 to .254: .0 is the network, .1 the
	// bridge's gateway, .255 the broadcast address.
	if b[3] < 2 || b[3] == 255 {
		return 0, fmt.Errorf("%s: host-local gives pods .2 to .254 of a node's /24", ip)
	}
	return int(b[2]), nil
}

// Setup brings m up on a new testbed of nodes nodes (at least 1, and as
// many as the model's IP plan needs). Any failure fails tb; tb's cleanup
// removes everything.
func Setup(tb testing.TB, m *Model, nodes int, kubeProxy bool, opts ...SetupOption) *Env {
	tb.Helper()
	need, err := NodesFor(m, nodes)
	if err != nil {
		tb.Fatalf("conformance: the model's fixed IP plan cannot be honoured: %v", err)
	}
	if need > nodes {
		tb.Logf("conformance: the model's IP plan uses 10.244.%d.0/24: %d nodes instead of %d", need, need, nodes)
		nodes = need
	}
	if nodes < 1 {
		tb.Fatalf("conformance: %d nodes", nodes)
	}
	e := &Env{
		Model: m, CP: testbed.StartControlPlane(tb), Pods: map[string]*testbed.Pod{}, SCTPMode: testbed.SCTPMode(),
		podLabels: map[string]map[string]string{}, dirtyPods: map[string]bool{}, dirtyNS: map[string]bool{},
		KubeProxy: kubeProxy, tb: tb, scopes: map[string]*scope{},
		runtimePods: map[string]bool{}, createdNS: map[string]bool{}, deletedNS: map[string]bool{}, deletedPods: map[string]bool{},
		appliedPolicy: map[string]*networkingv1.NetworkPolicy{}, Via: ViaClusterIP, Family: Family4,
	}
	for _, o := range opts {
		o(e)
	}
	e.af = e.Family.addrFamilies()[0]
	if kubeProxy {
		e.CP.StartControllerManager(tb)
	}
	// The ClusterNetworkPolicy CRD goes in before the agents start: an
	// agent looks for the resource once, at start.
	if m.ClusterPolicyCRD != "" {
		e.CP.InstallClusterPolicyCRDFile(tb, m.ClusterPolicyCRD)
	} else {
		e.CP.InstallClusterPolicyCRD(tb)
	}
	// Real Flannel (VXLAN), with palisade chained by install-cni into
	// kube-flannel's own conflist: the pods run what a Flannel cluster runs.
	var nodeOpts []testbed.NodeOption
	if e.Family.dualStackNetwork() {
		nodeOpts = append(nodeOpts, testbed.DualStackNode())
	}
	for i := 1; i <= nodes; i++ {
		e.Nodes = append(e.Nodes, e.CP.AddNetworkNode(tb, fmt.Sprintf("node-%d", i), i, testbed.FlannelVXLAN, nodeOpts...))
	}
	testbed.StartFlannel(tb, e.Nodes, true)
	for _, n := range e.Nodes {
		n.StartAgent(tb, testbed.AgentOptions{})
		if kubeProxy {
			n.StartKubeProxy(tb, testbed.ProxyIPTables)
		}
	}
	// Pods and Services live in scopes of their own, closed before the
	// control plane goes.
	tb.Cleanup(e.closeAll)
	for _, ns := range m.Namespaces {
		e.ensureNamespace(tb, ns)
	}
	// Round-robin in pod order: with two or more nodes every namespace
	// has pods on different nodes, so each case's matrix crosses nodes
	// and stays on one.
	for _, id := range m.PodOrder {
		mp, _ := m.Pod(id)
		if err := e.startPod(id, mp.Labels, mp.ContainerPorts); err != nil {
			tb.Fatal(err)
		}
	}
	for _, s := range m.Services {
		if _, err := e.addService(s, true); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

// closeAll tears down every pod and Service the runner made.
func (e *Env) closeAll() {
	for _, ls := range e.services {
		if err := ls.scope.close(); err != nil {
			e.tb.Error(err)
		}
	}
	for _, id := range slices.Backward(e.order) {
		if err := e.scopes[id].close(); err != nil {
			e.tb.Error(err)
		}
	}
}

// startPod creates pod id with labels and ports on its node: the node
// whose pod CIDR holds its fixed IP, if the model gives one (and the pod
// gets exactly that IP), else the next node round-robin.
func (e *Env) startPod(id string, lbls map[string]string, ports []corev1.ContainerPort) error {
	ns, name, _ := strings.Cut(id, "/")
	if mp, ok := e.Model.Pod(id); ok && mp.HostNetwork {
		return e.startHostNetworkPod(id, lbls, ports)
	}
	var opts []testbed.CNIOption
	var node *testbed.Node
	if s, ok := e.Model.PodIPs[id]; ok {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("pod_ips %s: %w", id, err)
		}
		idx, err := nodeIndexOf(ip)
		if err != nil {
			return fmt.Errorf("pod_ips %s: %w", id, err)
		}
		if idx > len(e.Nodes) {
			return fmt.Errorf("pod_ips %s: %s needs node %d, the testbed has %d", id, ip, idx, len(e.Nodes))
		}
		node = e.Nodes[idx-1]
		ips, err := e.fixedIPs(ip)
		if err != nil {
			return fmt.Errorf("pod_ips %s: %w", id, err)
		}
		for _, ip := range ips {
			opts = append(opts, testbed.WithIP(ip))
		}
	} else {
		node = e.Nodes[e.next%len(e.Nodes)]
		e.next++
	}
	sc := newScope(e.tb)
	var p *testbed.Pod
	err := sc.do(func(tb testbed.TB) {
		p = node.AddPod(tb, testbed.MakePod(ns, name, maps.Clone(lbls), ports...), opts...)
	})
	if err != nil {
		_ = sc.close()
		return fmt.Errorf("create pod %s on %s: %w", id, node.Name, err)
	}
	e.track(id, p, sc, lbls)
	if len(opts) > 0 {
		if err := e.forgetNeighbours(p); err != nil {
			return fmt.Errorf("create pod %s on %s: %w", id, node.Name, err)
		}
	}
	return nil
}

// startHostNetworkPod starts hostNetwork pod id on the next node that has
// none yet: two would serve the same ports on one node, which the
// scheduler never allows (their host ports clash).
func (e *Env) startHostNetworkPod(id string, lbls map[string]string, ports []corev1.ContainerPort) error {
	ns, name, _ := strings.Cut(id, "/")
	taken := map[*testbed.Node]bool{}
	for _, p := range e.Pods {
		if p.HostNetwork() {
			taken[p.Node] = true
		}
	}
	var node *testbed.Node
	for i := range e.Nodes {
		if n := e.Nodes[(e.nextHost+i)%len(e.Nodes)]; !taken[n] {
			node = n
			e.nextHost += i + 1
			break
		}
	}
	if node == nil {
		return fmt.Errorf("create hostNetwork pod %s: each of the %d nodes has one already (run with more --nodes)", id, len(e.Nodes))
	}
	sc := newScope(e.tb)
	var p *testbed.Pod
	err := sc.do(func(tb testbed.TB) {
		p = node.AddHostNetworkPod(tb, testbed.MakePod(ns, name, maps.Clone(lbls), ports...))
	})
	if err != nil {
		_ = sc.close()
		return fmt.Errorf("create hostNetwork pod %s on %s: %w", id, node.Name, err)
	}
	e.track(id, p, sc, lbls)
	return nil
}

// track records a started pod: stopPod undoes it.
func (e *Env) track(id string, p *testbed.Pod, sc *scope, lbls map[string]string) {
	e.Pods[id] = p
	e.scopes[id] = sc
	e.order = append(e.order, id)
	e.podLabels[id] = maps.Clone(lbls)
}

// forgetNeighbours deletes the neighbour entries for p's address in its
// node and in the node's other pods. A fixed IP plan gives a re-created pod
// its old address with a new MAC, which host-local never does on its own
// (it hands out the next free address), and nothing announces the change:
// a neighbour whose entry for the old MAC is still reachable sends its
// replies into the bridge, which floods them to no taker, until the entry
// goes stale and is probed (5 s or more). The probes would time out on the
// network's leftovers, not on a verdict.
func (e *Env) forgetNeighbours(p *testbed.Pod) error {
	ip := net.IP(p.IP().AsSlice())
	forget := func() error {
		neighs, err := netlink.NeighList(0, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range neighs {
			if n.IP.Equal(ip) {
				if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("delete neighbour %s on link %d: %w", ip, n.LinkIndex, err)
				}
			}
		}
		return nil
	}
	netnses := []*testbed.NetNS{p.Node.NetNS}
	for _, other := range e.Pods {
		if other != p && other.Node == p.Node {
			netnses = append(netnses, other.NetNS)
		}
	}
	for _, ns := range netnses {
		if err := ns.Do(forget); err != nil {
			return fmt.Errorf("forget the old MAC of %s in %s: %w", ip, ns.Name(), err)
		}
	}
	return nil
}

// stopPod deletes pod id (sandbox, CNI DEL, API object) and the Services
// made for it.
func (e *Env) stopPod(id string) error {
	var errs []error
	for _, ls := range slices.Clone(e.services) {
		if ls.owner == id {
			errs = append(errs, e.removeService(ls))
		}
	}
	errs = append(errs, e.scopes[id].close())
	delete(e.scopes, id)
	delete(e.Pods, id)
	delete(e.podLabels, id)
	e.order = slices.DeleteFunc(e.order, func(p string) bool { return p == id })
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete pod %s: %w", id, err)
	}
	return nil
}

// ensureNamespace creates ns, or gives the model's labels to a namespace
// the API server made itself (default, kube-system).
func (e *Env) ensureNamespace(tb testing.TB, ns Namespace) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	_, err := e.CP.Client.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		e.CP.CreateNamespace(tb, ns.Name, ns.Labels)
	case err != nil:
		tb.Fatalf("get namespace %s: %v", ns.Name, err)
	default:
		if err := e.setNamespaceLabels(ctx, ns.Name, ns.Labels, true); err != nil {
			tb.Fatal(err)
		}
	}
}

// NodeOf is the name of the node pod id runs on.
func (e *Env) NodeOf(id string) string { return e.Pods[id].Node.Name }

// addService creates a ClusterIP Service in a scope of its own. With
// KubeProxy it has the model's selector and the EndpointSlice controller
// fills it; without, it is selector-less and the runner writes the
// EndpointSlice the controller would.
func (e *Env) addService(s ModelService, model bool) (*liveService, error) {
	ls := &liveService{spec: s, model: model, scope: newScope(e.tb)}
	ls.backends = e.backendsOf(s)
	if len(ls.backends) == 1 {
		ls.owner = ls.backends[0]
	}
	if err := ls.scope.do(func(tb testbed.TB) { e.createService(tb, ls) }); err != nil {
		_ = ls.scope.close()
		return nil, err
	}
	e.services = append(e.services, ls)
	return ls, nil
}

// removeService deletes a Service (and the slice the runner wrote).
func (e *Env) removeService(ls *liveService) error {
	e.services = slices.DeleteFunc(e.services, func(x *liveService) bool { return x == ls })
	if ls.model {
		e.removedModel = append(e.removedModel, ls.spec)
	}
	if err := ls.scope.close(); err != nil {
		return fmt.Errorf("delete service %s/%s: %w", ls.spec.Namespace, ls.spec.Name, err)
	}
	return nil
}

func (e *Env) createService(tb testbed.TB, ls *liveService) {
	s := ls.spec
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}}
	svc.Spec.Type = e.serviceType()
	if e.KubeProxy {
		svc.Spec.Selector = s.Selector
	}
	e.Family.serviceSpec(&svc.Spec)
	for _, p := range s.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: intstr.FromInt32(p.Target()),
		})
	}
	created, err := e.CP.Client.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create service %s/%s: %v", s.Namespace, s.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		err := e.CP.Client.CoreV1().Services(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			tb.Errorf("delete service %s/%s: %v", s.Namespace, s.Name, err)
		}
	})
	for _, c := range created.Spec.ClusterIPs {
		ip, err := netip.ParseAddr(c)
		if err != nil {
			tb.Fatalf("service %s/%s: clusterIPs %q: %v", s.Namespace, s.Name, created.Spec.ClusterIPs, err)
		}
		ls.clusterIPs = append(ls.clusterIPs, ip)
	}
	ls.nodePorts = nodePortsOf(created)
	if e.KubeProxy {
		// One slice per family of the Service, each listing every backend.
		if err := e.CP.WaitEndpoints(ctx, s.Namespace, s.Name, len(ls.backends)*len(ls.clusterIPs)); err != nil {
			tb.Fatal(err)
		}
		return
	}
	for _, ip := range ls.clusterIPs {
		slice := e.slice(ls, familyOf(ip))
		if _, err := e.CP.Client.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			tb.Fatalf("create endpointslice of %s/%s: %v", s.Namespace, s.Name, err)
		}
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
			defer cancel()
			err := e.CP.Client.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, slice.Name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				tb.Errorf("delete endpointslice %s/%s: %v", s.Namespace, slice.Name, err)
			}
		})
	}
}

// backendsOf lists the pods s's selector matches now, in pod order. A
// Service without a selector has none.
func (e *Env) backendsOf(s ModelService) []string {
	if len(s.Selector) == 0 {
		return nil
	}
	sel := labels.SelectorFromSet(s.Selector)
	var out []string
	for _, id := range e.order {
		if strings.HasPrefix(id, s.Namespace+"/") && sel.Matches(labels.Set(e.podLabels[id])) {
			out = append(out, id)
		}
	}
	return out
}

// slice is the EndpointSlice of family af the controller would write for
// ls: <name>-1 for IPv4, <name>-6 for IPv6.
func (e *Env) slice(ls *liveService, af addrFamily) *discoveryv1.EndpointSlice {
	s := ls.spec
	ready := true
	name, addrType := s.Name+"-1", discoveryv1.AddressTypeIPv4
	if af == v6 {
		name, addrType = s.Name+"-6", discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: s.Namespace, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: s.Name}},
		AddressType: addrType,
	}
	for _, id := range ls.backends {
		p := e.Pods[id]
		node := p.Node.Name
		addr, _ := e.podAddr(id, af)
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{addr.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, APIVersion: "v1"},
		})
	}
	for _, p := range s.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &p.Name, Protocol: &p.Protocol, Port: ptr(p.Target())})
	}
	return slice
}

func ptr[T any](v T) *T { return &v }

// syncSlices rewrites the EndpointSlices whose selector now matches other
// pods (after a pod label change), as the EndpointSlice controller would.
func (e *Env) syncSlices(ctx context.Context) error {
	for _, ls := range e.services {
		now := e.backendsOf(ls.spec)
		if slices.Equal(now, ls.backends) {
			continue
		}
		ls.backends = now
		if e.KubeProxy {
			// The EndpointSlice controller follows the labels; the
			// probes' retries cover its delay.
			continue
		}
		for _, ip := range ls.clusterIPs {
			want := e.slice(ls, familyOf(ip))
			err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cur, err := e.CP.Client.DiscoveryV1().EndpointSlices(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				cur.Endpoints, cur.Ports = want.Endpoints, want.Ports
				_, err = e.CP.Client.DiscoveryV1().EndpointSlices(want.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
				return err
			})
			if err != nil {
				return fmt.Errorf("update endpointslice of %s/%s: %w", ls.spec.Namespace, ls.spec.Name, err)
			}
		}
	}
	return nil
}

// serviceOf is the Service a probe to pod id goes through: the first model
// Service (in model order) whose EndpointSlice holds the pod and that has
// the port.
func (e *Env) serviceOf(id string, port int, proto corev1.Protocol) (*liveService, bool) {
	for _, ls := range e.services {
		if !slices.Contains(ls.backends, id) {
			continue
		}
		for _, sp := range ls.spec.Ports {
			if int(sp.Port) == port && sp.Protocol == proto {
				return ls, true
			}
		}
	}
	return nil, false
}

// podIP is the live pod IP of model pod id, in the family of the probe in
// progress (the run's first otherwise).
func (e *Env) podIP(id string) (netip.Addr, bool) { return e.podAddr(id, e.af) }

// Apply creates (or, with update, replaces) a policy from a catalog apply
// step, filling its templates from the live pods. The policy is decoded as
// strictly as the API server, so a field we do not know is an error.
func (e *Env) Apply(ctx context.Context, raw json.RawMessage, mode string) error {
	if isClusterPolicy(raw) {
		return e.applyClusterPolicy(ctx, raw, mode)
	}
	pol, err := e.apply(ctx, raw, mode)
	if err == nil {
		e.appliedPolicy[pol.Namespace+"/"+pol.Name] = pol
	}
	return err
}

func (e *Env) apply(ctx context.Context, raw json.RawMessage, mode string) (*networkingv1.NetworkPolicy, error) {
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	// The ipBlocks first, for the run's family; then any template left.
	doc, err := familyPolicy(doc, e.Family, e.podAddr)
	if err != nil {
		return nil, err
	}
	filled, err := fillTemplates(doc, e.podIP)
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(filled)
	if err != nil {
		return nil, fmt.Errorf("encode policy: %w", err)
	}
	pol, err := testbed.DecodePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	api := e.CP.Client.NetworkingV1().NetworkPolicies(pol.Namespace)
	if mode == "update" {
		return pol.DeepCopy(), retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := api.Get(ctx, pol.Name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("update networkpolicy %s/%s: %w", pol.Namespace, pol.Name, err)
			}
			// A full replacement, as upstream's UpdatePolicy.
			pol.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, pol, metav1.UpdateOptions{})
			return err
		})
	}
	if _, err := api.Create(ctx, pol.DeepCopy(), metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create networkpolicy %s/%s: %w", pol.Namespace, pol.Name, err)
	}
	return pol, nil
}

// DeletePolicy deletes a policy.
func (e *Env) DeletePolicy(ctx context.Context, ref ObjectRef) error {
	if ref.Kind == kindCNP {
		return e.deleteClusterPolicy(ctx, ref.Name)
	}
	delete(e.appliedPolicy, ref.Namespace+"/"+ref.Name)
	if err := e.CP.Client.NetworkingV1().NetworkPolicies(ref.Namespace).Delete(ctx, ref.Name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete networkpolicy %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	return nil
}

// LabelNamespace merges (or replaces) a namespace's labels. The API server
// keeps kubernetes.io/metadata.name whatever we send.
func (e *Env) LabelNamespace(ctx context.Context, l LabelNamespace) error {
	e.dirtyNS[l.Name] = true
	return e.setNamespaceLabels(ctx, l.Name, l.Labels, l.Replace)
}

func (e *Env) setNamespaceLabels(ctx context.Context, name string, set map[string]string, replace bool) error {
	api := e.CP.Client.CoreV1().Namespaces()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ns, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		ns.Labels = nextLabels(ns.Labels, set, replace)
		_, err = api.Update(ctx, ns, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("label namespace %s: %w", name, err)
	}
	return nil
}

// LabelPod merges (or replaces) a pod's labels and updates the
// EndpointSlices that select it.
func (e *Env) LabelPod(ctx context.Context, l LabelPod) error {
	id := l.Namespace + "/" + l.Name
	next := nextLabels(e.podLabels[id], l.Labels, l.Replace)
	e.dirtyPods[id] = true
	if err := e.setPodLabels(ctx, id, next); err != nil {
		return err
	}
	return e.syncSlices(ctx)
}

// nextLabels is what a label step leaves: set merged into cur, or with
// replace, set alone (cur untouched either way).
func nextLabels(cur, set map[string]string, replace bool) map[string]string {
	next := map[string]string{}
	if !replace {
		maps.Copy(next, cur)
	}
	maps.Copy(next, set)
	return next
}

func (e *Env) setPodLabels(ctx context.Context, id string, set map[string]string) error {
	p := e.Pods[id]
	api := e.CP.Client.CoreV1().Pods(p.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj, err := api.Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		obj.Labels = maps.Clone(set)
		_, err = api.Update(ctx, obj, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("label pod %s: %w", id, err)
	}
	e.podLabels[id] = maps.Clone(set)
	return nil
}

// Reset returns the cluster to the model: no ClusterNetworkPolicy, no
// NetworkPolicy in any model namespace, no run-time pod or namespace, the model's namespaces, pods,
// Services and labels back, and the slices that follow from them.
func (e *Env) Reset(ctx context.Context) error {
	clear(e.appliedPolicy)
	if err := e.deleteClusterPolicies(ctx); err != nil {
		return err
	}
	for _, ns := range e.Model.Namespaces {
		if e.deletedNS[ns.Name] {
			continue
		}
		if err := e.deletePolicies(ctx, ns.Name); err != nil {
			return err
		}
		if e.dirtyNS[ns.Name] {
			if err := e.setNamespaceLabels(ctx, ns.Name, ns.Labels, true); err != nil {
				return err
			}
			delete(e.dirtyNS, ns.Name)
		}
	}
	for _, id := range slices.Clone(e.order) {
		if e.runtimePods[id] {
			if err := e.stopPod(id); err != nil {
				return err
			}
			delete(e.runtimePods, id)
		}
	}
	for _, name := range sortedKeys(e.createdNS) {
		if err := e.deleteNamespace(ctx, name); err != nil {
			return err
		}
		delete(e.createdNS, name)
	}
	for _, ns := range e.Model.Namespaces {
		if !e.deletedNS[ns.Name] {
			continue
		}
		if err := e.createNamespace(ctx, ns.Name, ns.Labels); err != nil {
			return err
		}
		delete(e.deletedNS, ns.Name)
	}
	for _, id := range sortedKeys(e.dirtyPods) {
		if _, alive := e.Pods[id]; alive {
			mp, _ := e.Model.Pod(id)
			if err := e.setPodLabels(ctx, id, mp.Labels); err != nil {
				return err
			}
		}
		delete(e.dirtyPods, id)
	}
	// Deleted model pods come back where they were (same node, or their
	// fixed IP), then the Services made for them.
	for _, id := range e.Model.PodOrder {
		if !e.deletedPods[id] {
			continue
		}
		mp, _ := e.Model.Pod(id)
		if err := e.startPod(id, mp.Labels, mp.ContainerPorts); err != nil {
			return err
		}
		delete(e.deletedPods, id)
	}
	// Keep pod order: a re-created model pod goes back to its place.
	e.order = slices.DeleteFunc(slices.Clone(e.Model.PodOrder), func(id string) bool { _, ok := e.Pods[id]; return !ok })
	for _, s := range e.removedModel {
		if _, err := e.addService(s, true); err != nil {
			return err
		}
	}
	e.removedModel = nil
	return e.syncSlices(ctx)
}

func (e *Env) deletePolicies(ctx context.Context, ns string) error {
	api := e.CP.Client.NetworkingV1().NetworkPolicies(ns)
	list, err := api.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list networkpolicies in %s: %w", ns, err)
	}
	for _, pol := range list.Items {
		if err := api.Delete(ctx, pol.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete networkpolicy %s/%s: %w", ns, pol.Name, err)
		}
	}
	return nil
}

// CreateNamespace is a create_namespace step.
func (e *Env) CreateNamespace(ctx context.Context, c CreateNamespace) error {
	if err := e.createNamespace(ctx, c.Name, c.Labels); err != nil {
		return err
	}
	e.createdNS[c.Name] = true
	return nil
}

// createNamespace creates a namespace, waiting out an earlier one of the
// same name that is still being deleted.
func (e *Env) createNamespace(ctx context.Context, name string, lbls map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: maps.Clone(lbls)}}
	for {
		_, err := e.CP.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create namespace %s: the old one is still terminating: %w", name, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// DeleteNamespace is a delete_namespace step: the pods in it go first
// (their sandboxes and Services), then the namespace, with everything the
// namespace controller removes (its policies).
func (e *Env) DeleteNamespace(ctx context.Context, d DeleteNamespace) error {
	if !e.KubeProxy {
		return fmt.Errorf("delete_namespace %s: needs kube-controller-manager's namespace controller (run with --kube-proxy)", d.Name)
	}
	for _, id := range slices.Clone(e.order) {
		if strings.HasPrefix(id, d.Name+"/") {
			if err := e.DeletePod(ctx, ObjectRef{Namespace: d.Name, Name: strings.TrimPrefix(id, d.Name+"/")}); err != nil {
				return err
			}
		}
	}
	for _, ls := range slices.Clone(e.services) {
		if ls.spec.Namespace == d.Name {
			if err := e.removeService(ls); err != nil {
				return err
			}
		}
	}
	for key := range e.appliedPolicy {
		if strings.HasPrefix(key, d.Name+"/") {
			delete(e.appliedPolicy, key)
		}
	}
	if e.createdNS[d.Name] {
		delete(e.createdNS, d.Name)
	} else {
		e.deletedNS[d.Name] = true
	}
	return e.deleteNamespace(ctx, d.Name)
}

// deleteNamespace deletes a namespace and waits until it is gone.
func (e *Env) deleteNamespace(ctx context.Context, name string) error {
	api := e.CP.Client.CoreV1().Namespaces()
	if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	for {
		_, err := api.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("delete namespace %s: still there: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// CreatePod is a create_pod step: a pod with the containers of the
// model's first pod, and a Service like that pod's, selecting the new pod.
func (e *Env) CreatePod(ctx context.Context, c CreatePod) error {
	id := c.Namespace + "/" + c.Name
	tmpl, _ := e.Model.Pod(e.Model.PodOrder[0])
	if err := e.startPod(id, c.Labels, tmpl.ContainerPorts); err != nil {
		return err
	}
	e.runtimePods[id] = true
	if svc, ok := e.serviceFor(c); ok {
		if _, err := e.addService(svc, false); err != nil {
			return fmt.Errorf("create_pod %s: %w", id, err)
		}
	}
	return nil
}

// serviceFor is the Service a run-time pod gets: the ports of the model
// pod's own Service; its selector picks the new pod the way the model's
// selects its pod (pod=<name> upstream), else by all the pod's labels.
func (e *Env) serviceFor(c CreatePod) (ModelService, bool) {
	tmpl, _ := e.Model.Pod(e.Model.PodOrder[0])
	for _, s := range e.Model.Services {
		if s.Namespace != tmpl.Namespace || len(s.Selector) == 0 ||
			!labels.SelectorFromSet(s.Selector).Matches(labels.Set(tmpl.Labels)) {
			continue
		}
		svc := ModelService{Name: "s-" + c.Namespace + "-" + c.Name, Namespace: c.Namespace, Ports: s.Ports}
		svc.Selector = maps.Clone(c.Labels)
		if len(s.Selector) == 1 {
			for k, v := range s.Selector {
				if v == tmpl.Name {
					svc.Selector = map[string]string{k: c.Name}
				}
			}
		}
		return svc, true
	}
	return ModelService{}, false
}

// DeletePod is a delete_pod step: the pod and its Service go.
func (e *Env) DeletePod(ctx context.Context, r ObjectRef) error {
	id := r.Namespace + "/" + r.Name
	if err := e.stopPod(id); err != nil {
		return err
	}
	if e.runtimePods[id] {
		delete(e.runtimePods, id)
	} else {
		e.deletedPods[id] = true
	}
	return e.syncSlices(ctx)
}

// CheckIPBlocks checks a step's ipblock_membership against the live
// addresses (checkMembership): the ipBlocks of the step's own policy for
// an apply step, else of every policy the case has applied.
func (e *Env) CheckIPBlocks(membership map[string][]string, s Step) error {
	var only []string
	if _, ok := s["apply"]; ok {
		var meta struct {
			Metadata struct{ Namespace, Name string } `json:"metadata"`
		}
		if err := json.Unmarshal(s["apply"], &meta); err == nil {
			only = []string{meta.Metadata.Namespace + "/" + meta.Metadata.Name}
		}
	}
	var errs []error
	for _, af := range e.Family.addrFamilies() {
		err := checkMembership(membership, e.ipBlocks(only...), e.order, e.podAddrOf(af), af)
		if err != nil && e.Family != Family4 {
			err = fmt.Errorf("%s: %w", af, err)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkMembership checks that, for each cidr of membership (resolved for
// family af, as the policies' ipBlocks were), the pods of ids whose
// address of that family lies in it and in none of its except ranges
// (taken from blocks with that cidr) are exactly the pods listed.
func checkMembership(membership map[string][]string, blocks []*networkingv1.IPBlock, ids []string, podIP func(string) (netip.Addr, bool), af addrFamily) error {
	var errs []error
	for _, key := range sortedKeys(membership) {
		filled, err := resolveCIDR(key, af, podIP)
		if err != nil {
			return fmt.Errorf("ipblock_membership: %w", err)
		}
		cidr, err := netip.ParsePrefix(filled)
		if err != nil {
			return fmt.Errorf("ipblock_membership: %w", err)
		}
		var except []netip.Prefix
		for _, blk := range blocks {
			if c, err := netip.ParsePrefix(blk.CIDR); err == nil && c == cidr {
				for _, x := range blk.Except {
					p, err := netip.ParsePrefix(x)
					if err != nil {
						return fmt.Errorf("ipblock_membership %s: except %q: %w", key, x, err)
					}
					except = append(except, p)
				}
			}
		}
		var got []string
		for _, id := range ids {
			if ip, ok := podIP(id); ok && ipBlockMatches(cidr, except, ip) {
				got = append(got, id)
			}
		}
		want := slices.Clone(membership[key])
		sort.Strings(want)
		sort.Strings(got)
		if !slices.Equal(got, want) {
			errs = append(errs, fmt.Errorf("ipblock_membership %s (%s except %v): the catalog says %v, the live addresses give %v", key, cidr, except, want, got))
		}
	}
	return errors.Join(errs...)
}

func ipBlockMatches(cidr netip.Prefix, except []netip.Prefix, ip netip.Addr) bool {
	if !cidr.Contains(ip) {
		return false
	}
	for _, x := range except {
		if x.Contains(ip) {
			return false
		}
	}
	return true
}

// ipBlocks are the ipBlocks of the policies this case has applied (only
// those named namespace/name in only, if any).
func (e *Env) ipBlocks(only ...string) []*networkingv1.IPBlock {
	var out []*networkingv1.IPBlock
	for _, key := range sortedKeys(e.appliedPolicy) {
		if len(only) > 0 && !slices.Contains(only, key) {
			continue
		}
		pol := e.appliedPolicy[key]
		for _, r := range pol.Spec.Ingress {
			for _, p := range r.From {
				if p.IPBlock != nil {
					out = append(out, p.IPBlock)
				}
			}
		}
		for _, r := range pol.Spec.Egress {
			for _, p := range r.To {
				if p.IPBlock != nil {
					out = append(out, p.IPBlock)
				}
			}
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := slices.Collect(maps.Keys(m))
	sort.Strings(keys)
	return keys
}
