// Package metrics defines the agent's Prometheus metrics on a registry it
// is given, never the global one. Counters the datapath keeps (verdicts,
// lost events) and fill levels are read at scrape time by a collector;
// durations are observed by the controller's sync hook; API errors come
// from client-go's request metrics hook.
package metrics

import (
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// Datapath is what the collector reads from the maps at scrape time.
type Datapath interface {
	Verdicts() ([]bpf.VerdictCount, error)
	LostEvents() (map[int]uint64, error)
	MapFill() ([]bpf.MapFill, error)
	Conntrack() ([]bpf.ConntrackTable, uint64, error)
}

// State is the agent's own state at scrape time.
type State struct {
	Endpoints  int
	Identities int
	Policies   int
	Revision   uint64
}

// Metrics are the agent's metrics.
type Metrics struct {
	log       *slog.Logger
	dp        Datapath
	state     func() State
	compile   prometheus.Histogram
	apply     prometheus.Histogram
	add       *prometheus.HistogramVec
	flows     *prometheus.CounterVec
	apiErrs   *prometheus.CounterVec
	unmanaged prometheus.Gauge
	syncFails prometheus.Counter
	reclaims  *prometheus.CounterVec
	api       apiHealth
	descs     map[string]*prometheus.Desc
	fillOnce  sync.Mutex
	// reclaimed is the last count reported per conntrack table, under
	// fillOnce: a scrape that computes less (flows created while it
	// walked) reports it again, so the counter never goes back.
	reclaimed map[string]uint64
}

// syncBuckets span a 100 µs compile of a tiny cluster to a 10 s one of a
// very large cluster (policy/compile_bench_test.go measures the range).
var syncBuckets = prometheus.ExponentialBuckets(0.0001, 4, 9)

// New registers the metrics on reg. dp and state are read at each scrape.
func New(reg prometheus.Registerer, log *slog.Logger, dp Datapath, state func() State) *Metrics {
	m := &Metrics{
		log: log, dp: dp, state: state, reclaimed: map[string]uint64{},
		compile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "palisade_policy_compile_duration_seconds", Help: "Time to compile every local pod's policy, per sync.", Buckets: syncBuckets,
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "palisade_map_sync_duration_seconds", Help: "Time to write a changed policy and ipcache to the BPF maps, per sync that changed them.", Buckets: syncBuckets,
		}),
		add: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "palisade_endpoint_add_duration_seconds", Help: "Time from a CNI ADD's registration to its pod's policy in the maps, by how: own (compiled on its own) or sync (waited for a whole sync).", Buckets: syncBuckets,
		}, []string{"how"}),
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_flow_events_total", Help: "Verdict events the agent decoded from the ring buffer, by verdict.",
		}, []string{"verdict"}),
		apiErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_api_errors_total", Help: "Failed requests (including list and watch) to the Kubernetes API server, by HTTP method and code (\"<error>\" when no answer came).",
		}, []string{"method", "code"}),
		unmanaged: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "palisade_unmanaged_pods", Help: "Pods of this node running on the pod network without a Palisade endpoint past the grace period, after the agent tried to adopt them: unprotected until they restart.",
		}),
		syncFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "palisade_sync_failures_total", Help: "Policy syncs that failed or panicked; each is retried with backoff while the maps keep the last revision.",
		}),
		reclaims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "palisade_endpoints_reclaimed_total", Help: "Endpoints the agent removed on its own (no DEL came), by reason: interface gone or pod finished.",
		}, []string{"reason"}),
		descs: map[string]*prometheus.Desc{
			// Flows and packets are different units, so they are two
			// counters: the datapath judges a flow once, on its first
			// packet, and then counts it admitted; a refused flow leaves no
			// state, so each of its packets is judged and dropped anew
			// (a retransmitted SYN counts twice), and drops are counted in
			// packets.
			"allowed": prometheus.NewDesc("palisade_flows_allowed_total", "Flows admitted by policy, by direction of the pod.", []string{"direction"}, nil),
			"dropped": prometheus.NewDesc("palisade_packets_dropped_total", "Packets the datapath dropped, by direction of the pod and reason (policy, rejudged, unknown-endpoint, malformed, nat, spoofed, fragment).", []string{"direction", "reason"}, nil),
			// Deprecated in 0.2.0, removed in the release after: both units
			// in one counter. CHANGELOG.md says so.
			"verdicts": prometheus.NewDesc("palisade_verdicts_total", "DEPRECATED (use palisade_flows_allowed_total and palisade_packets_dropped_total; removed in the next release): datapath verdicts by direction and reason, reason=\"allowed\" counting flows and every other reason packets.", []string{"direction", "reason"}, nil),
			"lost":     prometheus.NewDesc("palisade_events_lost_total", "Verdict events not delivered to the agent, by cause: rate-limit (over the per-CPU budget) or ringbuf-full (the agent lagged).", []string{"cause"}, nil),
			"entries":  prometheus.NewDesc("palisade_map_entries", "Entries in a BPF map.", []string{"map"}, nil),
			"capacity": prometheus.NewDesc("palisade_map_capacity", "Maximum entries of a BPF map.", []string{"map"}, nil),
			"reclaimed": prometheus.NewDesc("palisade_conntrack_reclaimed_total", "Conntrack entries the LRU table took to make room for new flows, by table (tcp, other): "+
				"flows created minus flows deleted minus entries present, at scrape time. Live and expired entries alike: expired ones are never deleted otherwise.", []string{"table"}, nil),
			"tcpMisses": prometheus.NewDesc("palisade_conntrack_tcp_misses_total", "TCP packets without SYN that matched no conntrack entry and were judged as new flows: "+
				"connections whose entry was reclaimed while in use, and late packets of closed connections, forged packets or connections older than the datapath.", nil, nil),
			"endpoints":  prometheus.NewDesc("palisade_endpoints", "Local pod endpoints with a compiled policy.", nil, nil),
			"identities": prometheus.NewDesc("palisade_identities", "Distinct peer identities in the ipcache.", nil, nil),
			"policies":   prometheus.NewDesc("palisade_policies", "NetworkPolicies in the cluster.", nil, nil),
			"revision":   prometheus.NewDesc("palisade_policy_revision", "Datapath policy revision in the maps.", nil, nil),
		},
	}
	m.api.errs = m.apiErrs
	// Both ways of an ADD exist from the start, at zero: a query or
	// dashboard panel finds the series before the first pod comes.
	m.add.WithLabelValues("own")
	m.add.WithLabelValues("sync")
	reg.MustRegister(m.compile, m.apply, m.add, m.flows, m.apiErrs, m.unmanaged, m.syncFails, m.reclaims, m)
	return m
}

// RegisterBuildInfo registers palisade_build_info, constant 1, whose labels
// say which build runs: a dashboard or alert joins on it to tell versions
// apart during a rolling upgrade.
func RegisterBuildInfo(reg prometheus.Registerer, version string) {
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "palisade_build_info", Help: "Always 1; the labels name the agent's version and the Go toolchain and architecture it was built with.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version(), "goarch": runtime.GOARCH},
	})
	info.Set(1)
	reg.MustRegister(info)
}

// RegisterReady registers palisade_agent_ready, 1 when /readyz would
// answer ready: the alert on a node whose new pods cannot start.
func RegisterReady(reg prometheus.Registerer, ready func() bool) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "palisade_agent_ready", Help: "1 when the agent is ready (datapath loaded, caches synced, first policy programmed), as /readyz says; else 0, and new pods on the node cannot start.",
	}, func() float64 {
		if ready() {
			return 1
		}
		return 0
	}))
}

// ObserveSync records one controller sync.
func (m *Metrics) ObserveSync(compile, apply time.Duration, changed bool) {
	m.compile.Observe(compile.Seconds())
	if changed {
		m.apply.Observe(apply.Seconds())
	}
}

// ObserveAdd records one programmed CNI ADD.
func (m *Metrics) ObserveAdd(how string, d time.Duration) {
	m.add.WithLabelValues(how).Observe(d.Seconds())
}

// SyncFailed counts a failed or panicked sync.
func (m *Metrics) SyncFailed(error) { m.syncFails.Inc() }

// EndpointsReclaimed counts endpoints removed for reason by the
// endpoint reconcile.
func (m *Metrics) EndpointsReclaimed(reason string, n int) {
	m.reclaims.WithLabelValues(reason).Add(float64(n))
}

// SetUnmanaged records how many local pods run without an endpoint.
func (m *Metrics) SetUnmanaged(n int) { m.unmanaged.Set(float64(n)) }

// ObserveFlow counts one decoded verdict event.
func (m *Metrics) ObserveFlow(f *agentapi.Flow) { m.flows.WithLabelValues(f.Verdict).Inc() }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the datapath's counters
// and the agent's state. A map that cannot be read is logged and left out,
// rather than failing the whole scrape.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	if vs, err := m.dp.Verdicts(); err != nil {
		m.log.Warn("Verdict counters not read", "error", err)
	} else {
		for _, v := range vs {
			if v.Reason > bpf.ReasonLast { // slots no reason uses yet
				continue
			}
			dir, reason := v.Direction.PolicyDirection(), bpf.ReasonName(v.Reason)
			if v.Reason == bpf.ReasonAllowed {
				ch <- prometheus.MustNewConstMetric(m.descs["allowed"], prometheus.CounterValue, float64(v.Count), dir)
			} else {
				ch <- prometheus.MustNewConstMetric(m.descs["dropped"], prometheus.CounterValue, float64(v.Count), dir, reason)
			}
			ch <- prometheus.MustNewConstMetric(m.descs["verdicts"], prometheus.CounterValue, float64(v.Count), dir, reason)
		}
	}
	if lost, err := m.dp.LostEvents(); err != nil {
		m.log.Warn("Lost event counters not read", "error", err)
	} else {
		ch <- prometheus.MustNewConstMetric(m.descs["lost"], prometheus.CounterValue, float64(lost[bpf.LostRateLimit]), "rate-limit")
		ch <- prometheus.MustNewConstMetric(m.descs["lost"], prometheus.CounterValue, float64(lost[bpf.LostRingbufFull]), "ringbuf-full")
	}
	// Walking conntrack is the costly part of a scrape; two scrapes at once
	// need not both do it in parallel.
	m.fillOnce.Lock()
	// The counters before the walk: a flow created during the walk can
	// only make the reclaimed count smaller, never invent a reclaim.
	tables, misses, ctErr := m.dp.Conntrack()
	fill, err := m.dp.MapFill()
	if err != nil {
		m.log.Warn("Map fill levels not read", "error", err)
	}
	entries := map[string]int{}
	for _, f := range fill {
		entries[f.Name] = f.Entries
		ch <- prometheus.MustNewConstMetric(m.descs["entries"], prometheus.GaugeValue, float64(f.Entries), f.Name)
		ch <- prometheus.MustNewConstMetric(m.descs["capacity"], prometheus.GaugeValue, float64(f.Capacity), f.Name)
	}
	if ctErr != nil {
		m.log.Warn("Conntrack counters not read", "error", ctErr)
	} else {
		m.collectConntrack(ch, tables, misses, entries)
	}
	m.fillOnce.Unlock()
	st := m.state()
	ch <- prometheus.MustNewConstMetric(m.descs["endpoints"], prometheus.GaugeValue, float64(st.Endpoints))
	ch <- prometheus.MustNewConstMetric(m.descs["identities"], prometheus.GaugeValue, float64(st.Identities))
	ch <- prometheus.MustNewConstMetric(m.descs["policies"], prometheus.GaugeValue, float64(st.Policies))
	ch <- prometheus.MustNewConstMetric(m.descs["revision"], prometheus.GaugeValue, float64(st.Revision))
}

// collectConntrack reports what the LRU reclaimed per table, given the
// entries MapFill counted (by map name). A table whose fill was not read
// reports its last count. Called under fillOnce.
func (m *Metrics) collectConntrack(ch chan<- prometheus.Metric, tables []bpf.ConntrackTable, misses uint64, entries map[string]int) {
	for _, t := range tables {
		if n, ok := entries["conntrack-"+t.Name]; ok {
			m.reclaimed[t.Name] = max(m.reclaimed[t.Name], t.Reclaimed(n))
		}
		ch <- prometheus.MustNewConstMetric(m.descs["reclaimed"], prometheus.CounterValue, float64(m.reclaimed[t.Name]), t.Name)
	}
	ch <- prometheus.MustNewConstMetric(m.descs["tcpMisses"], prometheus.CounterValue, float64(misses))
}

// apiHealth is client-go's request result hook: it counts failures and
// remembers whether the last request succeeded.
type apiHealth struct {
	errs    *prometheus.CounterVec
	mu      sync.Mutex
	lastErr string
	seen    bool
	// downSince is when requests started failing; zero while they work.
	downSince time.Time
}

// Increment implements clientmetrics.ResultMetric.
func (a *apiHealth) Increment(_ context.Context, code, method, host string) {
	ok := strings.HasPrefix(code, "2")
	// A 4xx is an answer (a Lease not found yet, a watch too old, an Event
	// in a namespace being deleted): the server is there. No answer, or a
	// 5xx, is not.
	answered := code != "<error>" && !strings.HasPrefix(code, "5")
	a.mu.Lock()
	a.seen = true
	switch {
	case answered:
		a.lastErr = ""
		a.downSince = time.Time{}
	case a.downSince.IsZero():
		a.downSince = time.Now()
		fallthrough
	default:
		a.lastErr = method + " " + host + ": " + code
	}
	a.mu.Unlock()
	if !ok {
		a.errs.WithLabelValues(method, code).Inc()
	}
}

// HookClientGo makes client-go report every API request's result here.
// client-go accepts one registration per process; later ones are ignored.
func (m *Metrics) HookClientGo() {
	clientmetrics.Register(clientmetrics.RegisterOpts{RequestResult: &m.api})
}

// APIConnected reports whether the last request to the API server got an
// answer, and the failure otherwise.
func (m *Metrics) APIConnected() (bool, string) {
	m.api.mu.Lock()
	defer m.api.mu.Unlock()
	if !m.api.seen {
		return false, "no request answered yet"
	}
	return m.api.lastErr == "", m.api.lastErr
}

// APIDownSince returns since when requests to the API server have been
// failing, with the last failure; zero while the last one got an answer.
func (m *Metrics) APIDownSince() (time.Time, string) {
	m.api.mu.Lock()
	defer m.api.mu.Unlock()
	return m.api.downSince, m.api.lastErr
}

// Fill returns the map fill levels for palisadectl status.
func (m *Metrics) Fill() ([]agentapi.MapFill, error) {
	m.fillOnce.Lock()
	fill, err := m.dp.MapFill()
	m.fillOnce.Unlock()
	out := []agentapi.MapFill{}
	for _, f := range fill {
		out = append(out, agentapi.MapFill{Map: f.Name, Entries: f.Entries, Capacity: f.Capacity})
	}
	return out, err
}
