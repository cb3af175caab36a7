package conformance

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// The contract's command line (scripts/conformance passes it through; the
// flag package takes --model as well as -model). Without -model the test
// replays the upstream catalog and ours.
var (
	flagModel = flag.String("model", "", "catalog model.json")
	flagCases = flag.String("cases", "", "catalog cases.json")
	flagOnly  = flag.String("only", "", "comma-separated case ids to run (default: all)")
	flagNodes = flag.Int("nodes", 2, "testbed nodes to spread the pods over")
	flagJSON  = flag.String("json", "", "also write the results to this file")
	// The generated catalog is 210 cases on 3 nodes, about 7 minutes
	// (README "Conformance"): make test replays all of them; --generated-every=5
	// every 5th, 0 none.
	flagGenEvery = flag.Int("generated-every", 1, "without --model: replay every Nth case of tests/conformance/generated (0: none)")
	flagVia      = flag.String("via", "clusterip", "how probes reach the destination: clusterip (its Service's ClusterIP), pod (its pod IP) or nodeport (its Service's NodePort on two nodes' addresses)")
	flagProxy    = flag.Bool("kube-proxy", true, "run kube-controller-manager and kube-proxy (iptables); false: the runner writes EndpointSlices and ClusterIPs rely on Palisade's own translation")
	flagFamily   = flag.String("family", "4", "address family of pods, Services, ipBlocks and probes: 4, 6 or dual (family.go)")
	flagCLI      = flag.Bool("cli", false, "scripts/conformance mode: the report alone on stdout, exit status from the results")
	// Issue #6: explain must agree with the datapath on every probed pair.
	flagExplain = flag.Bool("explain", true, "after each probe step, ask the agents to explain every probed pair and fail on a disagreement with the observation")
)

// cli holds, in -cli mode, the real stdout and the finished report.
var cli struct {
	stdout  io.Writer
	reports []*Report
	want    int // catalogs to replay
	err     error
}

// TestMain turns the test binary into scripts/conformance with -cli: the
// testing package's own lines go to stderr, the report alone to stdout,
// and the exit status is the report's (0 only when nothing failed).
func TestMain(m *testing.M) {
	flag.Parse()
	if !*flagCLI {
		os.Exit(m.Run())
	}
	cli.stdout = os.Stdout
	os.Stdout = os.Stderr
	m.Run()
	switch {
	case cli.err != nil:
		fmt.Fprintf(cli.stdout, "conformance: %v\n", cli.err)
		os.Exit(2)
	case len(cli.reports) < cli.want || cli.want == 0:
		fmt.Fprintln(cli.stdout, "conformance: the testbed could not be set up; the log is on stderr")
		os.Exit(2)
	}
	total := &Report{}
	for _, r := range cli.reports {
		total.Passed += r.Passed
		total.Failed += r.Failed
		total.Skipped += r.Skipped
	}
	if len(cli.reports) > 1 {
		fmt.Fprintf(cli.stdout, "\nall catalogs:\n%s\n", total.Summary())
	}
	explainWrong := 0
	for _, r := range cli.reports {
		if r.Explain != nil {
			explainWrong += r.Explain.Disagreements
		}
	}
	if total.Failed > 0 || explainWrong > 0 {
		os.Exit(1)
	}
	os.Exit(0)
}

// catalogSpec names a catalog's files; every > 1 replays every Nth case.
type catalogSpec struct {
	name, model, cases string
	every              int
}

// defaultCatalogs are what `go test` replays: the upstream suite
// (tests/conformance/upstream; PALISADE_CONFORMANCE_UPSTREAM overrides
// where), and ours.
func defaultCatalogs(t *testing.T) []catalogSpec {
	root := testbed.ModuleRoot(t)
	upstream := os.Getenv("PALISADE_CONFORMANCE_UPSTREAM")
	if upstream == "" {
		upstream = filepath.Join(root, "tests", "conformance", "upstream")
	}
	specs := []catalogSpec{
		{"upstream-netpol", filepath.Join(upstream, "model.json"), filepath.Join(upstream, "cases.json"), 1},
		{"palisade", filepath.Join(root, "tests", "conformance", "catalog", "model.json"), filepath.Join(root, "tests", "conformance", "catalog", "cases.json"), 1},
		// sigs.k8s.io/network-policy-api's ClusterNetworkPolicy suite.
		{"network-policy-api", filepath.Join(root, "tests", "conformance", "network-policy-api", "model.json"), filepath.Join(root, "tests", "conformance", "network-policy-api", "cases.json"), 1},
	}
	if *flagGenEvery > 0 {
		gen := filepath.Join(root, "tests", "conformance", "generated")
		specs = append(specs, catalogSpec{"generated", filepath.Join(gen, "model.json"), filepath.Join(gen, "cases.json"), *flagGenEvery})
	}
	return specs
}

// TestPrivilegedConformance replays the catalogs on a testbed of -nodes
// nodes. Every case must pass: a skip fails the test too, because the
// catalogs are ones this runner must replay in full.
func TestPrivilegedConformance(t *testing.T) {
	privileged.Require(t)
	specs := []catalogSpec{{"", *flagModel, *flagCases, 1}}
	if *flagModel == "" && *flagCases == "" {
		specs = defaultCatalogs(t)
	} else if *flagModel == "" || *flagCases == "" {
		cli.err = fmt.Errorf("need both --model and --cases")
		t.Fatal(cli.err)
	}
	via, err := ParseVia(*flagVia)
	if err != nil {
		cli.err = err
		t.Fatal(err)
	}
	family, err := ParseFamily(*flagFamily)
	if err != nil {
		cli.err = err
		t.Fatal(err)
	}
	cli.want = len(specs)
	var only []string
	if *flagOnly != "" {
		only = strings.Split(*flagOnly, ",")
	}
	for _, spec := range specs {
		if spec.name == "" {
			spec.name = filepath.Base(filepath.Dir(spec.model))
		}
		t.Run(spec.name, func(t *testing.T) { replayCatalog(t, spec, only, via, family) })
	}
	if *flagJSON != "" {
		if err := writeJSON(*flagJSON, cli.reports); err != nil {
			t.Error(err)
		}
	}
}

// TestPrivilegedConformanceNodePort replays the upstream catalog with
// --via nodeport: every pair through its Service's NodePort on its own
// node's address and on the next node's (via.go), with the same expected
// tables (SCTP aside: Palisade drops SCTP to a NodePort, expectVia). A pod
// reaching another through a NodePort is masqueraded by kube-proxy as a
// node, which policy admits; this checks that Palisade's translation on
// the sending veth leaves every policy verdict as it is.
func TestPrivilegedConformanceNodePort(t *testing.T) {
	privileged.Require(t)
	if *flagCLI || *flagModel != "" {
		t.Skip("scripts/conformance and --model runs choose their --via themselves")
	}
	for _, spec := range defaultCatalogs(t) {
		if spec.name == "upstream-netpol" {
			replayCatalog(t, spec, nil, ViaNodePort, Family4)
			return
		}
	}
	t.Fatal("no upstream-netpol catalog among the default ones")
}

// replayCatalog replays one catalog (only the cases named in only, if
// any) on a testbed of its own, probing via via on family, and returns
// its report.
func replayCatalog(t *testing.T, spec catalogSpec, only []string, via Via, family Family) *Report {
	cat, err := Load(spec.model, spec.cases)
	if err != nil {
		cli.err = err
		t.Fatal(err)
	}
	cases, err := cat.Select(only)
	if err != nil {
		cli.err = err
		t.Fatal(err)
	}
	if spec.every > 1 && len(only) == 0 {
		var some []Case
		for i, c := range cases {
			if i%spec.every == 0 {
				some = append(some, c)
			}
		}
		cases = some
	}
	var out io.Writer = &logWriter{t: t}
	if *flagCLI {
		out = cli.stdout
	}
	report := NewReport(out, spec.name, cat.Model.PodOrder)
	// Registered before Setup's cleanups, so it runs after them: a failed
	// case is repeated below the process logs they print, at the end of
	// the output, which is the part a truncated CI log keeps.
	var failed []string
	t.Cleanup(func() {
		if len(failed) > 0 {
			t.Logf("catalog %s: %d failed (repeated after the process logs):\n%s", spec.name, len(failed), strings.Join(failed, ""))
		}
	})
	start := time.Now()
	cat.Family = string(family)
	env := Setup(t, cat.Model, *flagNodes, *flagProxy, WithVia(via), WithFamily(family))
	env.Explain = *flagExplain
	report.Header(env, time.Since(start))
	for i := range cases {
		c := &cases[i]
		t.Run(c.ID, func(t *testing.T) {
			res := Run(env, cat, c)
			report.Add(res)
			if *flagCLI {
				return
			}
			if d := res.ExplainDisagreements(); len(d) > 0 {
				t.Errorf("explain disagrees with the datapath on %d pairs:\n%s", len(d), strings.Join(d, "\n"))
			}
			switch res.Status {
			case Fail:
				msg := FormatCase(res, cat.Model.PodOrder)
				failed = append(failed, msg)
				t.Error(msg)
			case Skip:
				t.Errorf("skipped, and this catalog must run in full: %s", res.Reason)
			}
		})
	}
	report.Finish()
	cli.reports = append(cli.reports, report)
	// A whole catalog has pairs either way: an explain check that
	// saw only one verdict judged nothing.
	if x := report.Explain; env.Explain && len(only) == 0 && !*flagCLI &&
		(x == nil || x.Allowed == 0 || x.Allowed == x.Pairs-x.Disagreements) {
		t.Errorf("explain check saw a single verdict over the whole catalog: %+v", x)
	}
	return report
}

// writeJSON writes one catalog's report, or with several a list of them.
func writeJSON(path string, reports []*Report) error {
	var v any = reports
	if len(reports) == 1 {
		v = reports[0]
	}
	data, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	return nil
}

// logWriter sends whole lines to t.Log.
type logWriter struct {
	t   *testing.T
	buf bytes.Buffer
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.t.Log(strings.TrimSuffix(line, "\n"))
	}
}
