package nodestatus

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// Default timing: a reader calls a Lease stale after DefaultDuration
// without a renewal, so an agent misses three renewals before it is shown
// as stale; a transient API error costs nothing.
const (
	DefaultEvery    = 10 * time.Second
	DefaultDuration = 40 * time.Second
	// stopTimeout bounds the last update an agent makes when it stops.
	stopTimeout = 3 * time.Second
)

// Publisher keeps a node's Lease current.
type Publisher struct {
	Client    kubernetes.Interface
	Namespace string
	Node      string
	// Every is how often the Lease is renewed (default DefaultEvery),
	// Duration how long it holds (default DefaultDuration).
	Every, Duration time.Duration
	// Summary returns the agent's status at the time of a renewal.
	Summary func() Summary
	Log     *slog.Logger
}

// Run renews the Lease until ctx ends, then writes a last summary that says
// the agent stopped, so that readers need not wait for the Lease to expire.
func (p *Publisher) Run(ctx context.Context) {
	every := p.Every
	if every <= 0 {
		every = DefaultEvery
	}
	failing := false
	for {
		err := p.Publish(ctx, p.Summary())
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Logged once per outage: the next renewals retry quietly.
			p.Log.Warn("Node status not published; palisadectl status --all-nodes shows this node as stale", "lease", p.Namespace+"/"+LeaseName(p.Node), "error", err)
			failing = true
		case err == nil && failing:
			p.Log.Info("Node status published again", "lease", p.Namespace+"/"+LeaseName(p.Node))
			failing = false
		}
		select {
		case <-ctx.Done():
			s := p.Summary()
			s.Ready, s.Reason = false, "agent stopped (the datapath keeps enforcing the last policy)"
			stopCtx, cancel := context.WithTimeout(context.Background(), stopTimeout)
			if err := p.Publish(stopCtx, s); err != nil {
				p.Log.Debug("Last node status not published", "error", err)
			}
			cancel()
			return
		case <-time.After(every):
		}
	}
}

// Publish creates or renews the Lease with summary s.
func (p *Publisher) Publish(ctx context.Context, s Summary) error {
	dur := p.Duration
	if dur <= 0 {
		dur = DefaultDuration
	}
	s.Node = p.Node
	leases := p.Client.CoordinationV1().Leases(p.Namespace)
	name := LeaseName(p.Node)
	now := metav1.NewMicroTime(time.Now())
	l, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.Namespace}}
		p.fill(l, s, now, dur)
		l.Spec.AcquireTime = &now
		// Owned by the Node, so that the Lease goes when the Node does.
		if n, err := p.Client.CoreV1().Nodes().Get(ctx, p.Node, metav1.GetOptions{}); err == nil {
			l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
		}
		if _, err := leases.Create(ctx, l, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create lease %s/%s: %w", p.Namespace, name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get lease %s/%s: %w", p.Namespace, name, err)
	}
	p.fill(l, s, now, dur)
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew lease %s/%s: %w", p.Namespace, name, err)
	}
	return nil
}

func (p *Publisher) fill(l *coordinationv1.Lease, s Summary, now metav1.MicroTime, dur time.Duration) {
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[ComponentLabel] = ComponentValue
	l.Labels[NodeLabel] = p.Node
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	// Annotations of an older summary that this one leaves out go.
	for k := range l.Annotations {
		if len(k) > len(annoPrefix) && k[:len(annoPrefix)] == annoPrefix {
			delete(l.Annotations, k)
		}
	}
	for k, v := range annotations(s) {
		l.Annotations[k] = v
	}
	l.Spec.HolderIdentity = ptr.To(p.Node)
	l.Spec.LeaseDurationSeconds = ptr.To(int32(dur / time.Second))
	l.Spec.RenewTime = &now
}
