package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// metricsPort is the chart's default metrics.port.
const metricsPort = "9880"

// TestPrivilegedMetricsScrapeable runs an agent with --metrics-addr on its
// node's IP, as the chart's default does with $(HOST_IP), and scrapes it
// from another node's namespace, as Prometheus on another machine would.
// Every metric the chart's alerts and dashboard name must be in that
// scrape, so a renamed metric cannot leave an alert that never fires.
// The health endpoints stay on loopback: the other node cannot reach them.
func TestPrivilegedMetricsScrapeable(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	scraper := cp.AddNode(t, "node-2", 2)
	node.StartAgent(t, testbed.AgentOptions{Args: []string{"--metrics-addr=" + node.IP.String(), "--metrics-port=" + metricsPort}})

	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: scraper.NetNS.DialContext}}
	url := "http://" + net.JoinHostPort(node.IP.String(), metricsPort) + "/metrics"
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("scrape %s from node-2: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}
	series := seriesNames(fams)
	for _, name := range append(chartMetricNames(t), "palisade_build_info", "palisade_flows_allowed_total", "palisade_packets_dropped_total", "palisade_unmanaged_pods") {
		if !series[name] {
			t.Errorf("%s: no metric %s", url, name)
		}
	}
	if info := fams["palisade_build_info"].GetMetric(); len(info) != 1 || info[0].GetGauge().GetValue() != 1 {
		t.Errorf("palisade_build_info: %v, want one sample of 1", info)
	}

	// The probes' address stays private to the node.
	health := net.JoinHostPort(node.IP.String(), "9879")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := scraper.NetNS.DialContext(ctx, "tcp", health); err == nil {
		c.Close()
		t.Errorf("node-2 reached the health endpoints on %s; they must listen on loopback only", health)
	}
}

// chartMetricNames are the palisade_* metrics the chart's alert rules and
// dashboard query.
func chartMetricNames(t *testing.T) []string {
	t.Helper()
	files := filepath.Join(testbed.ModuleRoot(t), "charts", "palisade", "files")
	re := regexp.MustCompile(`palisade_[a-z_]+`)
	seen := map[string]bool{}
	for _, f := range []string{"alerts.yaml", "dashboard.json"} {
		data, err := os.ReadFile(filepath.Join(files, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllString(string(data), -1) {
			seen[m] = true
		}
	}
	if len(seen) == 0 {
		t.Fatal("the chart's alerts and dashboard name no palisade_ metric")
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// seriesNames are the names a query can use: each family's, and a
// histogram's _bucket, _sum and _count.
func seriesNames(fams map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, f := range fams {
		out[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			out[name+"_bucket"], out[name+"_sum"], out[name+"_count"] = true, true, true
		}
	}
	return out
}
