package conformance

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// fakeAgent answers explain as an agent does: it judges the egress of its
// own pods and the ingress of its own pods, and leaves the rest to notes.
type fakeAgent struct {
	node  string
	local map[string]bool            // pod ids on this node
	ip    map[string]string          // pod IP -> pod id
	deny  map[string]bool            // "egress from->to" / "ingress from->to" denied
	flip  map[string]int             // pair -> wrong answers left (a lagging snapshot)
	fail  error                      // every call fails
	mu    sync.Mutex                 //
	asked map[string][]string        // pair -> nodes asked, for the test
	reqs  []*agentapi.ExplainRequest //
}

func (f *fakeAgent) Explain(_ context.Context, req *agentapi.ExplainRequest) ([]agentapi.Explanation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.fail != nil {
		return nil, f.fail
	}
	to := f.ip[req.To]
	key := req.From + "->" + to
	lag := f.flip[key] > 0
	if lag {
		f.flip[key]--
	}
	verdict := func(dir string) *agentapi.DirectionVerdict {
		ok := !f.deny[dir+" "+key]
		if lag {
			ok = !ok
		}
		return &agentapi.DirectionVerdict{Allowed: ok, Reason: dir + " reason of " + f.node}
	}
	x := agentapi.Explanation{Allowed: true}
	if f.local[req.From] {
		x.Egress = verdict("egress")
		x.Allowed = x.Allowed && x.Egress.Allowed
	}
	if f.local[to] {
		x.Ingress = verdict("ingress")
		x.Allowed = x.Allowed && x.Ingress.Allowed
	}
	return []agentapi.Explanation{x}, nil
}

// twoNodes is x/a and x/c on node-1, x/b on node-2.
func twoNodes() (*explainer, map[string]*fakeAgent) {
	ips := map[string]string{"10.0.0.1": "x/a", "10.0.0.2": "x/b", "10.0.0.3": "x/c"}
	node := map[string]string{"x/a": "node-1", "x/b": "node-2", "x/c": "node-1"}
	fakes := map[string]*fakeAgent{}
	agents := map[string]Explainer{}
	for _, n := range []string{"node-1", "node-2"} {
		f := &fakeAgent{node: n, local: map[string]bool{}, ip: ips, deny: map[string]bool{}, flip: map[string]int{}}
		for id, on := range node {
			f.local[id] = on == n
		}
		fakes[n], agents[n] = f, f
	}
	x := &explainer{
		// Room for one retry round (retryPause), so that "late" shows.
		deadline: 3 * retryPause,
		agents:   agents,
		nodeOf:   func(id string) string { return node[id] },
		podIP: func(id string) (netip.Addr, bool) {
			for ip, pid := range ips {
				if pid == id {
					return netip.MustParseAddr(ip), true
				}
			}
			return netip.Addr{}, false
		},
	}
	return x, fakes
}

func TestExplainCheck(t *testing.T) {
	ids := []string{"x/a", "x/b", "x/c"}
	var pairs []pair
	for _, a := range ids {
		for _, b := range ids {
			if a != b {
				pairs = append(pairs, pair{a, b})
			}
		}
	}
	all := func(v bool) Matrix {
		m := Matrix{}
		for _, pp := range pairs {
			m.set(pp.from, pp.to, v)
		}
		return m
	}
	tests := []struct {
		name     string
		setup    func(map[string]*fakeAgent)
		observed Matrix
		want     []string // disagreeing pairs
		why      string   // substring of the first disagreement's Why
		late     int
		allowed  int
	}{
		{name: "all allowed, all observed", observed: all(true), allowed: 6},
		{name: "ingress denied on the destination's node, and observed so", setup: func(f map[string]*fakeAgent) {
			f["node-2"].deny["ingress x/a->x/b"] = true
		}, observed: func() Matrix { m := all(true); m.set("x/a", "x/b", false); return m }(), allowed: 5},
		{name: "egress denied on the source's node, but observed connecting", setup: func(f map[string]*fakeAgent) {
			f["node-1"].deny["egress x/c->x/b"] = true
		}, observed: all(true), want: []string{"x/c->x/b"}, why: "egress on node-1: egress reason of node-1 (allowed=false); ingress on node-2: ingress reason of node-2 (allowed=true)", allowed: 5},
		{name: "a denial judged by the wrong node is not taken", setup: func(f map[string]*fakeAgent) {
			// node-1 does not judge x/b's ingress, so this is never asked.
			f["node-1"].deny["ingress x/a->x/b"] = true
		}, observed: all(true), allowed: 6},
		{name: "explain allows what the datapath dropped", observed: func() Matrix { m := all(true); m.set("x/b", "x/a", false); return m }(),
			want: []string{"x/b->x/a"}, why: "allowed=true", allowed: 5},
		{name: "same node: one agent judges both directions", setup: func(f map[string]*fakeAgent) {
			f["node-1"].deny["ingress x/a->x/c"] = true
		}, observed: all(true), want: []string{"x/a->x/c"}, why: "ingress on node-1: ingress reason of node-1 (allowed=false)", allowed: 5},
		{name: "an agent that errs is a disagreement, not a pass", setup: func(f map[string]*fakeAgent) {
			f["node-2"].fail = errors.New("agent unavailable")
		}, observed: all(true), want: []string{"x/a->x/b", "x/b->x/a", "x/b->x/c", "x/c->x/b"}, why: "agent unavailable", allowed: 2},
		{name: "a lagging answer that corrects itself counts as late", setup: func(f map[string]*fakeAgent) {
			f["node-2"].flip["x/a->x/b"] = 1
		}, observed: all(true), late: 1, allowed: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x, fakes := twoNodes()
			if tt.setup != nil {
				tt.setup(fakes)
			}
			c := x.check(pairs, 8080, corev1.ProtocolTCP, tt.observed, all(true))
			var got []string
			for _, d := range c.Disagreements {
				got = append(got, d.Pair)
				if d.Port != 8080 || d.Protocol != corev1.ProtocolTCP {
					t.Errorf("%s: port %s/%d, want TCP/8080", d.Pair, d.Protocol, d.Port)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("disagreements (-want +got):\n%s", diff)
			}
			if len(c.Disagreements) > 0 && !strings.Contains(c.Disagreements[0].Why, tt.why) {
				t.Errorf("why %q lacks %q", c.Disagreements[0].Why, tt.why)
			}
			if c.Late != tt.late || c.Allowed != tt.allowed || c.Pairs != len(pairs) {
				t.Errorf("late %d allowed %d pairs %d, want %d %d %d", c.Late, c.Allowed, c.Pairs, tt.late, tt.allowed, len(pairs))
			}
		})
	}
}

// TestExplainAsksTheRightNodes checks which agent is asked what: the
// source's node always, the destination's node when it is another, with
// the destination's pod IP and the port given.
func TestExplainAsksTheRightNodes(t *testing.T) {
	x, fakes := twoNodes()
	v := x.explainPair(context.Background(), pair{"x/a", "x/b"}, 8081, corev1.ProtocolUDP)
	if v.err != nil || !v.allowed || v.calls != 2 {
		t.Fatalf("cross-node pair: %+v", v)
	}
	want := []*agentapi.ExplainRequest{{From: "x/a", To: "10.0.0.2", Port: 8081, Protocol: "UDP"}}
	for _, n := range []string{"node-1", "node-2"} {
		if diff := cmp.Diff(want, fakes[n].reqs); diff != "" {
			t.Errorf("%s asked (-want +got):\n%s", n, diff)
		}
	}
	x, fakes = twoNodes()
	if v := x.explainPair(context.Background(), pair{"x/c", "x/a"}, 80, corev1.ProtocolTCP); v.err != nil || v.calls != 1 {
		t.Fatalf("same-node pair: %+v", v)
	}
	if len(fakes["node-2"].reqs) != 0 {
		t.Errorf("node-2 asked about a pair of node-1: %v", fakes["node-2"].reqs)
	}
}

func TestCombineNeedsBothDirections(t *testing.T) {
	yes := &agentapi.DirectionVerdict{Allowed: true, Reason: "r"}
	no := &agentapi.DirectionVerdict{Allowed: false, Reason: "r"}
	for _, tt := range []struct {
		name    string
		eg, in  *agentapi.DirectionVerdict
		allowed bool
		err     string
	}{
		{"both allow", yes, yes, true, ""},
		{"egress denies", no, yes, false, ""},
		{"ingress denies", yes, no, false, ""},
		{"egress not judged", nil, yes, false, "did not judge the source's egress"},
		{"ingress not judged", yes, nil, false, "did not judge the destination's ingress"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			allowed, _, err := combine(tt.eg, "n1", tt.in, "n2")
			if allowed != tt.allowed || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("combine = %v, %v; want %v, %q", allowed, err, tt.allowed, tt.err)
			}
		})
	}
}

func TestExplainInReport(t *testing.T) {
	var buf bytes.Buffer
	r := NewReport(&buf, "tiny", []string{"x/a", "x/b"})
	r.Add(CaseResult{ID: "c1", Name: "first", Status: Pass, Probes: []ProbeResult{{Step: "step 2", Explain: &ExplainCheck{
		Pairs: 2, Calls: 3, Allowed: 0,
		Disagreements: []ExplainDisagreement{{Pair: "x/a->x/b", Port: 80, Protocol: "TCP", Explain: false, Observed: true, Expected: true, Why: "egress on node-1: no policy allows it"}},
	}}}})
	r.Finish()
	out := buf.String()
	for _, want := range []string{
		"PASS c1 first",
		"EXPLAIN DISAGREES step 2: x/a->x/b TCP/80: explain allowed=false, observed true, expected true: egress on node-1: no policy allows it",
		"explain: 2 pairs of 1 probe steps explained (3 agent calls, 0.0s): 1 agree (0 allowed, 1 denied), 1 disagree",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if lines := strings.Split(strings.TrimRight(out, "\n"), "\n"); lines[len(lines)-1] != "1 passed, 0 failed, 0 skipped" {
		t.Errorf("last line %q is not the summary", lines[len(lines)-1])
	}
}
