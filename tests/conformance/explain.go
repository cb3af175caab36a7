package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// The explain check (issue #6): after each probe step, every probed pair is
// explained by the agents (`palisadectl explain`'s API), and explain's
// verdict must be what the datapath did. An agent judges only its own pods:
// the source's egress is asked of the source's node, the destination's
// ingress of the destination's node, and the pair is allowed only if both
// allow. Probes go to a Service ClusterIP and explain works on pod IPs, so
// explain is asked about the destination pod's IP and the Service's target
// port.

const (
	// explainDeadline bounds the re-asking of a pair whose explanation
	// disagrees with the observation: the probe step has converged, so an
	// agent may at most be about to publish the snapshot of what it has
	// just written. A pair that agrees only on a later round is counted
	// (Late), so such lag shows in the report.
	explainDeadline = 3 * time.Second
	// explainParallelism bounds the explain calls in flight.
	explainParallelism = 8
	// explainTimeout bounds one explain call.
	explainTimeout = 5 * time.Second
)

// Explainer is one agent's explain API (agentapi.Client).
type Explainer interface {
	Explain(ctx context.Context, req *agentapi.ExplainRequest) ([]agentapi.Explanation, error)
}

// ExplainCheck is the explain check of one probe step.
type ExplainCheck struct {
	Pairs   int     `json:"pairs"`
	Calls   int     `json:"calls"`
	Rounds  int     `json:"rounds"`
	Seconds float64 `json:"seconds"`
	// Late counts the pairs explain got right only after being asked
	// again.
	Late int `json:"late,omitempty"`
	// Allowed counts the pairs explain allowed, so that a run shows it
	// judged both ways.
	Allowed       int                   `json:"allowed"`
	Disagreements []ExplainDisagreement `json:"disagreements,omitempty"`
}

// ExplainDisagreement is a pair on which explain's verdict is not what the
// datapath did (or explain could not give one).
type ExplainDisagreement struct {
	Pair     string          `json:"pair"` // from->to
	Port     int             `json:"port"` // the destination pod's port
	Protocol corev1.Protocol `json:"protocol"`
	Explain  bool            `json:"explain"`
	Observed bool            `json:"observed"`
	Expected bool            `json:"expected"`
	// Why is explain's reasons, direction by direction with the node
	// that judged, or the error that kept it from judging.
	Why string `json:"why"`
}

func (d ExplainDisagreement) String() string {
	return fmt.Sprintf("%s %s/%d: explain allowed=%v, observed %v, expected %v: %s",
		d.Pair, d.Protocol, d.Port, d.Explain, d.Observed, d.Expected, d.Why)
}

// explainer asks the agents of a testbed about pairs of model pods.
type explainer struct {
	agents map[string]Explainer // by node name
	nodeOf func(id string) string
	podIP  func(id string) (netip.Addr, bool)
	// hostNetwork reports a hostNetwork pod: no program of any node judges
	// what it receives or sends.
	hostNetwork func(id string) bool
	// deadline is explainDeadline, shorter in unit tests.
	deadline time.Duration
}

// pairVerdict is explain's combined verdict on one pair.
type pairVerdict struct {
	allowed bool
	why     string
	err     error
	calls   int
}

// explainPair asks the source's node for its egress and the destination's
// node for its ingress (one call when both run on the same node).
func (x *explainer) explainPair(ctx context.Context, pp pair, port int, proto corev1.Protocol) pairVerdict {
	dstIP, ok := x.podIP(pp.to)
	if !ok {
		return pairVerdict{err: fmt.Errorf("no IP for %s", pp.to)}
	}
	req := &agentapi.ExplainRequest{From: pp.from, To: dstIP.String(), Port: uint16(port), Protocol: string(proto)}
	ask := func(node string) (*agentapi.Explanation, error) {
		a, ok := x.agents[node]
		if !ok {
			return nil, fmt.Errorf("no agent on node %s", node)
		}
		ctx, cancel := context.WithTimeout(ctx, explainTimeout)
		defer cancel()
		xs, err := a.Explain(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("explain %s -> %s:%d/%s on node %s: %w", req.From, req.To, port, proto, node, err)
		}
		if len(xs) != 1 {
			return nil, fmt.Errorf("explain %s -> %s:%d/%s on node %s: %d answers, want 1", req.From, req.To, port, proto, node, len(xs))
		}
		return &xs[0], nil
	}
	srcNode, dstNode := x.nodeOf(pp.from), x.nodeOf(pp.to)
	v := pairVerdict{}
	// A hostNetwork pod's direction is no node's to judge: allowed.
	unjudged := &agentapi.Explanation{
		Egress:  &agentapi.DirectionVerdict{Allowed: true, Reason: "a hostNetwork pod's egress: no program sees it"},
		Ingress: &agentapi.DirectionVerdict{Allowed: true, Reason: "a hostNetwork pod's ingress: no program sees it"},
	}
	eg, in := unjudged, unjudged
	var err error
	if !x.isHostNetwork(pp.from) {
		v.calls++
		if eg, err = ask(srcNode); err != nil {
			v.err = err
			return v
		}
	}
	switch {
	case x.isHostNetwork(pp.to):
	case dstNode == srcNode && eg != unjudged:
		in = eg
	default:
		v.calls++
		if in, err = ask(dstNode); err != nil {
			v.err = err
			return v
		}
	}
	v.allowed, v.why, v.err = combine(eg.Egress, srcNode, in.Ingress, dstNode)
	return v
}

func (x *explainer) isHostNetwork(id string) bool { return x.hostNetwork != nil && x.hostNetwork(id) }

// combine is the pair's verdict from the two directions, each judged on its
// pod's node; a direction the agent did not judge is an error, not a guess.
func combine(egress *agentapi.DirectionVerdict, srcNode string, ingress *agentapi.DirectionVerdict, dstNode string) (bool, string, error) {
	if egress == nil {
		return false, "", fmt.Errorf("node %s did not judge the source's egress", srcNode)
	}
	if ingress == nil {
		return false, "", fmt.Errorf("node %s did not judge the destination's ingress", dstNode)
	}
	why := fmt.Sprintf("egress on %s: %s (allowed=%v); ingress on %s: %s (allowed=%v)",
		srcNode, egress.Reason, egress.Allowed, dstNode, ingress.Reason, ingress.Allowed)
	return egress.Allowed && ingress.Allowed, why, nil
}

// check explains pairs and compares each verdict with observed, asking a
// disagreeing pair again until explainDeadline.
func (x *explainer) check(pairs []pair, port int, proto corev1.Protocol, observed, expected Matrix) *ExplainCheck {
	start := time.Now()
	ctx := context.Background()
	out := &ExplainCheck{Pairs: len(pairs)}
	pending := pairs
	var last map[pair]pairVerdict
	for {
		out.Rounds++
		verdicts := make([]pairVerdict, len(pending))
		sem := make(chan struct{}, explainParallelism)
		var wg sync.WaitGroup
		for i, pp := range pending {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				verdicts[i] = x.explainPair(ctx, pp, port, proto)
			})
		}
		wg.Wait()
		last = map[pair]pairVerdict{}
		var again []pair
		for i, pp := range pending {
			v := verdicts[i]
			out.Calls += v.calls
			obs, _ := observed.get(pp.from, pp.to)
			switch {
			case v.err != nil || v.allowed != obs:
				again = append(again, pp)
				last[pp] = v
				continue
			case out.Rounds > 1:
				out.Late++
			}
			if v.allowed {
				out.Allowed++
			}
		}
		pending = again
		if len(pending) == 0 || time.Since(start)+retryPause > x.deadline {
			break
		}
		time.Sleep(retryPause)
	}
	for _, pp := range pending {
		v := last[pp]
		obs, _ := observed.get(pp.from, pp.to)
		want, _ := expected.get(pp.from, pp.to)
		why := v.why
		if v.err != nil {
			why = v.err.Error()
		}
		out.Disagreements = append(out.Disagreements, ExplainDisagreement{
			Pair: pp.from + "->" + pp.to, Port: port, Protocol: proto,
			Explain: v.allowed, Observed: obs, Expected: want, Why: why,
		})
	}
	// In the order of the pairs, as the tables are.
	slices.SortStableFunc(out.Disagreements, func(a, b ExplainDisagreement) int {
		return indexOf(pairs, a.Pair) - indexOf(pairs, b.Pair)
	})
	out.Seconds = time.Since(start).Seconds()
	return out
}

func indexOf(pairs []pair, key string) int {
	return slices.IndexFunc(pairs, func(pp pair) bool { return pp.from+"->"+pp.to == key })
}

// explainer returns the testbed's explainer, with one agent client per
// node.
func (e *Env) explainer() *explainer {
	if e.explain == nil {
		agents := map[string]Explainer{}
		for _, n := range e.Nodes {
			agents[n.Name] = agentapi.NewClient(n.AgentSocket())
		}
		hostNetwork := func(id string) bool { p, ok := e.Pods[id]; return ok && p.HostNetwork() }
		e.explain = &explainer{agents: agents, nodeOf: e.NodeOf, podIP: e.podIP, hostNetwork: hostNetwork, deadline: explainDeadline}
	}
	return e.explain
}

// explainProbe runs the explain check on a probe step's pairs, at the
// destination pod's port: the Service's target port for a Service probe.
func (e *Env) explainProbe(p *Probe, pr *ProbeResult) *ExplainCheck {
	var pairs []pair
	for _, from := range e.order {
		for _, to := range e.order {
			if _, probed := pr.Observed.get(from, to); probed {
				pairs = append(pairs, pair{from, to})
			}
		}
	}
	// Every destination of one probe has the same target port in the
	// catalogs, but a pair whose Service is missing is left out of the
	// check: the probe itself already failed it as invalid.
	byPort := map[int][]pair{}
	var ports []int
	for _, pp := range pairs {
		port := p.Port
		if pr.Target != "pod" {
			ls, ok := e.serviceOf(pp.to, p.Port, p.Protocol)
			if !ok {
				continue
			}
			for _, sp := range ls.spec.Ports {
				if int(sp.Port) == p.Port && sp.Protocol == p.Protocol {
					port = int(sp.Target())
				}
			}
		}
		if _, ok := byPort[port]; !ok {
			ports = append(ports, port)
		}
		byPort[port] = append(byPort[port], pp)
	}
	total := &ExplainCheck{}
	start := time.Now()
	for _, port := range ports {
		observed, expected := explainBasis(p, pr)
		c := e.explainer().check(byPort[port], port, p.Protocol, observed, expected)
		total.Pairs += c.Pairs
		total.Calls += c.Calls
		total.Rounds = max(total.Rounds, c.Rounds)
		total.Late += c.Late
		total.Allowed += c.Allowed
		total.Disagreements = append(total.Disagreements, c.Disagreements...)
	}
	total.Seconds = time.Since(start).Seconds()
	return total
}

// ExplainDisagreements are a case's explain disagreements, formatted, each
// with its probe step.
func (c CaseResult) ExplainDisagreements() []string {
	var out []string
	for _, p := range c.Probes {
		if p.Explain == nil {
			continue
		}
		for _, d := range p.Explain.Disagreements {
			out = append(out, p.Step+": "+d.String())
		}
	}
	return out
}

// formatExplain is the explain check's lines for a case report.
func formatExplain(c CaseResult) string {
	var b strings.Builder
	for _, d := range c.ExplainDisagreements() {
		fmt.Fprintf(&b, "    EXPLAIN DISAGREES %s\n", d)
	}
	return b.String()
}

// ExplainTotal totals a catalog's explain checks.
type ExplainTotal struct {
	Probes        int     `json:"probes"`
	Pairs         int     `json:"pairs"`
	Calls         int     `json:"calls"`
	Seconds       float64 `json:"seconds"`
	Late          int     `json:"late"`
	Allowed       int     `json:"allowed"`
	Disagreements int     `json:"disagreements"`
}

// Summary is the report's explain line.
func (t *ExplainTotal) Summary() string {
	return fmt.Sprintf("explain: %d pairs of %d probe steps explained (%d agent calls, %.1fs): %d agree (%d allowed, %d denied), %d disagree with the datapath, %d agreed only when asked again",
		t.Pairs, t.Probes, t.Calls, t.Seconds, t.Pairs-t.Disagreements, t.Allowed, t.Pairs-t.Disagreements-t.Allowed, t.Disagreements, t.Late)
}

func (r *Report) addExplain(c CaseResult) {
	for _, p := range c.Probes {
		if p.Explain == nil {
			continue
		}
		if r.Explain == nil {
			r.Explain = &ExplainTotal{}
		}
		t := r.Explain
		t.Probes++
		t.Pairs += p.Explain.Pairs
		t.Calls += p.Explain.Calls
		t.Seconds += p.Explain.Seconds
		t.Late += p.Explain.Late
		t.Allowed += p.Explain.Allowed
		t.Disagreements += len(p.Explain.Disagreements)
	}
}
