package bench

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// verifyEnforcement applies m's policies in two steps and probes the
// measured flow from both clients: the default deny alone must block it,
// the allows must re-open it. An error means the peer does not enforce.
func verifyEnforcement(t *testing.T, c *testbed.Cluster, m *measured) (*Enforcement, error) {
	pols := NamespacePolicies(m.namespace, m.rules)
	createPolicy(t, c, pols[0])
	deny, err := awaitBoth(m, false)
	if err != nil {
		return nil, fmt.Errorf("default deny in %s not enforced: %w", m.namespace, err)
	}
	for _, p := range pols[1:] {
		createPolicy(t, c, p)
	}
	allow, err := awaitBoth(m, true)
	if err != nil {
		return nil, fmt.Errorf("allow policies in %s not enforced: %w", m.namespace, err)
	}
	waitAllowed(t, m) // UDP too
	return &Enforcement{Namespace: m.namespace, DenyMs: Millis(deny), AllowMs: Millis(allow)}, nil
}

// awaitBoth waits for the verdict from the same-node and the cross-node
// client, each held for verifyHold, and returns the longer wait. A probe
// alone is not enough: on a loaded machine a connect slower than the
// probe's timeout reads as a deny.
func awaitBoth(m *measured, allowed bool) (time.Duration, error) {
	since := time.Now()
	var longest time.Duration
	for _, from := range []*testbed.Pod{m.same, m.cross} {
		pr := &prober{from: from, to: m.server.IP()}
		var flips int
		if err := awaitHeld(pr, allowed, since, verifyTimeout, verifyHold, &flips); err != nil {
			return 0, fmt.Errorf("%s -> %s: %w", from, m.server, err)
		}
		longest = max(longest, pr.seen.Sub(since))
	}
	return longest, nil
}

// The enforcement check's bounds: a verdict must hold longer there than in
// propagation, since it decides whether a peer is measured at all.
const (
	verifyTimeout = 30 * time.Second
	verifyHold    = 3 * time.Second
)

// peerPropagation is propagation() for a peer: the same events in the same
// order on the same policies, probed the same way, but a verdict is waited
// for up to peerPropTimeout and must then hold for peerHold, and one that
// does not come is counted in Failures rather than failing the run.
func peerPropagation(t *testing.T, c *testbed.Cluster, m *measured, policies int, transients map[string]int) []PropagationRow {
	return propagation(t, c, m, policies, propOptions{
		iterations: *flagPeersPropIters,
		tolerate:   true,
		await: func(pr *prober, event string, allowed bool, acked time.Time) error {
			flips := 0
			err := awaitHeld(pr, allowed, acked, peerPropTimeout, peerHold, &flips)
			if flips > 0 && event != "" {
				t.Logf("%s: %d verdicts that did not hold before the new one", event, flips)
				transients[event] += flips
			}
			return err
		},
	})
}

// awaitHeld is prober.await for up to timeout, and for a verdict that then
// holds for hold: a peer that rewrites its rules non-atomically can give a
// wrong verdict for a moment in the middle of a sync, which is not the
// change taking effect. Each such flip is counted in flips. since stays the
// moment of the change.
func awaitHeld(pr *prober, allowed bool, since time.Time, timeout, hold time.Duration, flips *int) error {
	deadline := since.Add(timeout)
	for time.Now().Before(deadline) {
		if err := pr.await(allowed, since); err != nil {
			continue
		}
		if holds(pr, allowed, hold) {
			return nil
		}
		*flips++
	}
	return fmt.Errorf("verdict allowed=%v not seen (and held %v) within %v", allowed, hold, timeout)
}

// holds probes the flow back to back for d and reports whether every probe
// got the verdict.
func holds(pr *prober, allowed bool, d time.Duration) bool {
	addr := net.JoinHostPort(pr.to.String(), strconv.Itoa(BenchTCPPort))
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(probeEvery) {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		c, err := pr.from.NetNS.DialContext(ctx, "tcp4", addr)
		cancel()
		if err == nil {
			c.Close()
		}
		if (err == nil) != allowed {
			return false
		}
	}
	return true
}
