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
	byID       map[string]*ModelPod
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

	// Provenance the runner does not need: which pods upstream asserts
	// (the runner checks every pair, a superset) and how the rest were
	// derived.
	UpstreamAssertedPods json.RawMessage `json:"upstream_asserted_pods,omitempty"`
	UpstreamCalls        json.RawMessage `json:"upstream_expectation_calls,omitempty"`
	ExtrapolatedPairs    json.RawMessage `json:"extrapolated_pairs_where_naive_call_replay_is_wrong,omitempty"`
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

// ObjectRef names a namespaced object (a delete step).
type ObjectRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Step kinds this runner replays.
var stepKinds = []string{"apply", "delete", "label_namespace", "label_pod", "probe"}

// stepModifiers may accompany a kind: annotations for readers (note,
// semantics), data the runner derives itself (namespace_refs: namespaces
// keep their catalog names here; templates: every string is scanned), and
// wait_after_seconds, which it honours.
var stepModifiers = []string{"mode", "namespace_refs", "templates", "note", "semantics", "wait_after_seconds"}

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

// knownTags are tags whose requirement this runner meets. A tag outside
// this set that names a requirement ("Needs:…", "Feature:…") makes the case
// SKIP, because the runner cannot vouch for it.
var knownTags = map[string]bool{
	"Feature:NetworkPolicy": true, "Feature:SCTPConnectivity": true,
	"Needs:ServiceClusterIP": true, "Needs:StatefulReplies": true, "Needs:EgressPolicyAfterServiceDNAT": true,
	"Needs:NamedPort": true, "Needs:UDP": true, "Needs:SCTP": true, "Needs:IPBlock": true,
	"Needs:RuntimePodIPTemplate": true, "Needs:PolicyUpdate": true, "Needs:PodLabelUpdate": true,
	"Needs:NamespaceLabelUpdate": true, "Needs:PolicyDelete": true, "Needs:EndPort": true,
	"Needs:PodIPTarget": true,
}

// SkipReason says why the runner cannot replay c faithfully, or "" if it
// can. It looks at the model too: a fixed IP plan is not supported yet.
func (cat *Catalog) SkipReason(c *Case) string {
	if len(cat.Model.PodIPs) > 0 {
		return "the model's fixed IP plan (pod_ips) is not supported by this runner"
	}
	for _, t := range c.Tags {
		if (strings.HasPrefix(t, "Needs:") || strings.HasPrefix(t, "Feature:")) && !knownTags[t] {
			return fmt.Sprintf("tag %s: not supported by this runner", t)
		}
	}
	for i, s := range c.Setup {
		if err := cat.checkStep(s); err != nil {
			return fmt.Sprintf("step %d: %v", i+1, err)
		}
	}
	return ""
}

func (cat *Catalog) checkStep(s Step) error {
	kind, err := s.Kind()
	if err != nil {
		return err
	}
	if _, err := s.WaitAfter(); err != nil {
		return err
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
		return checkTemplates(pol, cat.Model)
	case "probe":
		var p Probe
		if err := s.Decode("probe", &p); err != nil {
			return err
		}
		return cat.checkProbe(&p)
	case "label_namespace":
		var l LabelNamespace
		return s.Decode(kind, &l)
	case "label_pod":
		var l LabelPod
		if err := s.Decode(kind, &l); err != nil {
			return err
		}
		if _, ok := cat.Model.Pod(l.Namespace + "/" + l.Name); !ok {
			return fmt.Errorf("label_pod: no pod %s/%s in the model", l.Namespace, l.Name)
		}
	case "delete":
		var r ObjectRef
		return s.Decode(kind, &r)
	}
	return nil
}

// probeFields are the probe fields the runner uses or may ignore: the
// upstream_* and extrapolated_* fields document where values came from.
func (cat *Catalog) checkProbe(p *Probe) error {
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
	ids := cat.Model.PodOrder
	if len(p.Expected) != len(ids) {
		return fmt.Errorf("probe %s/%d: expected has %d rows, the model %d pods", p.Protocol, p.Port, len(p.Expected), len(ids))
	}
	for _, from := range ids {
		row, ok := p.Expected[from]
		if !ok || len(row) != len(ids) {
			return fmt.Errorf("probe %s/%d: expected row %s missing or not %d entries", p.Protocol, p.Port, from, len(ids))
		}
		for _, to := range ids {
			if _, ok := row[to]; !ok {
				return fmt.Errorf("probe %s/%d: expected[%s][%s] missing", p.Protocol, p.Port, from, to)
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
