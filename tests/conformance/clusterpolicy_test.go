package conformance

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/palisade-cni/palisade/tests/testbed"
)

const tinyCNP = `{"apiVersion":"policy.networking.k8s.io/v1beta1","kind":"ClusterNetworkPolicy",` +
	`"metadata":{"name":"c"},"spec":{"tier":"Admin","priority":5,"subject":{"namespaces":{}},` +
	`"egress":[{"action":"Deny","to":[{"networks":["{{hostCIDR x/b}}"]}]}]}}`

func TestClusterPolicySteps(t *testing.T) {
	listed := func(expected string) string {
		return `{"probe":{"port":80,"protocol":"TCP","target":"pod","pairs":"listed","ignore_loopback":true,"expected":` + expected + `}}`
	}
	checkSkipReasons(t, []skipReasonCase{
		{"create, update and delete a ClusterNetworkPolicy", []string{
			`{"apply":` + tinyCNP + `}`, `{"apply":` + tinyCNP + `,"mode":"update"}`,
			`{"delete":{"kind":"ClusterNetworkPolicy","name":"c"}}`,
			`{"delete":{"kind":"NetworkPolicy","namespace":"x","name":"p"}}`,
			listed(`{"x/a":{"x/b":false}}`)}, ""},
		{"wrong apiVersion", []string{`{"apply":{"apiVersion":"policy.networking.k8s.io/v1alpha1","kind":"ClusterNetworkPolicy"}}`}, `apiVersion "policy.networking.k8s.io/v1alpha1"`},
		{"unknown kind", []string{`{"apply":{"apiVersion":"v1","kind":"Service"}}`}, `kind "Service"`},
		{"template of an unknown pod in a CNP", []string{`{"apply":` + strings.ReplaceAll(tinyCNP, "x/b", "x/z") + `}`}, "no pod x/z"},
		{"a CNP has no namespace", []string{`{"delete":{"kind":"ClusterNetworkPolicy","namespace":"x","name":"c"}}`}, "has no namespace"},
		{"delete of an unknown kind", []string{`{"delete":{"kind":"Pod","namespace":"x","name":"a"}}`}, `kind "Pod"`},
		{"listed probe of no pair", []string{listed(`{}`)}, "lists no pair"},
		{"listed probe of a dead pod", []string{`{"delete_pod":{"namespace":"x","name":"b"}}`, listed(`{"x/a":{"x/b":true}}`)}, "not alive"},
		{"listed probe of an ignored loopback", []string{listed(`{"x/a":{"x/a":true}}`)}, "loopback"},
		{"unknown pairs mode", []string{`{"probe":{"port":80,"protocol":"TCP","target":"pod","pairs":"some","expected":{"x/a":{"x/b":true}}}}`}, `pairs "some"`},
		{"a partial table without listed", []string{`{"probe":{"port":80,"protocol":"TCP","target":"pod","ignore_loopback":true,"expected":{"x/a":{"x/b":true}}}}`}, "missing"},
	})
}

// TestPairsToProbe: a listed probe probes its pairs alone and counts the
// others as not asserted; a full one probes every pair.
func TestPairsToProbe(t *testing.T) {
	order := []string{"x/a", "x/b", "x/c"}
	tests := []struct {
		name        string
		probe       Probe
		want        []pair
		notAsserted int
	}{
		{"listed", Probe{Pairs: "listed", IgnoreLoopback: true, Expected: map[string]map[string]bool{"x/a": {"x/c": false}, "x/c": {"x/b": true}}},
			[]pair{{"x/a", "x/c"}, {"x/c", "x/b"}}, 4},
		{"all", Probe{IgnoreLoopback: true, Expected: map[string]map[string]bool{"x/a": {"x/c": false}}},
			[]pair{{"x/a", "x/b"}, {"x/a", "x/c"}, {"x/b", "x/a"}, {"x/b", "x/c"}, {"x/c", "x/a"}, {"x/c", "x/b"}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n := tt.probe.pairsToProbe(order)
			if !slices.Equal(got, tt.want) || n != tt.notAsserted {
				t.Errorf("pairsToProbe = %v, %d not asserted; want %v, %d", got, n, tt.want, tt.notAsserted)
			}
		})
	}
}

func TestDecodeClusterPolicy(t *testing.T) {
	tests := []struct {
		name, doc, want string // want: substring of the error, "" = decodes
	}{
		{"valid", strings.ReplaceAll(tinyCNP, "{{hostCIDR x/b}}", "10.244.1.2/32"), ""},
		{"unknown field", strings.Replace(tinyCNP, `"tier"`, `"tiers":"Admin","tier"`, 1), `unknown field "tiers"`},
		{"wrong apiVersion", strings.Replace(tinyCNP, "v1beta1", "v1alpha1", 1), "apiVersion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeClusterPolicy([]byte(tt.doc))
			if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("decodeClusterPolicy: %v, want %q", err, tt.want)
			}
		})
	}
}

// TestNetworkPolicyAPICatalog checks the transcription of the
// network-policy-api suite as the runner reads it: every case runs, of
// either channel (the node-peer ones at hostNetwork pods), every probe is
// a listed probe of pod IPs, and every
// policy decodes once its templates are filled.
func TestNetworkPolicyAPICatalog(t *testing.T) {
	dir := filepath.Join(testbed.ModuleRoot(t), "tests", "conformance", "network-policy-api")
	cat, err := Load(filepath.Join(dir, "model.json"), filepath.Join(dir, "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	// The experimental cases' fields survive only the experimental CRD.
	if crd, err := os.ReadFile(cat.Model.ClusterPolicyCRD); err != nil || !strings.Contains(string(crd), "policy.networking.k8s.io/channel: experimental") {
		t.Errorf("cluster_policy_crd %q: not the experimental channel's CRD (%v)", cat.Model.ClusterPolicyCRD, err)
	}
	standard := 0
	fakeIP := func(string) (netip.Addr, bool) { return netip.MustParseAddr("10.244.1.2"), true }
	for i := range cat.Cases {
		c := &cat.Cases[i]
		reason := cat.SkipReason(c)
		switch {
		case slices.Contains(c.Tags, "Channel:Standard"):
			standard++
			if reason != "" {
				t.Errorf("%s: standard-channel case skips: %s", c.ID, reason)
			}
		case slices.Contains(c.Tags, "Channel:Experimental"):
			if reason != "" {
				t.Errorf("%s: experimental case skips: %s", c.ID, reason)
			}
		default:
			t.Errorf("%s: no channel tag in %v", c.ID, c.Tags)
		}
		probes, hostProbes := 0, 0
		for j, s := range c.Setup {
			kind, _ := s.Kind()
			switch kind {
			case "probe":
				var p Probe
				if err := s.Decode(kind, &p); err != nil {
					t.Fatal(err)
				}
				if p.Pairs != "listed" || p.Target != "pod" {
					t.Errorf("%s step %d: probe pairs %q target %q, want listed pod-IP probes as upstream pokes", c.ID, j+1, p.Pairs, p.Target)
				}
				probes++
				for _, to := range p.Expected {
					for id := range to {
						if mp, _ := cat.Model.Pod(id); mp.HostNetwork {
							hostProbes++
						}
					}
				}
			case "apply":
				if !isClusterPolicy(s["apply"]) {
					continue
				}
				var doc any
				if err := json.Unmarshal(s["apply"], &doc); err != nil {
					t.Fatal(err)
				}
				filled, err := fillTemplates(doc, fakeIP)
				if err != nil {
					t.Fatal(err)
				}
				data, _ := json.Marshal(filled)
				if _, err := decodeClusterPolicy(data); err != nil {
					t.Errorf("%s step %d: %v", c.ID, j+1, err)
				}
			}
		}
		if probes == 0 {
			t.Errorf("%s: no probe", c.ID)
		}
		// A node peer is a node's address: only a hostNetwork pod
		// listens there.
		if needsHost := slices.Contains(c.Tags, "Needs:HostNetworkPods"); needsHost != (hostProbes > 0) {
			t.Errorf("%s: tagged Needs:HostNetworkPods %v, %d probes of hostNetwork pods", c.ID, needsHost, hostProbes)
		}
	}
	// v0.3.0: 103 subtests of the standard channel (go.mod pins it).
	if standard != 103 {
		t.Errorf("%d standard-channel cases, want 103", standard)
	}
}
