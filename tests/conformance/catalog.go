// Package conformance replays NetworkPolicy conformance catalogs (the format
// of tests/conformance/upstream: a model.json of namespaces, pods and Services and
// a cases.json of steps and expected reachability tables) on the testbed, and
// reports each case as PASS, FAIL or SKIP.
//
// The catalog is data; this package knows nothing about any one case. What it
// cannot replay faithfully (a step, a field, a template or a tag it does not
// know) makes the case SKIP with the reason, never PASS.
package conformance

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Model is model.json: the cluster every case of a catalog starts from.
type Model struct {
	Namespaces []Namespace       `json:"namespaces"`
	PodOrder   []string          `json:"pod_order"`
	Pods       []ModelPod        `json:"pods"`
	Services   []ModelService    `json:"services"`
	PodIPs     map[string]string `json:"pod_ips,omitempty"`
	// ClusterPolicyCRD is the ClusterNetworkPolicy CRD the run installs,
	// relative to model.json's directory (Load makes it absolute); empty:
	// the standard-channel CRD Palisade ships (clusterpolicy.go).
	ClusterPolicyCRD string `json:"cluster_policy_crd,omitempty"`
	byID             map[string]*ModelPod
}

// Namespace is a namespace of the model and the labels it is created with.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// ModelPod is one pod: its labels and named container ports.
type ModelPod struct {
	Namespace      string                 `json:"namespace"`
	Name           string                 `json:"name"`
	ID             string                 `json:"id"`
	Labels         map[string]string      `json:"labels"`
	ContainerPorts []corev1.ContainerPort `json:"container_ports"`
	// HostNetwork: the pod shares its node's network namespace and
	// addresses (a hostNetwork pod); no two such pods share a node.
	HostNetwork bool `json:"host_network,omitempty"`
}

// ModelService is a ClusterIP Service of the model.
type ModelService struct {
	Name      string            `json:"name_in_this_catalog"`
	Namespace string            `json:"namespace"`
	Selector  map[string]string `json:"selector"`
	Ports     []ServicePort     `json:"ports"`
}

// ServicePort is a Service port; the target port is the same number unless
// TargetPort says otherwise (upstream leaves it unset).
type ServicePort struct {
	Name       string          `json:"name"`
	Protocol   corev1.Protocol `json:"protocol"`
	Port       int32           `json:"port"`
	TargetPort int32           `json:"targetPort,omitempty"`
}

// Target is the port the backend pod receives on.
func (p ServicePort) Target() int32 {
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

// Pod returns the model pod with id "ns/name".
func (m *Model) Pod(id string) (*ModelPod, bool) {
	p, ok := m.byID[id]
	return p, ok
}

// Case is one entry of cases.json.
type Case struct {
	ID            string          `json:"id"`
	Name          string          `json:"name"`
	Group         []string        `json:"group"`
	Tags          []string        `json:"tags"`
	Pods          []string        `json:"pods"`
	Preconditions *Preconditions  `json:"preconditions,omitempty"`
	Setup         []Step          `json:"setup"`
	Cleanup       json.RawMessage `json:"cleanup,omitempty"`
	// Source is provenance the runner does not need: the upstream file
	// and subtest a transcribed case comes from.
	Source json.RawMessage `json:"source,omitempty"`
}

// Preconditions are the all-allow checks made before a case's first step.
type Preconditions struct {
	ReadinessProbes []PortProto `json:"readiness_probes"`
}

// PortProto is a port and a protocol.
type PortProto struct {
	Port     int             `json:"port"`
	Protocol corev1.Protocol `json:"protocol"`
}

// Step is one step of a case: exactly one kind key plus modifiers. It is
// kept raw so that an unknown kind or modifier is noticed, not dropped.
type Step map[string]json.RawMessage

// Probe is a probe step.
type Probe struct {
	Port           int                        `json:"port"`
	Protocol       corev1.Protocol            `json:"protocol"`
	Target         string                     `json:"target,omitempty"`
	Expected       map[string]map[string]bool `json:"expected"`
	IgnoreLoopback bool                       `json:"ignore_loopback"`
	// ExpectedExtra holds the pairs that involve a pod made at run time
	// (create_pod), expected_extra[from][to]; Expected stays the model's
	// table.
	ExpectedExtra map[string]map[string]bool `json:"expected_extra,omitempty"`
	// Pairs is "all" (the default: every pair of the pods alive must be
	// in Expected or ExpectedExtra) or "listed": only the pairs in
	// Expected are probed and judged, every other pair is not asserted
	// (clusterpolicy.go; a suite that pokes single pairs is written so).
	Pairs string `json:"pairs,omitempty"`

	// Provenance the runner does not need: which pods upstream asserts
	// (the runner checks every pair, a superset) and how the rest were
	// derived.
	UpstreamAssertedPods json.RawMessage `json:"upstream_asserted_pods,omitempty"`
	UpstreamCalls        json.RawMessage `json:"upstream_expectation_calls,omitempty"`
	ExtrapolatedPairs    json.RawMessage `json:"extrapolated_pairs_where_naive_call_replay_is_wrong,omitempty"`
}

// want is the expected result of from->to: from Expected, or from
// ExpectedExtra for a pair with a run-time pod.
func (p *Probe) want(from, to string) (v, ok bool) {
	if v, ok = p.Expected[from][to]; ok {
		return v, true
	}
	v, ok = p.ExpectedExtra[from][to]
	return v, ok
}

// LabelNamespace is a label_namespace step.
type LabelNamespace struct {
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Replace bool              `json:"replace,omitempty"`
}

// LabelPod is a label_pod step.
type LabelPod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Replace   bool              `json:"replace,omitempty"`
}

// ObjectRef names an object: a policy of a delete step (Kind
// NetworkPolicy, the default, or ClusterNetworkPolicy, which has no
// namespace) or a pod of a delete_pod step.
type ObjectRef struct {
	Kind      string `json:"kind,omitempty"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// CreateNamespace is a create_namespace step.
type CreateNamespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// DeleteNamespace is a delete_namespace step.
type DeleteNamespace struct {
	Name string `json:"name"`
}

// CreatePod is a create_pod step: a pod with the model's containers and
// ports, and its own Service, made at run time.
type CreatePod struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
}

// Step kinds this runner replays.
var stepKinds = []string{"apply", "delete", "label_namespace", "label_pod", "probe",
	"create_namespace", "delete_namespace", "create_pod", "delete_pod"}

// stepModifiers may accompany a kind: annotations for readers (note,
// semantics), data the runner derives itself (namespace_refs: namespaces
// keep their catalog names here; templates: every string is scanned), and
// wait_after_seconds and ipblock_membership, which it honours.
var stepModifiers = []string{"mode", "namespace_refs", "templates", "note", "semantics", "wait_after_seconds", "ipblock_membership"}

// Kind is the step's kind, or an error naming what is not understood.
func (s Step) Kind() (string, error) {
	var kind string
	for k := range s {
		switch {
		case slices.Contains(stepKinds, k):
			if kind != "" {
				return "", fmt.Errorf("step has two kinds, %s and %s", kind, k)
			}
			kind = k
		case slices.Contains(stepModifiers, k):
		default:
			return "", fmt.Errorf("step field %q is not supported by this runner", k)
		}
	}
	if kind == "" {
		return "", errors.New("step has no kind this runner knows")
	}
	return kind, nil
}

// Decode decodes the step's kind body strictly into v.
func (s Step) Decode(kind string, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(s[kind])))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode %s step: %w", kind, err)
	}
	return nil
}

// Mode is an apply step's mode: create (default) or update.
func (s Step) Mode() (string, error) {
	raw, ok := s["mode"]
	if !ok {
		return "create", nil
	}
	var m string
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("decode mode: %w", err)
	}
	if m != "create" && m != "update" {
		return "", fmt.Errorf("apply mode %q is not supported by this runner", m)
	}
	return m, nil
}

// WaitAfter is the step's wait_after_seconds.
func (s Step) WaitAfter() (float64, error) {
	raw, ok := s["wait_after_seconds"]
	if !ok {
		return 0, nil
	}
	var w float64
	if err := json.Unmarshal(raw, &w); err != nil {
		return 0, fmt.Errorf("decode wait_after_seconds: %w", err)
	}
	return w, nil
}

// Catalog is a model and its cases.
type Catalog struct {
	Name  string
	Model *Model
	Cases []Case
	// Family is the run's address family: "4" (the default), "6" or
	// "dual"; tags such as Needs:IPv6 depend on it.
	Family string
}

// Load reads a catalog's model and cases and checks that they fit each
// other (every expected table names exactly the model's pods).
func Load(modelPath, casesPath string) (*Catalog, error) {
	var m Model
	if err := readJSON(modelPath, &m); err != nil {
		return nil, err
	}
	if err := m.index(); err != nil {
		return nil, fmt.Errorf("model %s: %w", modelPath, err)
	}
	if m.ClusterPolicyCRD != "" && !filepath.IsAbs(m.ClusterPolicyCRD) {
		m.ClusterPolicyCRD = filepath.Join(filepath.Dir(modelPath), m.ClusterPolicyCRD)
	}
	var cases []Case
	if err := readJSON(casesPath, &cases); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if c.ID == "" || seen[c.ID] {
			return nil, fmt.Errorf("cases %s: missing or duplicate id %q", casesPath, c.ID)
		}
		seen[c.ID] = true
	}
	return &Catalog{Model: &m, Cases: cases}, nil
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read catalog: %w", err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

func (m *Model) index() error {
	m.byID = map[string]*ModelPod{}
	nss := map[string]bool{}
	for _, ns := range m.Namespaces {
		nss[ns.Name] = true
	}
	for i := range m.Pods {
		p := &m.Pods[i]
		if p.ID == "" {
			p.ID = p.Namespace + "/" + p.Name
		}
		if p.ID != p.Namespace+"/"+p.Name {
			return fmt.Errorf("pod id %q is not %s/%s", p.ID, p.Namespace, p.Name)
		}
		if !nss[p.Namespace] {
			return fmt.Errorf("pod %s: namespace %q is not in the model", p.ID, p.Namespace)
		}
		if m.byID[p.ID] != nil {
			return fmt.Errorf("pod %s listed twice", p.ID)
		}
		if _, fixed := m.PodIPs[p.ID]; fixed && p.HostNetwork {
			return fmt.Errorf("pod %s: a hostNetwork pod has its node's address, pod_ips cannot give it one", p.ID)
		}
		m.byID[p.ID] = p
	}
	if len(m.PodOrder) == 0 {
		for _, p := range m.Pods {
			m.PodOrder = append(m.PodOrder, p.ID)
		}
	}
	a, b := slices.Clone(m.PodOrder), slices.Collect(func(yield func(string) bool) {
		for id := range m.byID {
			if !yield(id) {
				return
			}
		}
	})
	sort.Strings(a)
	sort.Strings(b)
	if !slices.Equal(a, b) {
		return fmt.Errorf("pod_order %v does not list the model's pods %v", a, b)
	}
	return nil
}

// SkipReason says why the runner cannot replay c faithfully, or "" if it
// can: a tag naming a capability the run lacks (capabilities.go), or a
// step the runner does not understand. The steps are checked in order
// against the pods and namespaces that exist at each point, so a probe
// must give an expectation for every pair of pods alive then.
func (cat *Catalog) SkipReason(c *Case) string {
	for _, t := range c.Tags {
		if why := cat.lacks(t); why != "" {
			return fmt.Sprintf("tag %s: %s", t, why)
		}
	}
	st := newCaseState(cat.Model)
	for i, s := range c.Setup {
		if err := cat.checkStep(st, s); err != nil {
			return fmt.Sprintf("step %d: %v", i+1, err)
		}
	}
	return ""
}

// caseState is what exists at one point of a case: the pods (model pods
// first, in pod order, then run-time ones in creation order) and the
// namespaces.
type caseState struct {
	pods []string
	nss  map[string]bool
	// ever: every pod id the case has had, for expectation keys.
	ever map[string]bool
}

func newCaseState(m *Model) *caseState {
	st := &caseState{pods: slices.Clone(m.PodOrder), nss: map[string]bool{}, ever: map[string]bool{}}
	for _, ns := range m.Namespaces {
		st.nss[ns.Name] = true
	}
	for _, id := range m.PodOrder {
		st.ever[id] = true
	}
	return st
}

func (st *caseState) alive(id string) bool { return slices.Contains(st.pods, id) }

func (cat *Catalog) checkStep(st *caseState, s Step) error {
	kind, err := s.Kind()
	if err != nil {
		return err
	}
	if _, err := s.WaitAfter(); err != nil {
		return err
	}
	if m, err := s.IPBlockMembership(); err != nil {
		return err
	} else {
		for cidr, ids := range m {
			if err := checkTemplates(cidr, st.alive); err != nil {
				return fmt.Errorf("ipblock_membership: %w", err)
			}
			for _, id := range ids {
				if !st.alive(id) {
					return fmt.Errorf("ipblock_membership %s: no pod %s at this step", cidr, id)
				}
			}
		}
	}
	switch kind {
	case "apply":
		if _, err := s.Mode(); err != nil {
			return err
		}
		var pol map[string]any
		if err := json.Unmarshal(s["apply"], &pol); err != nil {
			return fmt.Errorf("decode apply step: %w", err)
		}
		if err := checkApplyKind(pol); err != nil {
			return err
		}
		return checkTemplates(pol, st.alive)
	case "probe":
		var p Probe
		if err := s.Decode("probe", &p); err != nil {
			return err
		}
		return cat.checkProbe(st, &p)
	case "label_namespace":
		var l LabelNamespace
		if err := s.Decode(kind, &l); err != nil {
			return err
		}
		if !st.nss[l.Name] {
			return fmt.Errorf("label_namespace: no namespace %s at this step", l.Name)
		}
	case "label_pod":
		var l LabelPod
		if err := s.Decode(kind, &l); err != nil {
			return err
		}
		if !st.alive(l.Namespace + "/" + l.Name) {
			return fmt.Errorf("label_pod: no pod %s/%s at this step", l.Namespace, l.Name)
		}
	case "delete":
		var r ObjectRef
		if err := s.Decode(kind, &r); err != nil {
			return err
		}
		return checkDelete(r)
	case "create_namespace":
		var c CreateNamespace
		if err := s.Decode(kind, &c); err != nil {
			return err
		}
		if c.Name == "" || st.nss[c.Name] {
			return fmt.Errorf("create_namespace: namespace %q exists or has no name", c.Name)
		}
		st.nss[c.Name] = true
	case "delete_namespace":
		var d DeleteNamespace
		if err := s.Decode(kind, &d); err != nil {
			return err
		}
		if !st.nss[d.Name] {
			return fmt.Errorf("delete_namespace: no namespace %s at this step", d.Name)
		}
		delete(st.nss, d.Name)
		st.pods = slices.DeleteFunc(st.pods, func(id string) bool { return strings.HasPrefix(id, d.Name+"/") })
	case "create_pod":
		var c CreatePod
		if err := s.Decode(kind, &c); err != nil {
			return err
		}
		id := c.Namespace + "/" + c.Name
		switch {
		case !st.nss[c.Namespace]:
			return fmt.Errorf("create_pod %s: no namespace %s at this step", id, c.Namespace)
		case c.Name == "" || st.alive(id):
			return fmt.Errorf("create_pod %s: the pod exists or has no name", id)
		case len(cat.Model.PodOrder) == 0:
			return fmt.Errorf("create_pod %s: the model has no pod to copy containers from", id)
		}
		st.pods = append(st.pods, id)
		st.ever[id] = true
	case "delete_pod":
		var r ObjectRef
		if err := s.Decode(kind, &r); err != nil {
			return err
		}
		id := r.Namespace + "/" + r.Name
		if !st.alive(id) {
			return fmt.Errorf("delete_pod: no pod %s at this step", id)
		}
		st.pods = slices.DeleteFunc(st.pods, func(p string) bool { return p == id })
	}
	return nil
}

// IPBlockMembership is the step's ipblock_membership: for each ipBlock
// cidr (as written in the policy, templates allowed), the pods the ipBlock
// (cidr minus its except) must match, checked against the live addresses
// before any later probe.
func (s Step) IPBlockMembership() (map[string][]string, error) {
	raw, ok := s["ipblock_membership"]
	if !ok {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	var m map[string][]string
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode ipblock_membership (want {cidr: [pod ids]}): %w", err)
	}
	return m, nil
}

// checkProbe checks that the probe can be made and that it gives an
// expectation for every pair of pods alive at this step.
func (cat *Catalog) checkProbe(st *caseState, p *Probe) error {
	switch p.Protocol {
	case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
	default:
		return fmt.Errorf("probe protocol %q is not supported by this runner", p.Protocol)
	}
	switch p.Target {
	case "", "service", "pod":
	default:
		return fmt.Errorf("probe target %q is not supported by this runner", p.Target)
	}
	if p.Target != "pod" && !cat.hasServicePort(p.Port, p.Protocol) {
		return fmt.Errorf("probe %s/%d: no Service of the model has that port", p.Protocol, p.Port)
	}
	if p.Pairs == "listed" {
		return checkListedPairs(st, p)
	}
	if p.Pairs != "" && p.Pairs != "all" {
		return fmt.Errorf("probe pairs %q is not supported by this runner", p.Pairs)
	}
	for _, table := range []map[string]map[string]bool{p.Expected, p.ExpectedExtra} {
		for from, row := range table {
			for to := range row {
				if !st.ever[from] || !st.ever[to] {
					return fmt.Errorf("probe %s/%d: expected[%s][%s] names a pod the case never has", p.Protocol, p.Port, from, to)
				}
			}
		}
	}
	for _, from := range st.pods {
		for _, to := range st.pods {
			if from == to && p.IgnoreLoopback {
				continue
			}
			if _, ok := p.want(from, to); !ok {
				return fmt.Errorf("probe %s/%d: expected[%s][%s] missing (in expected or expected_extra)", p.Protocol, p.Port, from, to)
			}
		}
	}
	return nil
}

func (cat *Catalog) hasServicePort(port int, proto corev1.Protocol) bool {
	for _, s := range cat.Model.Services {
		for _, sp := range s.Ports {
			if int(sp.Port) == port && sp.Protocol == proto {
				return true
			}
		}
	}
	return false
}

// Select returns the cases whose ids are in only (all of them if only is
// empty), or an error naming ids the catalog does not have.
func (cat *Catalog) Select(only []string) ([]Case, error) {
	if len(only) == 0 {
		return cat.Cases, nil
	}
	want := map[string]bool{}
	for _, id := range only {
		want[id] = true
	}
	var out []Case
	for _, c := range cat.Cases {
		if want[c.ID] {
			out = append(out, c)
			delete(want, c.ID)
		}
	}
	if len(want) > 0 {
		missing := slices.Sorted(func(yield func(string) bool) {
			for id := range want {
				if !yield(id) {
					return
				}
			}
		})
		return nil, fmt.Errorf("no such case in the catalog: %s", strings.Join(missing, ","))
	}
	return out, nil
}
