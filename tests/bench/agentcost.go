package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// AgentSample is one node agent's cost at one stage of the run.
type AgentSample struct {
	Stage      string  `json:"stage"`
	Node       string  `json:"node"`
	Policies   int     `json:"policies"`
	Pods       int     `json:"pods"`
	RSSMiB     float64 `json:"rss_mib"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// MapMemlockMiB is the memlock of the BPF maps the agent holds open
	// (from /proc/PID/fdinfo), what the kernel charges for them.
	MapMemlockMiB float64            `json:"map_memlock_mib"`
	Goroutines    float64            `json:"goroutines"`
	Identities    float64            `json:"identities"`
	Endpoints     float64            `json:"endpoints"`
	MapEntries    map[string]float64 `json:"map_entries"`
	Pins          int                `json:"pins"`
	// CompileMs and ApplyMs are the mean full-compile and map-write times
	// of the agent's syncs so far (its own histograms): every pod ADD and
	// every API change runs one sync.
	CompileMs float64 `json:"compile_ms_mean"`
	ApplyMs   float64 `json:"apply_ms_mean"`
	Syncs     float64 `json:"syncs"`
	// AddsOwn and AddsSync count CNI ADDs programmed on their own and
	// those that waited for a whole sync; AddOwnMs is the former's mean
	// time inside the agent.
	AddsOwn  float64 `json:"adds_own"`
	AddsSync float64 `json:"adds_sync"`
	AddOwnMs float64 `json:"add_own_ms_mean"`
}

// SampleAgent reads a's process figures from /proc and its own /metrics.
func SampleAgent(ctx context.Context, a *testbed.Agent, node *testbed.Node) (AgentSample, error) {
	s := AgentSample{Node: node.Name, MapEntries: map[string]float64{}}
	pid := a.Process().PID()
	var err error
	if s.RSSMiB, err = rssMiB(pid); err != nil {
		return s, err
	}
	if s.CPUSeconds, err = cpuSeconds(pid); err != nil {
		return s, err
	}
	if s.MapMemlockMiB, err = mapMemlockMiB(pid); err != nil {
		return s, err
	}
	m, err := AgentMetrics(ctx, node)
	if err != nil {
		return s, err
	}
	s.Goroutines = m["go_goroutines"]
	s.Identities = m["palisade_identities"]
	s.Endpoints = m["palisade_endpoints"]
	s.Syncs = m["palisade_policy_compile_duration_seconds_count"]
	s.CompileMs = meanMs(m, "palisade_policy_compile_duration_seconds")
	s.ApplyMs = meanMs(m, "palisade_map_sync_duration_seconds")
	const add = "palisade_endpoint_add_duration_seconds"
	s.AddsOwn = m[add+`_count{how="own"}`]
	s.AddsSync = m[add+`_count{how="sync"}`]
	if s.AddsOwn > 0 {
		s.AddOwnMs = m[add+`_sum{how="own"}`] / s.AddsOwn * 1000
	}
	for k, v := range m {
		if name, ok := strings.CutPrefix(k, "palisade_map_entries{"); ok {
			s.MapEntries[strings.TrimSuffix(name, "}")] = v
		}
	}
	if s.Pins, err = countPins(a.BPFRoot()); err != nil {
		return s, err
	}
	return s, nil
}

// AgentMetrics fetches the agent's /metrics from inside its node (the
// health listener is on the node's loopback) as series → value, the series
// written as in the text format ("name{label=\"v\"}").
func AgentMetrics(ctx context.Context, node *testbed.Node) (map[string]float64, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return node.NetNS.DialContext(ctx, network, addr)
		}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9879/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch agent metrics on %s: %w", node.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch agent metrics on %s: %s", node.Name, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads the Prometheus text format into series → value.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("parse metrics: no value in %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("parse metrics: %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return out, nil
}

func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("read rss: %w", err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("read rss of pid %d: no VmRSS", pid)
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	// Fields after the command, which may hold spaces, in parentheses.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("read cpu time of pid %d: short stat", pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("read cpu time of pid %d: bad stat", pid)
	}
	return (utime + stime) / clockTicks, nil
}

func mapMemlockMiB(pid int) (float64, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("read map memory: %w", err)
	}
	var total float64
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		s := string(b)
		if !strings.Contains(s, "map_type:") {
			continue
		}
		for line := range strings.Lines(s) {
			if rest, ok := strings.CutPrefix(line, "memlock:"); ok {
				v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
				if err == nil {
					total += v
				}
			}
		}
	}
	return total / (1 << 20), nil
}

func countPins(root string) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count pins under %s: %w", root, err)
	}
	return n, nil
}

// meanMs is a histogram's mean in milliseconds, 0 before its first sample.
func meanMs(m map[string]float64, histogram string) float64 {
	n := m[histogram+"_count"]
	if n == 0 {
		return 0
	}
	return m[histogram+"_sum"] / n * 1000
}
