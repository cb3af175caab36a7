package main

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/events"
	"github.com/palisade-cni/palisade/daemon/inspect"
	"github.com/palisade-cni/palisade/daemon/k8s"
	"github.com/palisade-cni/palisade/daemon/metrics"
	"github.com/palisade-cni/palisade/daemon/policy"
	"github.com/palisade-cni/palisade/daemon/server"
)

// observability is the agent's metrics, flows and palisadectl's view.
type observability struct {
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	hub     *events.Hub
	// progress feeds the node's Lease (clusterstatus.go).
	progress progress
	// views are palisadectl's and the flows' Views, released after each
	// sync (observeSync).
	views atomic.Pointer[inspect.Snapshots]
}

// newObservability registers the metrics; call it before any API client
// exists, so that client-go reports every request.
func newObservability(log *slog.Logger, objs *bpf.Objects, state func() metrics.State) *observability {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.RegisterBuildInfo(reg, version)
	m := metrics.New(reg, log, objs, state)
	m.HookClientGo()
	return &observability{reg: reg, metrics: m, hub: events.NewHub(events.DefaultRecent)}
}

// metricsHandler serves /metrics.
func (o *observability) metricsHandler() http.Handler {
	return promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// inspector wires palisadectl's routes and starts the verdict event reader.
func (o *observability) inspector(ctx context.Context, log *slog.Logger, cfg Config, objs *bpf.Objects,
	cluster *k8s.Cluster, registry *endpoint.Registry, ctrl *controller.Controller, state func() metrics.State,
) *server.Inspect {
	snaps := &inspect.Snapshots{
		Result: ctrl.Last,
		Build: func(res *policy.Result) *inspect.View {
			// A lister reads a local cache and fails only on a selector
			// error, impossible with Everything; say so if it ever does.
			pods, err := cluster.Pods.List(labels.Everything())
			if err != nil {
				log.Warn("Pods not listed for palisadectl's view", "error", err)
			}
			pols, err := cluster.Policies.List(labels.Everything())
			if err != nil {
				log.Warn("Policies not listed for palisadectl's view", "error", err)
			}
			return inspect.NewView(res, pods, pols, registry.List(), cfg.NodeName)
		},
	}
	o.views.Store(snaps)
	rd := &events.Reader{Log: log, Events: objs.Events(), Hub: o.hub, View: snaps.Get, OnFlow: o.metrics.ObserveFlow}
	go func() {
		if err := rd.Run(ctx); err != nil {
			log.Error("Verdict events stopped; flows and flow metrics are unavailable", "error", err)
		}
	}()
	return &server.Inspect{
		Views:      snaps.Get,
		MapEntries: mapEntries(objs),
		Flows:      o.hub,
		Status: func(st *agentapi.Status) {
			s := state()
			st.NodeName, st.Identities, st.Policies = cfg.NodeName, s.Identities, s.Policies
			st.APIConnected, st.APIError = o.metrics.APIConnected()
			var err error
			if st.Maps, err = o.metrics.Fill(); err != nil {
				log.Warn("Map fill levels not read", "error", err)
			}
		},
	}
}

// agentState counts what the metrics and status report.
func agentState(cluster **k8s.Cluster, ctrl **controller.Controller) func() metrics.State {
	return func() metrics.State {
		var st metrics.State
		if *ctrl == nil {
			return st
		}
		st.Revision = (*ctrl).Revision()
		if res := (*ctrl).Last(); res != nil {
			st.Endpoints = len(res.Endpoints)
			ids := map[uint32]bool{}
			for _, id := range res.IPCache {
				ids[id] = true
			}
			st.Identities = len(ids)
		}
		if *cluster != nil {
			if pols, err := (*cluster).Policies.List(labels.Everything()); err == nil {
				st.Policies = len(pols)
			}
		}
		return st
	}
}

// mapEntries reads an endpoint's policy map back from the kernel.
func mapEntries(objs *bpf.Objects) inspect.MapReader {
	return func(ifindex int, d policy.Direction) ([]agentapi.MapEntry, error) {
		dir := bpf.ToPod
		if d == policy.Egress {
			dir = bpf.FromPod
		}
		entries, err := objs.Policy(ifindex, dir)
		if err != nil {
			return nil, err
		}
		out := make([]agentapi.MapEntry, 0, len(entries))
		for _, e := range entries {
			out = append(out, agentapi.MapEntry{
				Identity: e.Key.Identity, Protocol: e.Key.Proto, Port: e.Key.PortNet<<8 | e.Key.PortNet>>8,
				PrefixLen: e.Key.Prefixlen, Rule: e.Value.Rule,
			})
		}
		return out, nil
	}
}
