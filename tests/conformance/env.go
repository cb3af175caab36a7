package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// apiTimeout bounds one group of API calls made by the runner.
const apiTimeout = 20 * time.Second

// Env is a model brought up on the testbed: a control plane, nodes each
// running palisade-agent, the model's namespaces, pods spread round-robin
// over the nodes, and one ClusterIP Service per model Service whose
// EndpointSlice the runner keeps equal to the pods its selector matches.
type Env struct {
	Model    *Model
	CP       *testbed.ControlPlane
	Nodes    []*testbed.Node
	Pods     map[string]*testbed.Pod
	SCTPMode string

	// KubeProxy: kube-controller-manager writes the EndpointSlices and
	// kube-proxy (iptables) runs on every node; otherwise the runner
	// writes the slices itself and there is no kube-proxy.
	KubeProxy bool
	// Explain: after each probe step, ask the agents to explain every
	// probed pair and compare with the observation (explain.go).
	Explain bool

	explain   *explainer
	services  []*liveService
	podLabels map[string]map[string]string // current labels, by pod id
	dirtyPods map[string]bool
	dirtyNS   map[string]bool
}

type liveService struct {
	spec      ModelService
	clusterIP netip.Addr
	backends  []string // pod ids in its EndpointSlice
}

// Setup brings m up on a new testbed of nodes nodes (at least 1). Any
// failure fails tb; tb's cleanup removes everything.
func Setup(tb testing.TB, m *Model, nodes int, kubeProxy bool) *Env {
	tb.Helper()
	if nodes < 1 {
		tb.Fatalf("conformance: %d nodes", nodes)
	}
	e := &Env{
		Model: m, CP: testbed.StartControlPlane(tb), Pods: map[string]*testbed.Pod{}, SCTPMode: testbed.SCTPMode(),
		podLabels: map[string]map[string]string{}, dirtyPods: map[string]bool{}, dirtyNS: map[string]bool{},
		KubeProxy: kubeProxy,
	}
	if kubeProxy {
		e.CP.StartControllerManager(tb)
	}
	// Real Flannel (VXLAN), with palisade chained by install-cni into
	// kube-flannel's own conflist: the pods run what a Flannel cluster runs.
	for i := 1; i <= nodes; i++ {
		e.Nodes = append(e.Nodes, e.CP.AddNetworkNode(tb, fmt.Sprintf("node-%d", i), i, testbed.FlannelVXLAN))
	}
	testbed.StartFlannel(tb, e.Nodes, true)
	for _, n := range e.Nodes {
		n.StartAgent(tb, testbed.AgentOptions{})
		if kubeProxy {
			n.StartKubeProxy(tb, testbed.ProxyIPTables)
		}
	}
	for _, ns := range m.Namespaces {
		e.ensureNamespace(tb, ns)
	}
	// Round-robin in pod order: with two or more nodes every namespace
	// has pods on different nodes, so each case's matrix crosses nodes
	// and stays on one.
	for i, id := range m.PodOrder {
		mp, _ := m.Pod(id)
		pod := testbed.MakePod(mp.Namespace, mp.Name, maps.Clone(mp.Labels), mp.ContainerPorts...)
		p := e.Nodes[i%len(e.Nodes)].AddPod(tb, pod)
		e.Pods[id] = p
		e.podLabels[id] = maps.Clone(mp.Labels)
	}
	for _, s := range m.Services {
		ls, err := e.createService(tb, s)
		if err != nil {
			tb.Fatal(err)
		}
		e.services = append(e.services, ls)
	}
	return e
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

// createService creates a ClusterIP Service. With KubeProxy it has the
// model's selector and the EndpointSlice controller fills it; without, it
// is selector-less and the runner writes the EndpointSlice the controller
// would.
func (e *Env) createService(tb testing.TB, s ModelService) (*liveService, error) {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name}}
	if e.KubeProxy {
		svc.Spec.Selector = s.Selector
	}
	for _, p := range s.Ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: intstr.FromInt32(p.Target()),
		})
	}
	created, err := e.CP.Client.CoreV1().Services(s.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", s.Namespace, s.Name, err)
	}
	tb.Cleanup(func() {
		_ = e.CP.Client.CoreV1().Services(s.Namespace).Delete(context.Background(), s.Name, metav1.DeleteOptions{})
	})
	ip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		return nil, fmt.Errorf("service %s/%s: clusterIP %q: %w", s.Namespace, s.Name, created.Spec.ClusterIP, err)
	}
	ls := &liveService{spec: s, clusterIP: ip}
	ls.backends = e.backendsOf(s)
	if e.KubeProxy {
		if err := e.CP.WaitEndpoints(ctx, s.Namespace, s.Name, len(ls.backends)); err != nil {
			return nil, err
		}
		return ls, nil
	}
	slice := e.slice(ls)
	if _, err := e.CP.Client.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create endpointslice of %s/%s: %w", s.Namespace, s.Name, err)
	}
	return ls, nil
}

// backendsOf lists the pods s's selector matches now, in pod order. A
// Service without a selector has none.
func (e *Env) backendsOf(s ModelService) []string {
	if len(s.Selector) == 0 {
		return nil
	}
	sel := labels.SelectorFromSet(s.Selector)
	var out []string
	for _, id := range e.Model.PodOrder {
		mp, _ := e.Model.Pod(id)
		if mp.Namespace == s.Namespace && sel.Matches(labels.Set(e.podLabels[id])) {
			out = append(out, id)
		}
	}
	return out
}

func (e *Env) slice(ls *liveService) *discoveryv1.EndpointSlice {
	s := ls.spec
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: s.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, id := range ls.backends {
		p := e.Pods[id]
		node := p.Node.Name
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IP().String()},
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
		want := e.slice(ls)
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

// podIP is the live pod IP of model pod id.
func (e *Env) podIP(id string) (netip.Addr, bool) {
	p, ok := e.Pods[id]
	if !ok {
		return netip.Addr{}, false
	}
	return p.IP(), true
}

// Apply creates (or, with update, replaces) a policy from a catalog apply
// step, filling its templates from the live pods. The policy is decoded as
// strictly as the API server, so a field we do not know is an error.
func (e *Env) Apply(ctx context.Context, raw json.RawMessage, mode string) error {
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("decode policy: %w", err)
	}
	filled, err := fillTemplates(doc, e.podIP)
	if err != nil {
		return err
	}
	data, err := json.Marshal(filled)
	if err != nil {
		return fmt.Errorf("encode policy: %w", err)
	}
	pol, err := testbed.DecodePolicy(data)
	if err != nil {
		return fmt.Errorf("decode policy: %w", err)
	}
	api := e.CP.Client.NetworkingV1().NetworkPolicies(pol.Namespace)
	if mode == "update" {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
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
	if _, err := api.Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create networkpolicy %s/%s: %w", pol.Namespace, pol.Name, err)
	}
	return nil
}

// DeletePolicy deletes a policy.
func (e *Env) DeletePolicy(ctx context.Context, ref ObjectRef) error {
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
		if replace || ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		maps.Copy(ns.Labels, set)
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
	next := map[string]string{}
	if !l.Replace {
		next = maps.Clone(e.podLabels[id])
	}
	maps.Copy(next, l.Labels)
	e.dirtyPods[id] = true
	if err := e.setPodLabels(ctx, id, next); err != nil {
		return err
	}
	return e.syncSlices(ctx)
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

// Reset returns the cluster to the model: no NetworkPolicy in any model
// namespace, the model's namespace and pod labels, and the slices that
// follow from them.
func (e *Env) Reset(ctx context.Context) error {
	for _, ns := range e.Model.Namespaces {
		api := e.CP.Client.NetworkingV1().NetworkPolicies(ns.Name)
		list, err := api.List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list networkpolicies in %s: %w", ns.Name, err)
		}
		for _, pol := range list.Items {
			if err := api.Delete(ctx, pol.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete networkpolicy %s/%s: %w", ns.Name, pol.Name, err)
			}
		}
		if e.dirtyNS[ns.Name] {
			if err := e.setNamespaceLabels(ctx, ns.Name, ns.Labels, true); err != nil {
				return err
			}
			delete(e.dirtyNS, ns.Name)
		}
	}
	for _, id := range sortedKeys(e.dirtyPods) {
		mp, _ := e.Model.Pod(id)
		if err := e.setPodLabels(ctx, id, mp.Labels); err != nil {
			return err
		}
		delete(e.dirtyPods, id)
	}
	return e.syncSlices(ctx)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := slices.Collect(maps.Keys(m))
	sort.Strings(keys)
	return keys
}
