package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// flowDeadline is the bound: a denied connection shows in flows
// within a second.
const flowDeadline = time.Second

// Policies of the observability scenario, beside conf/policies' own.
const (
	// frontendEgress isolates frontend's egress: it may reach backends on
	// any port, and lab's pods on TCP 80 only.
	frontendEgress = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
spec:
  podSelector:
    matchLabels:
      role: frontend
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels:
          role: backend
  - to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: lab
    ports:
    - port: 80
`
	// labIngress isolates lab's pods: prod's pods labelled role=other may
	// send UDP 80, nobody else anything.
	labIngress = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: lab-ingress
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: prod
      podSelector:
        matchLabels:
          role: other
    ports:
    - protocol: UDP
      port: 80
`
)

func writePolicy(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPrivilegedObservability runs palisadectl's questions against a real
// agent: flows, metrics, and explain against probes.
func TestPrivilegedObservability(t *testing.T) {
	env := newOneNodeArgs(t, "--flow-sample-rate=1")
	root := testbed.ModuleRoot(t)
	env.cp.ApplyPolicy(t, "prod", filepath.Join(root, "conf", "policies", "backend-access.yaml"))
	env.cp.ApplyPolicy(t, "prod", writePolicy(t, frontendEgress))
	env.cp.ApplyPolicy(t, "lab", writePolicy(t, labIngress))
	// backend is isolated for ingress, frontend for egress, lab's pods for
	// ingress; prod's other ingress stays open, so the scenario has both
	// verdicts in both directions. The policies are in the maps once the
	// known pairs flip.
	eventually(t,
		expect{env.frontend, env.backend, 6379, corev1.ProtocolTCP, testbed.Connected},
		expect{env.other, env.backend, 6379, corev1.ProtocolTCP, testbed.TimedOut},
		expect{env.frontend, env.outsider, 80, corev1.ProtocolUDP, testbed.TimedOut},
		expect{env.other, env.outsider, 80, corev1.ProtocolUDP, testbed.Connected},
	)

	t.Run("a denied connection appears in flows within a second", func(t *testing.T) { deniedFlow(t, env) })
	t.Run("explain agrees with probes on every pair and port", func(t *testing.T) { explainMatchesProbes(t, env) })
	t.Run("metrics scrape and parse", func(t *testing.T) { scrapeMetrics(t, env) })
	t.Run("palisadectl answers in words", func(t *testing.T) { palisadectl(t, env) })
}

func palisadectl(t *testing.T, env *oneNode) {
	bin := filepath.Join(t.TempDir(), "palisadectl")
	build := exec.Command("go", "build", "-o", bin, "./daemon/cmd/palisadectl")
	build.Dir = testbed.ModuleRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build palisadectl: %v\n%s", err, out)
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"status"}, []string{"Ready:            yes", "API server:       connected", "Endpoints:        4", "NetworkPolicies:  3", "Map endpoints:    4 / 4096"}},
		{[]string{"endpoints"}, []string{"prod/backend", "isolated", "prod/backend-access"}},
		{[]string{"policy", "prod/backend"}, []string{
			"Ingress: isolated by prod/backend-access",
			"allow ingress from pods {role=frontend} in namespace prod (frontend) on TCP port 6379 (prod/backend-access ingress[0])",
			"map key {identity", "Egress: not isolated"}},
		{[]string{"explain", "--from", "prod/other", "--to", "prod/backend:6379/TCP"}, []string{
			"prod/other (" + env.other.IP().String() + ") -> prod/backend (" + env.backend.IP().String() + ") TCP/6379: DENIED",
			"is not among its peers", `To allow it: add {"podSelector":{"matchLabels":{"role":"other"}}} to the from of prod/backend-access ingress[0]`}},
		{[]string{"explain", "--from", "prod/frontend", "--to", "lab/outsider:80/UDP"}, []string{
			"DENIED", "egress of prod/frontend denies", "the peer matches, but it allows only TCP 80",
			"add {protocol: UDP, port: 80} to the ports of prod/frontend-egress egress[1]"}},
		{[]string{"flows", "--pod", "prod/backend", "--verdict", "dropped"}, []string{"dropped", "prod/other " + env.other.IP().String(), "no policy allows"}},
	} {
		cmd := exec.Command(bin, append(c.args, "--socket", env.agent.Socket())...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("palisadectl %s: %v\n%s", strings.Join(c.args, " "), err, out)
			continue
		}
		for _, w := range c.want {
			// Column widths follow the longest label (a map's name): compare
			// words, not padding.
			if !strings.Contains(strings.Join(strings.Fields(string(out)), " "), strings.Join(strings.Fields(w), " ")) {
				t.Errorf("palisadectl %s: output lacks %q:\n%s", strings.Join(c.args, " "), w, out)
			}
		}
		t.Logf("palisadectl %s\n%s", strings.Join(c.args, " "), out)
	}
}

func deniedFlow(t *testing.T, env *oneNode) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan agentapi.Flow, 64)
	streaming := make(chan error, 1)
	go func() {
		streaming <- env.agent.Client().Flows(ctx, agentapi.FlowFilter{Pod: "prod/backend", Verdict: agentapi.FlowDropped, Follow: true},
			func(f *agentapi.Flow) error {
				got <- *f
				return nil
			})
	}()
	// The stream first replays recent flows; the denied probes of the setup
	// are among them. Drain them so that only new flows count.
	drain := time.After(300 * time.Millisecond)
	for draining := true; draining; {
		select {
		case <-got:
		case <-drain:
			draining = false
		}
	}
	// A port nobody probed before, so the flow cannot be an old one.
	start := time.Now()
	go testbed.Probe(ctx, env.other, env.backend.IP(), 8080, corev1.ProtocolTCP)
	want := agentapi.Flow{Verdict: "dropped", Reason: "policy", Direction: "ingress", Pod: "prod/backend", Protocol: "TCP", Summary: "no policy allows"}
	deadline := time.After(flowDeadline)
	for {
		select {
		case f := <-got:
			if f.Destination.Port != 8080 || f.Source.Pod != "prod/other" {
				continue
			}
			if f.Verdict != want.Verdict || f.Reason != want.Reason || f.Direction != want.Direction || f.Pod != want.Pod ||
				f.Protocol != want.Protocol || f.Summary != want.Summary || f.Destination.Pod != "prod/backend" ||
				f.Source.IP != env.other.IP().String() || f.Destination.IP != env.backend.IP().String() {
				t.Errorf("flow %+v, want %+v from prod/other to prod/backend:8080", f, want)
			}
			t.Logf("flow seen %s after the probe started: %s -> %s:%d %s", time.Since(start), f.Source.Pod, f.Destination.Pod, f.Destination.Port, f.Summary)
			return
		case err := <-streaming:
			t.Fatalf("flow stream ended: %v", err)
		case <-deadline:
			t.Fatalf("no dropped flow prod/other -> prod/backend TCP 8080 within %s", flowDeadline)
		}
	}
}

func explainMatchesProbes(t *testing.T, env *oneNode) {
	pods := []*testbed.Pod{env.backend, env.frontend, env.other, env.outsider}
	type pair struct {
		from, to *testbed.Pod
		port     corev1.ContainerPort
	}
	var pairs []pair
	var specs []testbed.ProbeSpec
	for _, from := range pods {
		for _, to := range pods {
			if from == to {
				continue
			}
			for _, c := range to.Object().Spec.Containers {
				for _, p := range c.Ports {
					pairs = append(pairs, pair{from, to, p})
					specs = append(specs, testbed.ProbeSpec{From: from, To: to.IP(), Port: int(p.ContainerPort), Protocol: p.Protocol})
				}
			}
		}
	}
	ctx := context.Background()
	verdicts := testbed.ProbeMatrix(ctx, specs)
	var wrong []string
	allowed, denied := 0, 0
	for i, p := range pairs {
		xs, err := env.agent.Client().Explain(ctx, &agentapi.ExplainRequest{
			From: p.from.String(), To: p.to.String(), Port: uint16(p.port.ContainerPort), Protocol: string(p.port.Protocol),
		})
		if err != nil {
			t.Fatalf("explain %s: %v", specs[i], err)
		}
		if len(xs) != 1 {
			t.Fatalf("explain %s: %d answers, want 1", specs[i], len(xs))
		}
		// Refused means the packet reached the pod: the policy let it in.
		reached := verdicts[i].Outcome == testbed.Connected || verdicts[i].Outcome == testbed.Refused
		if xs[0].Allowed != reached {
			wrong = append(wrong, fmt.Sprintf("%s: explain says allowed=%v (%s), probe %s", specs[i], xs[0].Allowed, reasons(xs[0]), verdicts[i]))
		}
		if reached {
			allowed++
		} else {
			denied++
		}
	}
	t.Logf("%d pairs: %d allowed, %d denied", len(pairs), allowed, denied)
	if len(wrong) > 0 {
		t.Errorf("explain and the datapath disagree:\n%s", strings.Join(wrong, "\n"))
	}
	if allowed == 0 || denied == 0 {
		t.Errorf("the scenario must have both verdicts; got %d allowed, %d denied", allowed, denied)
	}
}

func reasons(x agentapi.Explanation) string {
	var s []string
	for _, d := range []*agentapi.DirectionVerdict{x.Egress, x.Ingress} {
		if d != nil {
			s = append(s, d.Reason)
		}
	}
	return strings.Join(s, "; ")
}

func scrapeMetrics(t *testing.T, env *oneNode) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: env.node.NetNS.DialContext}}
	resp, err := hc.Get("http://127.0.0.1:9879/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	get := func(name string, labels map[string]string) (float64, error) {
		fam, ok := fams[name]
		if !ok {
			return 0, errors.New("missing")
		}
		for _, m := range fam.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), nil
			case m.Gauge != nil:
				return m.Gauge.GetValue(), nil
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), nil
			}
		}
		return 0, fmt.Errorf("no series with %v", labels)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		check  func(float64) bool
		want   string
	}{
		{"palisade_verdicts_total", map[string]string{"direction": "ingress", "reason": "policy"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"palisade_verdicts_total", map[string]string{"direction": "egress", "reason": "policy"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"palisade_verdicts_total", map[string]string{"direction": "ingress", "reason": "allowed"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"palisade_endpoints", nil, func(v float64) bool { return v == 4 }, "4"},
		{"palisade_policies", nil, func(v float64) bool { return v == 3 }, "3"},
		{"palisade_identities", nil, func(v float64) bool { return v >= 4 }, ">= 4"},
		{"palisade_map_entries", map[string]string{"map": "endpoints"}, func(v float64) bool { return v == 4 }, "4"},
		{"palisade_map_capacity", map[string]string{"map": "conntrack-tcp"}, func(v float64) bool { return v > 0 }, "> 0"},
		{"palisade_policy_compile_duration_seconds", nil, func(v float64) bool { return v >= 1 }, ">= 1 observation"},
		{"palisade_map_sync_duration_seconds", nil, func(v float64) bool { return v >= 1 }, ">= 1 observation"},
		{"palisade_flow_events_total", map[string]string{"verdict": "dropped"}, func(v float64) bool { return v >= 1 }, ">= 1"},
		{"palisade_flow_events_total", map[string]string{"verdict": "allowed"}, func(v float64) bool { return v >= 1 }, ">= 1 (sampling every allowed flow)"},
		{"palisade_events_lost_total", map[string]string{"cause": "rate-limit"}, func(v float64) bool { return v >= 0 }, "present"},
	} {
		v, err := get(c.name, c.labels)
		if err != nil {
			t.Errorf("%s%v: %v", c.name, c.labels, err)
			continue
		}
		if !c.check(v) {
			t.Errorf("%s%v = %v, want %s", c.name, c.labels, v, c.want)
		}
	}
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}
