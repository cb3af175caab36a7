package testbed

import (
	"fmt"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metric scrapes the agent's /metrics inside its node and returns the sum
// of the samples of counter or gauge name whose labels include labels
// (nil: all of them). A metric with no such sample is an error.
func (a *Agent) Metric(name string, labels map[string]string) (float64, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: a.node.NetNS.DialContext}}
	resp, err := hc.Get("http://" + agentHealthAddr + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("scrape the agent of node %s: %w", a.node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("scrape the agent of node %s: %s", a.node.Name, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("parse the metrics of node %s: %w", a.node.Name, err)
	}
	var sum float64
	found := false
	for _, m := range fams[name].GetMetric() {
		if !labelsInclude(m, labels) {
			continue
		}
		found = true
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	if !found {
		return 0, fmt.Errorf("node %s: no metric %s%v", a.node.Name, name, labels)
	}
	return sum, nil
}

func labelsInclude(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
