package conformance

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// table builds a probe's expected table over ids, every entry v.
func table(ids []string, v bool) string {
	var b strings.Builder
	b.WriteString("{")
	for i, from := range ids {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"` + from + `":{`)
		for j, to := range ids {
			if j > 0 {
				b.WriteString(",")
			}
			if v {
				b.WriteString(`"` + to + `":true`)
			} else {
				b.WriteString(`"` + to + `":false`)
			}
		}
		b.WriteString("}")
	}
	b.WriteString("}")
	return b.String()
}

// extra is an expected_extra table: every pair of all that involves one
// of the new pods.
func extra(all, newPods []string) string {
	isNew := map[string]bool{}
	for _, id := range newPods {
		isNew[id] = true
	}
	var b strings.Builder
	b.WriteString("{")
	first := true
	for _, from := range all {
		var row []string
		for _, to := range all {
			if isNew[from] || isNew[to] {
				row = append(row, `"`+to+`":true`)
			}
		}
		if len(row) == 0 {
			continue
		}
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(`"` + from + `":{` + strings.Join(row, ",") + "}")
	}
	b.WriteString("}")
	return b.String()
}

func TestSkipReasonRunTimeObjects(t *testing.T) {
	model := []string{"x/a", "x/b"}
	withC := []string{"x/a", "x/b", "x/c"}
	probe := func(expected, extraTable string) string {
		s := `{"probe":{"port":80,"protocol":"TCP","ignore_loopback":true,"expected":` + expected
		if extraTable != "" {
			s += `,"expected_extra":` + extraTable
		}
		return s + "}}"
	}
	checkSkipReasons(t, []skipReasonCase{
		{"created pod probed with expected_extra", []string{
			`{"create_pod":{"namespace":"x","name":"c","labels":{"pod":"c"}}}`,
			`{"apply":{"metadata":{"name":"p","namespace":"x"},"spec":{"ingress":[{"from":[{"ipBlock":{"cidr":"{{hostCIDR x/c}}"}}]}]}}}`,
			probe(table(model, true), extra(withC, []string{"x/c"}))}, ""},
		{"created pod without expected_extra", []string{
			`{"create_pod":{"namespace":"x","name":"c","labels":{"pod":"c"}}}`,
			probe(table(model, true), "")}, "expected[x/a][x/c] missing"},
		{"deleted pod needs no entries", []string{
			`{"delete_pod":{"namespace":"x","name":"b"}}`,
			probe(`{"x/a":{"x/a":true}}`, "")}, ""},
		{"template of a deleted pod", []string{
			`{"delete_pod":{"namespace":"x","name":"b"}}`,
			`{"apply":{"spec":{"x":"{{hostCIDR x/b}}"}}}`}, "no pod x/b at this step"},
		{"pod in a namespace not created", []string{
			`{"create_pod":{"namespace":"w","name":"a","labels":{}}}`}, "no namespace w"},
		{"pod in a created namespace", []string{
			`{"create_namespace":{"name":"w","labels":{"team":"w"}}}`,
			`{"create_pod":{"namespace":"w","name":"a","labels":{"pod":"a"}}}`,
			`{"label_namespace":{"name":"w","labels":{"k":"v"},"replace":true}}`,
			probe(table(model, true), extra([]string{"x/a", "x/b", "w/a"}, []string{"w/a"})),
			`{"delete_namespace":{"name":"w"}}`,
			probe(table(model, false), "")}, ""},
		{"namespace deleted with its pods", []string{
			`{"delete_namespace":{"name":"x"}}`,
			`{"label_pod":{"namespace":"x","name":"a","labels":{}}}`}, "no pod x/a at this step"},
		{"pod created twice", []string{
			`{"create_pod":{"namespace":"x","name":"a","labels":{}}}`}, "exists"},
		{"expectation for a pod the case never has", []string{
			probe(table(model, true), `{"x/q":{"x/a":true}}`)}, "never has"},
		{"ipblock_membership of pods alive", []string{
			`{"apply":{"metadata":{"name":"p","namespace":"x"},"spec":{}},"ipblock_membership":{"{{hostCIDR x/a}}":["x/a"],"10.244.0.0/16":["x/a","x/b"]}}`}, ""},
		{"ipblock_membership of a pod not there", []string{
			`{"apply":{"spec":{}},"ipblock_membership":{"10.244.0.0/16":["x/a","x/q"]}}`}, "no pod x/q"},
		{"ipblock_membership in another form", []string{
			`{"apply":{"spec":{}},"ipblock_membership":[{"cidr":"10.0.0.0/8"}]}`}, "decode ipblock_membership"},
	})
}

func TestTagsAreCapabilities(t *testing.T) {
	tests := []struct {
		tag, family string
		want        string // substring of the reason; "" = runs
	}{
		{"Feature:NetworkPolicyEndPort", "4", ""},
		{"Needs:LabelRemoval", "4", ""},
		{"Needs:FixedPodIPs", "4", ""},
		{"Ingress", "4", ""},
		{"Uses:kubernetes.io/metadata.name", "6", ""},
		{"Feature:AdminNetworkPolicy", "4", "not AdminNetworkPolicy"},
		{"Needs:IPv6", "4", "IPv4 only"},
		{"Needs:IPv6", "6", ""},
		{"Needs:IPv6", "dual", ""},
		{"Needs:IPv4", "6", "IPv6 only"},
		{"Needs:DualStack", "6", "single-stack"},
		{"Needs:DualStack", "dual", ""},
	}
	for _, tt := range tests {
		cat := tinyCatalog(t)
		cat.Family = tt.family
		got := cat.SkipReason(&Case{ID: "c", Tags: []string{"Feature:NetworkPolicy", tt.tag}})
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("tag %s, family %s: SkipReason = %q, want %q", tt.tag, tt.family, got, tt.want)
		}
	}
}

func TestNodesFor(t *testing.T) {
	plan := func(ips ...string) *Model {
		m := &Model{PodIPs: map[string]string{}}
		for i, ip := range ips {
			m.PodIPs[string(rune('a'+i))] = ip
		}
		return m
	}
	tests := []struct {
		name    string
		m       *Model
		nodes   int
		want    int
		wantErr string
	}{
		{"no plan", plan(), 2, 2, ""},
		{"plan within the nodes", plan("10.244.1.10", "10.244.2.10"), 2, 2, ""},
		{"plan needs a third node", plan("10.244.1.10", "10.244.3.10"), 2, 3, ""},
		{"outside the cluster CIDR", plan("10.245.1.10"), 2, 0, "in no node's pod CIDR"},
		{"node 0", plan("10.244.0.10"), 2, 0, "from 1"},
		{"the gateway", plan("10.244.1.1"), 2, 0, ".2 to .254"},
		{"IPv6", plan("fd00:10:244:1::10"), 2, 0, "in no node's pod CIDR"},
		{"not an address", plan("10.244.1"), 2, 0, "pod_ips"},
	}
	for _, tt := range tests {
		got, err := NodesFor(tt.m, tt.nodes)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: NodesFor = %d, %v; want error %q", tt.name, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: NodesFor = %d, %v; want %d", tt.name, got, err, tt.want)
		}
	}
	// The node a pod goes to is the one whose CIDR holds its address.
	for _, ip := range []string{"10.244.1.10", "10.244.3.254"} {
		a := netip.MustParseAddr(ip)
		idx, err := nodeIndexOf(a)
		if err != nil {
			t.Fatal(err)
		}
		n := testbed.Node{PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(idx), 0}), 24)}
		if !n.PodCIDR.Contains(a) {
			t.Errorf("%s went to node %d (%s)", ip, idx, n.PodCIDR)
		}
	}
}

func TestCheckMembership(t *testing.T) {
	ips := map[string]netip.Addr{
		"x/a": netip.MustParseAddr("10.244.1.10"),
		"x/b": netip.MustParseAddr("10.244.2.10"),
		"y/a": netip.MustParseAddr("10.244.2.11"),
	}
	ids := []string{"x/a", "x/b", "y/a"}
	podIP := func(id string) (netip.Addr, bool) { ip, ok := ips[id]; return ip, ok }
	blocks := []*networkingv1.IPBlock{{CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}}
	tests := []struct {
		name       string
		membership map[string][]string
		wantErr    string
	}{
		{"cidr minus except", map[string][]string{"10.244.0.0/16": {"x/a"}}, ""},
		{"a cidr with no except", map[string][]string{"10.244.2.0/24": {"y/a", "x/b"}}, ""},
		{"a template", map[string][]string{"{{hostCIDR x/b}}": {"x/b"}}, ""},
		{"the except forgotten", map[string][]string{"10.244.0.0/16": {"x/a", "x/b", "y/a"}}, "the live addresses give [x/a]"},
		{"addresses elsewhere", map[string][]string{"10.244.3.0/24": {"x/a"}}, "give []"},
		{"not a cidr", map[string][]string{"x/a": {"x/a"}}, "ipblock_membership"},
	}
	for _, tt := range tests {
		err := checkMembership(tt.membership, blocks, ids, podIP, v4)
		if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: checkMembership = %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}

func TestNextLabels(t *testing.T) {
	cur := map[string]string{"pod": "a", "tier": "web"}
	if got, want := nextLabels(cur, map[string]string{"tier": "db", "new": "1"}, false), map[string]string{"pod": "a", "tier": "db", "new": "1"}; !cmp.Equal(got, want) {
		t.Errorf("merge: %v, want %v", got, want)
	}
	// replace drops what the step does not give: a label removal.
	if got, want := nextLabels(cur, map[string]string{"tier": "db"}, true), map[string]string{"tier": "db"}; !cmp.Equal(got, want) {
		t.Errorf("replace: %v, want %v", got, want)
	}
	if got := nextLabels(cur, nil, true); len(got) != 0 {
		t.Errorf("replace with nothing: %v, want no labels", got)
	}
	if cur["tier"] != "web" || len(cur) != 2 {
		t.Errorf("nextLabels changed its input: %v", cur)
	}
}

func TestScope(t *testing.T) {
	s := newScope(t)
	var order []int
	s.Cleanup(func() { order = append(order, 1) })
	s.Cleanup(func() { order = append(order, 2); s.Errorf("cleanup %d failed", 2) })
	err := s.do(func(tb testbed.TB) {
		tb.Cleanup(func() { order = append(order, 3) })
		tb.Fatalf("no such %s", "thing")
		order = append(order, 99)
	})
	if err == nil || err.Error() != "no such thing" {
		t.Errorf("do = %v, want the Fatal as an error", err)
	}
	if err := s.close(); err == nil || !strings.Contains(err.Error(), "cleanup 2 failed") {
		t.Errorf("close = %v, want the cleanup's error", err)
	}
	if !cmp.Equal(order, []int{3, 2, 1}) {
		t.Errorf("cleanups ran %v, want last registered first [3 2 1]", order)
	}
	if err := s.close(); err != nil || len(order) != 3 {
		t.Errorf("second close = %v, ran %v: want nothing", err, order)
	}
	if t.Failed() {
		t.Error("the scope failed the test")
	}

}

// TestGeneratedUsesEveryField: the generated catalog is the one that must
// exercise the whole contract, so losing a field from it fails here.
func TestGeneratedUsesEveryField(t *testing.T) {
	dir := filepath.Join(testbed.ModuleRoot(t), "tests", "conformance", "generated")
	cat, err := Load(filepath.Join(dir, "model.json"), filepath.Join(dir, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cat.Model.PodIPs) == 0 {
		t.Error("no pod_ips")
	}
	need, err := NodesFor(cat.Model, 1)
	if err != nil || need != 3 {
		t.Errorf("NodesFor = %d, %v; want 3 nodes", need, err)
	}
	seen := map[string]bool{}
	for _, c := range cat.Cases {
		for _, s := range c.Setup {
			for k := range s {
				seen[k] = true
			}
			var lp LabelPod
			var ln LabelNamespace
			if (s.Decode("label_pod", &lp) == nil && lp.Replace) || (s.Decode("label_namespace", &ln) == nil && ln.Replace) {
				seen["replace"] = true
			}
			var p Probe
			if s.Decode("probe", &p) == nil && len(p.ExpectedExtra) > 0 {
				seen["expected_extra"] = true
			}
			for _, f := range []string{"endPort", "except", "matchExpressions", `"serve-`} {
				if strings.Contains(string(s["apply"]), f) {
					seen[f] = true
				}
			}
			if m, _ := s.Mode(); m == "update" {
				seen["update"] = true
			}
		}
	}
	want := append(slices.Clone(stepKinds), "ipblock_membership", "replace", "expected_extra", "endPort", "except", "matchExpressions", `"serve-`, "update")
	for _, k := range want {
		if !seen[k] {
			t.Errorf("the generated catalog never uses %s", k)
		}
	}
}

// skipReasonCase is a case made of steps (JSON, one per step) and the
// SkipReason it must get: a substring, "" for runnable.
type skipReasonCase struct {
	name  string
	steps []string
	want  string
}

func checkSkipReasons(t *testing.T, tests []skipReasonCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cat := tinyCatalog(t)
			c := &Case{ID: "c"}
			for _, s := range tt.steps {
				c.Setup = append(c.Setup, step(t, s))
			}
			got := cat.SkipReason(c)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Errorf("SkipReason = %q, want %q", got, tt.want)
			}
		})
	}
}
