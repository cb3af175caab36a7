// Package health answers the agent's liveness and readiness probes.
//
// Liveness (/healthz) fails when the policy sync loop has work it has not
// done (a change not yet programmed, or a failing sync) and has completed
// no sync for Stall: the agent is wedged and a restart is the cure; the
// pinned maps keep enforcing across it. Readiness (/readyz) additionally
// drops while the API server has not answered for APIGrace: the agent then
// enforces a view that may be stale, which a rollout should not proceed
// on. Neither changes what the datapath enforces.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Defaults for the agent.
const (
	// DefaultStall is far above a sync of a large cluster (seconds) and
	// the longest retry backoff (30 s).
	DefaultStall = 3 * time.Minute
	// DefaultAPIGrace rides out an API server restart or a leader change.
	DefaultAPIGrace = 30 * time.Second
)

// Checker judges the probes.
type Checker struct {
	Stall, APIGrace time.Duration
	// Progress is the sync loop's (controller.Progress).
	Progress func() (pending bool, lastDone time.Time)
	// APIDown returns since when the API server has not answered, zero
	// while it does, with the last failure.
	APIDown func() (since time.Time, reason string)
	// Ready is the agent's own readiness (caches synced, first sync).
	Ready func() (bool, string)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

func (c *Checker) now() time.Time {
	if c.Now == nil {
		return time.Now()
	}
	return c.Now()
}

// Live returns why the agent is not alive, nil when it is.
func (c *Checker) Live() error {
	pending, last := c.Progress()
	if idle := c.now().Sub(last); pending && idle > c.Stall {
		return fmt.Errorf("policy sync loop has pending work and completed no sync for %s (limit %s)", idle.Round(time.Second), c.Stall)
	}
	return nil
}

// Readiness returns why the agent is not ready, nil when it is.
func (c *Checker) Readiness() error {
	if ok, reason := c.Ready(); !ok {
		return errors.New(reason)
	}
	if err := c.Live(); err != nil {
		return err
	}
	if since, reason := c.APIDown(); !since.IsZero() {
		if down := c.now().Sub(since); down > c.APIGrace {
			return fmt.Errorf("API server unreachable for %s (grace %s): %s; enforcing the last policy seen", down.Round(time.Second), c.APIGrace, reason)
		}
	}
	return nil
}

// Handler serves /healthz, /readyz and, when set, /metrics.
func (c *Checker) Handler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	probe := func(check func() error, ok string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := check(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, ok)
		}
	}
	mux.HandleFunc("GET /healthz", probe(c.Live, "ok"))
	mux.HandleFunc("GET /readyz", probe(c.Readiness, "ready"))
	return mux
}

// Serve serves Handler on addr until ctx ends.
func (c *Checker) Serve(ctx context.Context, addr string, metrics http.Handler) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for health checks on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: c.Handler(metrics), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close() // Serve returns ErrServerClosed; nothing else to report.
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve health checks: %w", err)
	}
	return nil
}
