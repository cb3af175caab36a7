package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/metrics"
	"github.com/palisade-cni/palisade/daemon/nodestatus"
	"github.com/palisade-cni/palisade/daemon/policyevents"
)

// problemCheckEvery is how often the agent looks for a new compilation
// whose policy problems to report as Events: a sync is rarely more often.
const problemCheckEvery = 2 * time.Second

// progress is what the node's Lease reports besides the metrics' state.
type progress struct {
	lastSync  atomic.Int64 // unix nanoseconds of the last sync
	unmanaged atomic.Int64
}

// observeSync records a policy sync for the metrics and the Lease.
func (o *observability) observeSync(t controller.SyncTimings) {
	o.metrics.ObserveSync(t.Compile, t.Apply, t.Changed)
	o.progress.lastSync.Store(time.Now().UnixNano())
	if v := o.views.Load(); v != nil {
		v.Release()
	}
}

// setUnmanaged records how many local pods run without an endpoint.
func (o *observability) setUnmanaged(n int) {
	o.metrics.SetUnmanaged(n)
	o.progress.unmanaged.Store(int64(n))
}

// reportToCluster publishes the node's status in its Lease and the
// policies the agent does not understand as Events, until ctx ends. The
// channel closes once the Lease's last update (bounded by the publisher's
// stop timeout) is done.
func (o *observability) reportToCluster(ctx context.Context, log *slog.Logger, cfg Config, client kubernetes.Interface,
	ctrl *controller.Controller, ready func() (bool, string), state func() metrics.State,
) <-chan struct{} {
	pub := &nodestatus.Publisher{
		Client: client, Namespace: cfg.Namespace, Node: cfg.NodeName, Log: log,
		Duration: cfg.StatusLeaseDuration, Every: cfg.StatusLeaseDuration / 4,
		Summary: func() nodestatus.Summary {
			s := state()
			ok, reason := ready()
			sum := nodestatus.Summary{
				Version: version, Ready: ok, Reason: reason, AttachMode: string(cfg.AttachMode),
				Endpoints: s.Endpoints, Policies: s.Policies, Revision: s.Revision,
				Unmanaged: int(o.progress.unmanaged.Load()),
			}
			if ns := o.progress.lastSync.Load(); ns != 0 {
				sum.LastSync = time.Unix(0, ns)
			}
			if connected, apiErr := o.metrics.APIConnected(); !connected {
				sum.APIError = apiErr
			}
			return sum
		},
	}
	published := make(chan struct{})
	go func() {
		defer close(published)
		pub.Run(ctx)
	}()
	rep := &policyevents.Reporter{Client: client, Node: cfg.NodeName, Log: log}
	go rep.Watch(ctx, ctrl.Last, problemCheckEvery)
	return published
}
