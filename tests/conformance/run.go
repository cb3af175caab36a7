package conformance

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

const (
	// ProbeDeadline is how long a pair whose result differs from the
	// expected one is retried before it counts as a failure (upstream:
	// 10 s per pair).
	ProbeDeadline = 10 * time.Second
	// retryPause separates the rounds of retries of mismatched pairs.
	retryPause = 200 * time.Millisecond
	// parallelism bounds the probes in flight; each holds an OS thread in
	// a namespace for up to testbed.ProbeTimeout.
	parallelism = 32
)

// Status is a case's result.
type Status string

// The three results of a case.
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// CaseResult is the result of one case.
type CaseResult struct {
	ID      string        `json:"id"`
	Name    string        `json:"name"`
	Status  Status        `json:"status"`
	Seconds float64       `json:"seconds"`
	Reason  string        `json:"reason,omitempty"`
	Probes  []ProbeResult `json:"probes,omitempty"`
}

// ProbeResult is the result of one probe step (or readiness check).
type ProbeResult struct {
	Step     string          `json:"step"`
	Port     int             `json:"port"`
	Protocol corev1.Protocol `json:"protocol"`
	Target   string          `json:"target"`
	// Method says how the verdict was obtained: "connect", or for SCTP
	// "association" or "init-arrival" (the forward verdict only).
	Method string `json:"method"`
	// Family is the address family probed, with --family 6 or dual.
	Family     string            `json:"family,omitempty"`
	Seconds    float64           `json:"seconds"`
	Rounds     int               `json:"rounds"`
	Pairs      int               `json:"pairs"`
	Expected   Matrix            `json:"expected"`
	Observed   Matrix            `json:"observed"`
	Mismatches []string          `json:"mismatches,omitempty"`
	Details    map[string]string `json:"details,omitempty"`
	// Explain is the explain check of a probe step, with Env.Explain.
	Explain *ExplainCheck `json:"explain,omitempty"`
	// NotAsserted counts the pairs a "listed" probe leaves out: not
	// probed, not counted as passing (shown as "." in the tables).
	NotAsserted int `json:"not_asserted,omitempty"`
}

// pair is one ordered pair of pods of a probe.
type pair struct{ from, to string }

// observation is one probe of one pair.
type observation struct {
	connected bool
	// invalid: the probe got an answer that proves nothing (from a pod
	// other than the Service's backends); it never matches.
	invalid bool
	detail  string
}

// Run replays case c on e. It never fails tb: a step that cannot be done
// fails the case, with the reason. The cluster is reset to the model after
// the case, whatever happened.
func Run(e *Env, cat *Catalog, c *Case) (res CaseResult) {
	start := time.Now()
	res = CaseResult{ID: c.ID, Name: c.Name, Status: Pass}
	defer func() { res.Seconds = time.Since(start).Seconds() }()
	if reason := cat.SkipReason(c); reason != "" {
		res.Status, res.Reason = Skip, reason
		return res
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), objectTimeout)
		defer cancel()
		if err := e.Reset(ctx); err != nil && res.Status != Fail {
			res.Status, res.Reason = Fail, fmt.Sprintf("reset after the case: %v", err)
		}
	}()
	fail := func(format string, args ...any) CaseResult {
		res.Status, res.Reason = Fail, fmt.Sprintf(format, args...)
		return res
	}

	// The previous case's reset must be in force before this case starts:
	// every pair connects with no policy (upstream's waitForHTTPServers).
	if c.Preconditions != nil {
		for _, rp := range c.Preconditions.ReadinessProbes {
			for _, af := range e.Family.addrFamilies() {
				pr := e.probeFamily(&Probe{Port: rp.Port, Protocol: rp.Protocol, IgnoreLoopback: true, Expected: allTrue(e.Model.PodOrder)}, "readiness", af)
				res.Probes = append(res.Probes, pr)
				if len(pr.Mismatches) > 0 {
					return fail("readiness %s%s/%d: %d pairs do not connect with no policy", pr.familyLabel(), rp.Protocol, rp.Port, len(pr.Mismatches))
				}
			}
		}
	}
	for i, s := range c.Setup {
		kind, _ := s.Kind()
		label := fmt.Sprintf("step %d (%s)", i+1, kind)
		timeout := apiTimeout
		if strings.HasPrefix(kind, "create_") || strings.HasPrefix(kind, "delete_") {
			timeout = objectTimeout
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		var err error
		switch kind {
		case "apply":
			mode, _ := s.Mode()
			err = e.Apply(ctx, s["apply"], mode)
		case "delete":
			var r ObjectRef
			if err = s.Decode(kind, &r); err == nil {
				err = e.DeletePolicy(ctx, r)
			}
		case "label_namespace":
			var l LabelNamespace
			if err = s.Decode(kind, &l); err == nil {
				err = e.LabelNamespace(ctx, l)
			}
		case "label_pod":
			var l LabelPod
			if err = s.Decode(kind, &l); err == nil {
				err = e.LabelPod(ctx, l)
			}
		case "create_namespace":
			var c CreateNamespace
			if err = s.Decode(kind, &c); err == nil {
				err = e.CreateNamespace(ctx, c)
			}
		case "delete_namespace":
			var d DeleteNamespace
			if err = s.Decode(kind, &d); err == nil {
				err = e.DeleteNamespace(ctx, d)
			}
		case "create_pod":
			var c CreatePod
			if err = s.Decode(kind, &c); err == nil {
				err = e.CreatePod(ctx, c)
			}
		case "delete_pod":
			var r ObjectRef
			if err = s.Decode(kind, &r); err == nil {
				err = e.DeletePod(ctx, r)
			}
		case "probe":
			var p Probe
			if err = s.Decode(kind, &p); err == nil {
				// With --family dual the step is probed once per family,
				// and the expected table holds for each.
				for _, af := range e.Family.addrFamilies() {
					pr := e.probeFamily(&p, fmt.Sprintf("step %d", i+1), af)
					res.Probes = append(res.Probes, pr)
					if len(pr.Mismatches) > 0 && res.Status == Pass {
						res.Status = Fail
						res.Reason = fmt.Sprintf("%s: %s%s/%d: %d of %d pairs differ", label, pr.familyLabel(), p.Protocol, p.Port, len(pr.Mismatches), pr.Pairs)
					}
				}
			}
		}
		cancel()
		if err != nil {
			return fail("%s: %v", label, err)
		}
		// The catalog's ipBlock assumptions hold for these addresses, or
		// the probes that follow would test something else.
		if m, _ := s.IPBlockMembership(); m != nil {
			if err := e.CheckIPBlocks(m, s); err != nil {
				return fail("%s: %v", label, err)
			}
		}
		if w, _ := s.WaitAfter(); w > 0 {
			time.Sleep(time.Duration(w * float64(time.Second)))
		}
	}
	return res
}

func allTrue(ids []string) map[string]map[string]bool {
	m := map[string]map[string]bool{}
	for _, a := range ids {
		m[a] = map[string]bool{}
		for _, b := range ids {
			m[a][b] = true
		}
	}
	return m
}

// probeFamily is probe on family af (its pod IPs and ClusterIPs), with the
// explain check if asked for; the family is named in the result when the
// run is not IPv4 alone.
func (e *Env) probeFamily(p *Probe, step string, af addrFamily) ProbeResult {
	first := e.af
	e.af = af
	defer func() { e.af = first }()
	explain := e.Explain && step != "readiness"
	if e.Family.dualStackNetwork() {
		step += " " + af.String()
	}
	pr := e.probe(p, step)
	if e.Family.dualStackNetwork() {
		pr.Family = af.String()
	}
	if explain {
		pr.Explain = e.explainProbe(p, &pr)
	}
	return pr
}

// familyLabel is "IPv6 " when the result names its family, else "".
func (pr *ProbeResult) familyLabel() string {
	if pr.Family == "" {
		return ""
	}
	return pr.Family + " "
}

// probe runs one probe step: every pair in parallel, then the mismatched
// pairs again until they match or ProbeDeadline passes.
func (e *Env) probe(p *Probe, step string) ProbeResult {
	start := time.Now()
	target := e.targetOf(p)
	method := "connect"
	if p.Protocol == corev1.ProtocolSCTP {
		method = e.SCTPMode
	}
	pr := ProbeResult{Step: step, Port: p.Port, Protocol: p.Protocol, Target: target, Method: method,
		Expected: Matrix{}, Observed: Matrix{}, Details: map[string]string{}}
	// Every pair of the pods alive now: the model's that are left and the
	// run-time ones (expected_extra); for a "listed" probe only its pairs
	// (clusterpolicy.go).
	pending, notAsserted := p.pairsToProbe(e.order)
	for _, pp := range pending {
		pr.Expected.set(pp.from, pp.to, e.want(p, target, pp.from, pp.to))
	}
	pr.Pairs, pr.NotAsserted = len(pending), notAsserted
	deadline := start.Add(ProbeDeadline)
	for {
		pr.Rounds++
		obs := e.probePairs(pending, p, target)
		var again []pair
		for i, pp := range pending {
			o := obs[i]
			pr.Observed.set(pp.from, pp.to, o.connected)
			key := pp.from + "->" + pp.to
			if o.invalid || o.connected != e.want(p, target, pp.from, pp.to) {
				again = append(again, pp)
				pr.Details[key] = o.detail
			} else {
				delete(pr.Details, key)
			}
		}
		pending = again
		if len(pending) == 0 || time.Now().Add(retryPause).After(deadline) {
			break
		}
		time.Sleep(retryPause)
	}
	for _, pp := range pending {
		pr.Mismatches = append(pr.Mismatches, pp.from+"->"+pp.to)
	}
	if len(pr.Details) == 0 {
		pr.Details = nil
	}
	pr.Seconds = time.Since(start).Seconds()
	return pr
}

// probePairs probes pairs in parallel and returns the observations in the
// same order.
func (e *Env) probePairs(pairs []pair, p *Probe, target string) []observation {
	out := make([]observation, len(pairs))
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i, pp := range pairs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = e.probeOne(pp, p, target)
		})
	}
	wg.Wait()
	return out
}

// probeOne probes one pair: from the source pod to each destination of
// the run's Via (dests), on the probe's port and protocol.
func (e *Env) probeOne(pp pair, p *Probe, target string) observation {
	ds, backends, reason := e.dests(pp, p, target)
	if reason != "" {
		return observation{invalid: true, detail: reason}
	}
	obs := make([]observation, len(ds))
	for i, d := range ds {
		obs[i] = e.probeDest(pp, p, d, backends)
	}
	return combineDests(obs, ds, e.want(p, target, pp.from, pp.to))
}

// want is the expected result of from->to on probe p sent to target: the
// catalog's, unless the path itself decides (expectVia).
func (e *Env) want(p *Probe, target, from, to string) bool {
	v, _ := p.want(from, to)
	return expectVia(target, p.Protocol, v)
}

// containsPodName reports whether reply is the name of one of ids' pods;
// a testbed pod answers with its name.
func containsPodName(ids []string, reply string) bool {
	for _, id := range ids {
		if _, name, _ := strings.Cut(id, "/"); name == reply {
			return true
		}
	}
	return false
}

func (e *Env) probeSCTP(src, dst *testbed.Pod, addr netip.Addr, port int) observation {
	ctx := context.Background()
	var ok bool
	var err error
	if e.SCTPMode == testbed.SCTPAssociation {
		ok, err = testbed.ProbeSCTPAssociation(ctx, src, addr, port)
	} else {
		// The INIT is watched for at the destination pod itself: the
		// Service's translation to it is part of what is checked.
		ok, err = testbed.ProbeSCTPInit(ctx, src, dst, addr, port)
	}
	if err != nil {
		return observation{invalid: true, detail: err.Error()}
	}
	return observation{connected: ok, detail: fmt.Sprintf("%s %v via %s:%d", e.SCTPMode, ok, addr, port)}
}
