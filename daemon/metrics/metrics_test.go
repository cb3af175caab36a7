package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
)

type fakeDatapath struct {
	// otherEntries is what the other conntrack table holds, by scrape.
	otherEntries *[]int
}

func (fakeDatapath) Verdicts() ([]bpf.VerdictCount, error) {
	var out []bpf.VerdictCount
	for _, d := range bpf.Directions {
		for r := 0; r < bpf.ReasonMax; r++ {
			out = append(out, bpf.VerdictCount{Direction: d, Reason: r, Count: uint64(10*int(d) + r)})
		}
	}
	return out, nil
}

func (fakeDatapath) LostEvents() (map[int]uint64, error) {
	return map[int]uint64{bpf.LostRateLimit: 7, bpf.LostRingbufFull: 1}, nil
}

func (d fakeDatapath) MapFill() ([]bpf.MapFill, error) {
	fill := []bpf.MapFill{{Name: "ipcache", Entries: 12, Capacity: 524288}, {Name: "conntrack-tcp", Entries: 40, Capacity: 1024}}
	if d.otherEntries != nil && len(*d.otherEntries) > 0 {
		fill = append(fill, bpf.MapFill{Name: "conntrack-other", Entries: (*d.otherEntries)[0], Capacity: 256})
		*d.otherEntries = (*d.otherEntries)[1:]
	}
	return fill, nil
}

func (fakeDatapath) Conntrack() ([]bpf.ConntrackTable, uint64, error) {
	return []bpf.ConntrackTable{
		{Name: bpf.ConntrackTCP, Capacity: 1024, Created: 50, Deleted: 10},
		{Name: bpf.ConntrackOther, Capacity: 256, Created: 1000, Deleted: 0},
	}, 3, nil
}

// Parse reads a /metrics page the way Prometheus does.
func Parse(t *testing.T, r io.Reader) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return fams
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	for _, m := range fam.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !cmp.Equal(got, labels, cmpEmpty) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

var cmpEmpty = cmp.Comparer(func(a, b map[string]string) bool {
	return len(a) == len(b) && (len(a) == 0 || cmp.Equal(map[string]string(a), map[string]string(b)))
})

func TestScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, slog.New(slog.DiscardHandler), fakeDatapath{}, func() State {
		return State{Endpoints: 3, Identities: 5, Policies: 2, Revision: 9}
	})
	RegisterBuildInfo(reg, "v0.2.0-test")
	RegisterReady(reg, func() bool { return false })
	m.ObserveSync(2*time.Millisecond, 5*time.Millisecond, true)
	m.ObserveSync(time.Millisecond, 0, false)
	m.ObserveFlow(&agentapi.Flow{Verdict: agentapi.FlowDropped})
	m.ObserveAdd("own", 3*time.Millisecond)
	m.ObserveAdd("own", 4*time.Millisecond)
	m.ObserveAdd("sync", 40*time.Millisecond)
	m.api.Increment(context.Background(), "<error>", "GET", "198.18.0.1:6443")
	m.SyncFailed(errors.New("list pods: boom"))
	m.SyncFailed(errors.New("sync panicked"))
	m.EndpointsReclaimed("pod finished", 2)

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	fams := Parse(t, resp.Body)

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"palisade_flows_allowed_total", map[string]string{"direction": "ingress"}, 10},
		{"palisade_flows_allowed_total", map[string]string{"direction": "egress"}, 0},
		{"palisade_packets_dropped_total", map[string]string{"direction": "ingress", "reason": "policy"}, 12},
		{"palisade_packets_dropped_total", map[string]string{"direction": "egress", "reason": "spoofed"}, 6},
		{"palisade_packets_dropped_total", map[string]string{"direction": "egress", "reason": "fragment"}, 7},
		{"palisade_build_info", map[string]string{"version": "v0.2.0-test", "goversion": runtime.Version(), "goarch": runtime.GOARCH}, 1},
		{"palisade_agent_ready", nil, 0},
		{"palisade_verdicts_total", map[string]string{"direction": "ingress", "reason": "policy"}, 12},
		{"palisade_verdicts_total", map[string]string{"direction": "egress", "reason": "allowed"}, 0},
		{"palisade_verdicts_total", map[string]string{"direction": "egress", "reason": "nat"}, 5},
		{"palisade_verdicts_total", map[string]string{"direction": "egress", "reason": "spoofed"}, 6},
		{"palisade_events_lost_total", map[string]string{"cause": "rate-limit"}, 7},
		{"palisade_events_lost_total", map[string]string{"cause": "ringbuf-full"}, 1},
		{"palisade_map_entries", map[string]string{"map": "ipcache"}, 12},
		{"palisade_map_capacity", map[string]string{"map": "ipcache"}, 524288},
		{"palisade_endpoints", nil, 3},
		{"palisade_identities", nil, 5},
		{"palisade_policies", nil, 2},
		{"palisade_policy_revision", nil, 9},
		{"palisade_policy_compile_duration_seconds", nil, 2},
		{"palisade_map_sync_duration_seconds", nil, 1},
		{"palisade_endpoint_add_duration_seconds", map[string]string{"how": "own"}, 2},
		{"palisade_endpoint_add_duration_seconds", map[string]string{"how": "sync"}, 1},
		{"palisade_flow_events_total", map[string]string{"verdict": "dropped"}, 1},
		{"palisade_api_errors_total", map[string]string{"method": "GET", "code": "<error>"}, 1},
		{"palisade_conntrack_reclaimed_total", map[string]string{"table": "tcp"}, 0},
		{"palisade_conntrack_tcp_misses_total", nil, 3},
		{"palisade_sync_failures_total", nil, 2},
		{"palisade_endpoints_reclaimed_total", map[string]string{"reason": "pod finished"}, 2},
	} {
		if got := value(t, fams, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// No "allowed" among the drops: flows and packets do not mix.
	for _, s := range fams["palisade_packets_dropped_total"].GetMetric() {
		for _, l := range s.GetLabel() {
			if l.GetName() == "reason" && l.GetValue() == "allowed" {
				t.Errorf("palisade_packets_dropped_total has reason=allowed")
			}
		}
	}
	if n := len(fams["palisade_packets_dropped_total"].GetMetric()); n != 2*bpf.ReasonLast {
		t.Errorf("%d drop series, want %d", n, 2*bpf.ReasonLast)
	}
	// Reason slots no reason uses are not exported.
	if n := len(fams["palisade_verdicts_total"].GetMetric()); n != 2*(bpf.ReasonLast+1) {
		t.Errorf("%d verdict series, want %d", n, 2*(bpf.ReasonLast+1))
	}
	if ok, why := m.APIConnected(); ok || why == "" {
		t.Errorf("APIConnected after a failed request = %v %q, want false and the failure", ok, why)
	}
	if since, _ := m.APIDownSince(); since.IsZero() {
		t.Error("APIDownSince after a request without answer is zero")
	}
	m.api.Increment(context.Background(), "200", "GET", "198.18.0.1:6443")
	if ok, _ := m.APIConnected(); !ok {
		t.Error("APIConnected after an answered request = false")
	}
	// A 4xx is an answer: the API server is reachable.
	m.api.Increment(context.Background(), "404", "POST", "198.18.0.1:6443")
	if since, _ := m.APIDownSince(); !since.IsZero() {
		t.Errorf("APIDownSince after a 404 = %v, want zero", since)
	}
	if ok, why := m.APIConnected(); !ok {
		t.Errorf("APIConnected after a 404 = false (%q): a refusal is an answer", why)
	}
	m.api.Increment(context.Background(), "503", "GET", "198.18.0.1:6443")
	if since, _ := m.APIDownSince(); since.IsZero() {
		t.Error("APIDownSince after a 503 is zero")
	}
}

func TestConntrackReclaimedNeverGoesBack(t *testing.T) {
	// 1 000 flows created in the other table, none deleted: what it does
	// not hold was reclaimed. A scrape that walks a fuller table (flows
	// created during the walk) or cannot read it reports the last count.
	fills := []int{256, 300, 200}
	reg := prometheus.NewRegistry()
	New(reg, slog.New(slog.DiscardHandler), fakeDatapath{otherEntries: &fills}, func() State { return State{} })
	for i, want := range []float64{744, 744, 800, 800} {
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]*dto.MetricFamily{}
		for _, f := range fams {
			byName[f.GetName()] = f
		}
		if got := value(t, byName, "palisade_conntrack_reclaimed_total", map[string]string{"table": "other"}); got != want {
			t.Errorf("scrape %d: reclaimed %v, want %v", i, got, want)
		}
	}
}
