package conformance

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// tinyCatalog is a two-pod model with one Service each, and one valid case.
func tinyCatalog(t *testing.T) *Catalog {
	t.Helper()
	m := &Model{
		Namespaces: []Namespace{{Name: "x"}},
		Pods:       []ModelPod{{Namespace: "x", Name: "a"}, {Namespace: "x", Name: "b"}},
		Services: []ModelService{{Name: "s-x-a", Namespace: "x", Selector: map[string]string{"pod": "a"},
			Ports: []ServicePort{{Name: "p", Protocol: "TCP", Port: 80}}}},
	}
	if err := m.index(); err != nil {
		t.Fatal(err)
	}
	return &Catalog{Model: m}
}

func step(t *testing.T, js string) Step {
	t.Helper()
	var s Step
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

const tinyTable = `{"x/a":{"x/a":true,"x/b":false},"x/b":{"x/a":true,"x/b":true}}`

func TestSkipReason(t *testing.T) {
	probe := `{"probe":{"port":80,"protocol":"TCP","ignore_loopback":true,"expected":` + tinyTable + `}}`
	tests := []struct {
		name  string
		tags  []string
		steps []string
		want  string // substring; "" = runnable
	}{
		{"runnable", []string{"Feature:NetworkPolicy", "Ingress"}, []string{
			`{"apply":{"metadata":{"name":"p","namespace":"x"},"spec":{"ingress":[{"from":[{"ipBlock":{"cidr":"{{hostCIDR x/b}}"}}]}]}},"mode":"create","note":"n"}`,
			`{"label_pod":{"namespace":"x","name":"a","labels":{"k":"v"}}}`, probe}, ""},
		{"a need the run lacks", []string{"Needs:IPv6"}, []string{probe}, "tag Needs:IPv6"},
		{"unknown step kind", nil, []string{`{"restart_pod":{"namespace":"x","name":"c"}}`}, `step field "restart_pod"`},
		{"unknown modifier", nil, []string{`{"apply":{},"retries":3}`}, `"retries"`},
		{"two kinds", nil, []string{`{"apply":{},"delete":{}}`}, "two kinds"},
		{"unknown template", nil, []string{`{"apply":{"spec":{"x":"{{nodeCIDR x/a}}"}}}`}, `function "nodeCIDR"`},
		{"template of an unknown pod", nil, []string{`{"apply":{"spec":{"x":"{{hostCIDR y/a}}"}}}`}, "no pod y/a"},
		{"unknown mode", nil, []string{`{"apply":{},"mode":"patch"}`}, `mode "patch"`},
		{"unknown protocol", nil, []string{`{"probe":{"port":80,"protocol":"ICMP","expected":` + tinyTable + `}}`}, `protocol "ICMP"`},
		{"probe field unknown", nil, []string{`{"probe":{"port":80,"protocol":"TCP","expected_more":{},"expected":` + tinyTable + `}}`}, "expected_more"},
		{"no Service port", nil, []string{`{"probe":{"port":81,"protocol":"TCP","expected":` + tinyTable + `}}`}, "no Service"},
		{"table entry missing", nil, []string{`{"probe":{"port":80,"protocol":"TCP","expected":{"x/a":{"x/a":true,"x/b":false},"x/b":{"x/a":true}}}}`}, "expected[x/b][x/b] missing"},
		{"label of an unknown pod", nil, []string{`{"label_pod":{"namespace":"x","name":"z","labels":{}}}`}, "no pod x/z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cat := tinyCatalog(t)
			c := &Case{ID: "c", Tags: tt.tags}
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

func TestFillTemplates(t *testing.T) {
	ips := map[string]netip.Addr{"x/b": netip.MustParseAddr("10.244.1.11"), "y/a": netip.MustParseAddr("fd00::5")}
	doc := map[string]any{"cidr": "{{hostCIDR x/b}}", "except": []any{"{{slash4CIDR x/b}}", "{{hostCIDR y/a}}", "{{slash4CIDR y/a}}"}, "n": 3.0}
	got, err := fillTemplates(doc, func(id string) (netip.Addr, bool) { ip, ok := ips[id]; return ip, ok })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"cidr": "10.244.1.11/32", "except": []any{"0.0.0.0/4", "fd00::5/128", "f000::/4"}, "n": 3.0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fillTemplates (-want +got):\n%s", diff)
	}
	if _, err := fillTemplates("{{hostCIDR z/z}}", func(string) (netip.Addr, bool) { return netip.Addr{}, false }); err == nil {
		t.Error("a template of a pod with no IP was filled")
	}
}

func TestMismatchesAndDiff(t *testing.T) {
	ids := []string{"x/a", "x/b"}
	expected := Matrix{"x/a": {"x/a": false, "x/b": true}, "x/b": {"x/a": false, "x/b": true}}
	observed := Matrix{}
	observed.set("x/a", "x/b", true)
	observed.set("x/b", "x/a", true) // differs
	if diff := cmp.Diff([]string{"x/b->x/a"}, Mismatches(ids, expected, observed)); diff != "" {
		t.Errorf("Mismatches (-want +got):\n%s", diff)
	}
	out := FormatDiff(ids, expected, observed)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("FormatDiff: %d lines, want 4:\n%s", len(lines), out)
	}
	// Row x/b: expected ". 0"-style cells left, observed with the mark right.
	if !strings.Contains(lines[3], "0   .") || !strings.Contains(lines[3], "1*  .") {
		t.Errorf("row x/b does not show expected 0 and observed 1*:\n%s", out)
	}
	if strings.Contains(lines[2], "*") {
		t.Errorf("row x/a marked though it matches:\n%s", out)
	}
}

func TestReportLines(t *testing.T) {
	var buf bytes.Buffer
	r := NewReport(&buf, "tiny", []string{"x/a", "x/b"})
	r.Add(CaseResult{ID: "c1", Name: "first", Status: Pass, Seconds: 1.25})
	r.Add(CaseResult{ID: "c2", Name: "second", Status: Skip, Reason: "tag Needs:IPv6: not supported by this runner"})
	r.Add(CaseResult{ID: "c3", Name: "third", Status: Fail, Reason: "step 2", Probes: []ProbeResult{{
		Step: "step 2", Port: 80, Protocol: "TCP", Target: "service",
		Expected:   Matrix{"x/a": {"x/b": false}, "x/b": {"x/a": true}},
		Observed:   Matrix{"x/a": {"x/b": true}, "x/b": {"x/a": true}},
		Mismatches: []string{"x/a->x/b"}, Details: map[string]string{"x/a->x/b": "connected"},
	}}})
	r.Finish()
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if got, want := lines[len(lines)-1], "1 passed, 1 failed, 1 skipped"; got != want {
		t.Errorf("last line %q, want %q", got, want)
	}
	for _, want := range []string{"PASS c1 first 1.2s", "SKIP c2 second 0.0s", "    tag Needs:IPv6", "FAIL c3 third", "      x/a->x/b: connected"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, buf.String())
		}
	}
}

// TestCatalogsRunnable loads our catalog and the upstream one: every case must be one this runner can replay (no SKIP).
func TestCatalogsRunnable(t *testing.T) {
	root := testbed.ModuleRoot(t)
	upstream := os.Getenv("PALISADE_CONFORMANCE_UPSTREAM")
	if upstream == "" {
		upstream = filepath.Join(root, "tests", "conformance", "upstream")
	}
	for name, dir := range map[string]string{
		"palisade":  filepath.Join(root, "tests", "conformance", "catalog"),
		"upstream":  upstream,
		"generated": filepath.Join(root, "tests", "conformance", "generated"),
	} {
		t.Run(name, func(t *testing.T) {
			cat, err := Load(filepath.Join(dir, "model.json"), filepath.Join(dir, "cases.json"))
			if err != nil {
				t.Fatal(err)
			}
			for i := range cat.Cases {
				if r := cat.SkipReason(&cat.Cases[i]); r != "" {
					t.Errorf("%s: %s", cat.Cases[i].ID, r)
				}
			}
			if name == "upstream" && len(cat.Cases) != 49 {
				t.Errorf("upstream catalog has %d cases, want 49", len(cat.Cases))
			}
		})
	}
}

// TestSeedPoliciesMatchConf checks that our catalog's transcriptions of the
// seeds' examples are the files of conf/policies and conf/policies/demo,
// object for object, and that every such file is in some case.
func TestSeedPoliciesMatchConf(t *testing.T) {
	root := testbed.ModuleRoot(t)
	cat, err := Load(filepath.Join(root, "tests/conformance/catalog/model.json"), filepath.Join(root, "tests/conformance/catalog/cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	// Policies are named by file; the catalog names them by metadata.name,
	// so a name in both directories would be ambiguous.
	paths := map[string]string{}
	for _, dir := range []string{"conf/policies", "conf/policies/demo"} {
		files, err := filepath.Glob(filepath.Join(root, dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("no policies in %s", dir)
		}
		for _, f := range files {
			name := strings.TrimSuffix(filepath.Base(f), ".yaml")
			if prev, ok := paths[name]; ok {
				t.Fatalf("policy %s is both %s and %s", name, prev, f)
			}
			paths[name] = f
		}
	}
	seen := map[string]bool{}
	for _, c := range cat.Cases {
		for _, s := range c.Setup {
			raw, ok := s["apply"]
			if !ok {
				continue
			}
			got, err := testbed.DecodePolicy(raw)
			if err != nil {
				t.Fatalf("%s: %v", c.ID, err)
			}
			path, ok := paths[got.Name]
			if !ok {
				continue // not a seed example
			}
			want := testbed.ReadPolicy(t, path)
			if diff := cmp.Diff(want.Spec, got.Spec); diff != "" {
				t.Errorf("%s: %s differs from %s (-file +catalog):\n%s", c.ID, got.Name, path, diff)
			}
			seen[got.Name] = true
		}
	}
	for name := range paths {
		switch {
		case seen[name] && notYetInCatalog[name]:
			t.Errorf("seed example %s is in our catalog now: remove it from notYetInCatalog", name)
		case !seen[name] && !notYetInCatalog[name]:
			t.Errorf("seed example %s is in no case of our catalog", name)
		}
	}
}

// notYetInCatalog would list seed policy files that have no case in gen.py
// yet, so that a known gap shows; it is empty: every file of conf/policies
// and conf/policies/demo is in our catalog, and a new file without a case
// fails the test.
var notYetInCatalog = map[string]bool{}
