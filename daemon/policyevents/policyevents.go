// Package policyevents tells a NetworkPolicy's author, where they look
// (kubectl describe networkpolicy, kubectl get events), that the agent
// could not understand part of it. The part matches nothing and the policy
// still isolates the pods it selects (daemon/policy), which is safe but
// surprising: a log line on some node's agent is not where anyone looks.
//
// Each problem becomes one Warning Event with reason PolicyNotUnderstood.
// Its name is derived from the policy's UID and the problem's text, so
// every agent of the cluster, and an agent that restarted, writes the same
// Event: the first creates it, the others find it exists. Within one agent
// a problem already reported is not sent again on the next sync.
package policyevents

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"weak"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/palisade-cni/palisade/daemon/policy"
)

// Reason is the Events' reason.
const Reason = "PolicyNotUnderstood"

// Component is the Events' source.
const Component = "palisade-agent"

// Reporter writes the Events.
type Reporter struct {
	Client kubernetes.Interface
	// Node is the reporting agent's node.
	Node string
	Log  *slog.Logger

	sent map[string]bool
}

// EventName is the name of the Event for problem p: the policy's name and
// a hash of its UID and the message, the same on every node.
func EventName(p *policy.Problem) string {
	sum := sha256.Sum256([]byte(p.UID + "\x00" + p.Message))
	name := p.Name
	// Event names are DNS subdomains (253 characters).
	if len(name) > 200 {
		name = name[:200]
	}
	return strings.TrimRight(name, ".-") + ".palisade-" + hex.EncodeToString(sum[:8])
}

// Report sends an Event for each problem not reported yet, and returns how
// many it created. Errors other than Problems are ignored: they name no
// policy.
func (r *Reporter) Report(ctx context.Context, problems []error) (int, error) {
	if r.sent == nil {
		r.sent = map[string]bool{}
	}
	created := 0
	var errs []error
	for _, e := range problems {
		var p *policy.Problem
		if !errors.As(e, &p) {
			continue
		}
		name := EventName(p)
		key := p.Namespace + "/" + name
		if r.sent[key] {
			continue
		}
		now := metav1.NewTime(time.Now())
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.Namespace},
			InvolvedObject: corev1.ObjectReference{
				APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy",
				Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID),
			},
			Reason: Reason,
			Message: fmt.Sprintf("%s: Palisade matches nothing with this part; the policy still isolates the pods it selects",
				p.Message),
			Type:                corev1.EventTypeWarning,
			Source:              corev1.EventSource{Component: Component, Host: r.Node},
			FirstTimestamp:      now,
			LastTimestamp:       now,
			Count:               1,
			ReportingController: "palisade.io/agent",
			ReportingInstance:   r.Node,
		}
		_, err := r.Client.CoreV1().Events(p.Namespace).Create(ctx, ev, metav1.CreateOptions{})
		switch {
		case err == nil:
			created++
		case apierrors.IsAlreadyExists(err):
			// Another agent, or this one before a restart, reported it.
		default:
			errs = append(errs, fmt.Errorf("create event %s/%s: %w", p.Namespace, name, err))
			continue
		}
		r.sent[key] = true
	}
	return created, errors.Join(errs...)
}

// Watch reports the problems of every new compilation that last returns,
// checking every so often, until ctx ends. A failed report is retried with
// the next check.
func (r *Reporter) Watch(ctx context.Context, last func() *policy.Result, every time.Duration) {
	// Only whether last returns a new Result matters: a strong pointer to
	// the one seen would keep it, with its compiler and address sets
	// (several MB at 10 000 pods), alive for up to every after the agent
	// has replaced it. A weak pointer still compares equal to one made from
	// the same Result.
	var seen weak.Pointer[policy.Result]
	failing := false
	for {
		if res := last(); res != nil && (weak.Make(res) != seen || failing) {
			seen = weak.Make(res)
			n, err := r.Report(ctx, res.Problems)
			if n > 0 {
				r.Log.Info("Reported policies Palisade does not understand as Events", "events", n, "reason", Reason)
			}
			if err != nil && !failing && ctx.Err() == nil {
				r.Log.Warn("Policy problems not reported as Events", "error", err)
			}
			failing = err != nil
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}
