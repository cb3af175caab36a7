package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/nodestatus"
)

// Config is the agent's configuration, from flags only.
type Config struct {
	Kubeconfig string
	NodeName   string
	Socket     string
	StateDir   string
	BPFRoot    string
	AttachMode bpf.AttachMode
	HealthAddr string
	// MetricsAddr is where /metrics listens for Prometheus, host and
	// port; empty when only HealthAddr serves it.
	MetricsAddr string
	Rejudge     bool
	// CNICacheDir is where the runtime's libcni keeps ADD results; the
	// agent adopts pods found there that were running before it.
	CNICacheDir string
	LogLevel    slog.Level
	LogJSON     bool
	// FlowSampleRate reports one allowed flow in this many as a flow
	// event; 0 reports none. Drops are always reported.
	FlowSampleRate uint32
	// EventRateLimit bounds verdict events per second per CPU.
	EventRateLimit uint32
	// ConntrackTCP and ConntrackOther size the conntrack tables; 0 sizes
	// them from ConntrackMemoryPercent of the node's memory.
	ConntrackTCP, ConntrackOther uint32
	ConntrackMemoryPercent       float64
	// Namespace is the agent's own, where it keeps its node's status Lease.
	Namespace string
	// StatusLeaseDuration is how long the node's status Lease holds; the
	// agent renews it four times as often.
	StatusLeaseDuration time.Duration
	// Pprof serves Go profiles on the agent socket.
	Pprof bool
}

func parseFlags(args []string) (Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("palisade-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty means the in-cluster service account")
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node's Node object (default $NODE_NAME)")
	fs.StringVar(&cfg.Socket, "socket", agentapi.DefaultSocket, "unix socket the CNI plugin talks to")
	fs.StringVar(&cfg.StateDir, "state-dir", agentapi.DefaultStateDir, "directory for the endpoint registry and identities: a tmpfs, like the pins they describe")
	fs.StringVar(&cfg.BPFRoot, "bpf-root", agentapi.DefaultBPFRoot, "bpffs directory for pinned maps, programs and links")
	mode := fs.String("attach-mode", string(bpf.AttachAuto), "program hook: auto (tcx, else tc), tcx or tc")
	fs.StringVar(&cfg.HealthAddr, "health-addr", "127.0.0.1:9879", "address of /healthz and /readyz")
	metricsHost := fs.String("metrics-addr", "none", "where Prometheus scrapes /metrics: an address of the node (the node's IP, or 127.0.0.1), \"all\" for every address, or \"none\" to serve it only on --health-addr")
	metricsPort := fs.Uint("metrics-port", 9880, "port of /metrics on --metrics-addr")
	fs.BoolVar(&cfg.Rejudge, "rejudge", true, "re-judge established flows when the policy that admitted them changes")
	fs.StringVar(&cfg.CNICacheDir, "cni-cache-dir", "/var/lib/cni", "the container runtime's libcni cache, read to adopt pods started before the agent")
	sample := fs.Uint("flow-sample-rate", 0, "report one allowed flow in N to palisadectl flows (0: none, 1: all); drops are always reported")
	rate := fs.Uint("event-rate-limit", bpf.DefaultEventRateLimit, "most verdict events a CPU reports per second; the rest are counted, not reported")
	ctTCP := fs.Uint("conntrack-tcp-max", 0, "entries of the TCP conntrack table (0: from --conntrack-memory-percent)")
	ctOther := fs.Uint("conntrack-other-max", 0, "entries of the conntrack table of every other protocol (0: from --conntrack-memory-percent)")
	fs.Float64Var(&cfg.ConntrackMemoryPercent, "conntrack-memory-percent", 1,
		fmt.Sprintf("share of the node's memory for both conntrack tables (%d bytes an entry), two thirds for TCP; at most %d TCP and %d other entries",
			bpf.ConntrackEntryBytes, bpf.DefaultConntrackTCP, bpf.DefaultConntrackOther))
	fs.StringVar(&cfg.Namespace, "namespace", envOr("POD_NAMESPACE", nodestatus.DefaultNamespace),
		"the agent's namespace, holding its node's status Lease (default $POD_NAMESPACE, else "+nodestatus.DefaultNamespace+")")
	fs.DurationVar(&cfg.StatusLeaseDuration, "status-lease-duration", nodestatus.DefaultDuration,
		"how long the node's status Lease holds without renewal before palisadectl status --all-nodes calls it stale; renewed 4 times as often")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve Go profiles at /debug/pprof/ on the agent socket (root only; they expose the agent's memory)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, &helpError{usage(fs)}
		}
		return cfg, fmt.Errorf("%w\nflags:\n%s", err, usage(fs))
	}
	var errs []error
	var err error
	cfg.FlowSampleRate, cfg.EventRateLimit = uint32(min(*sample, 1<<31)), uint32(min(*rate, 1<<31))
	if *rate == 0 {
		errs = append(errs, errors.New("--event-rate-limit must be at least 1"))
	}
	cfg.ConntrackTCP, cfg.ConntrackOther = uint32(min(*ctTCP, 1<<31)), uint32(min(*ctOther, 1<<31))
	if cfg.ConntrackMemoryPercent <= 0 || cfg.ConntrackMemoryPercent > 100 {
		errs = append(errs, fmt.Errorf("--conntrack-memory-percent %v: use a share above 0 and at most 100", cfg.ConntrackMemoryPercent))
	}
	if cfg.MetricsAddr, err = metricsAddr(*metricsHost, *metricsPort); err != nil {
		errs = append(errs, err)
	}
	if cfg.AttachMode, err = bpf.ParseAttachMode(*mode); err != nil {
		errs = append(errs, err)
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level %q: use debug, info, warn or error", *level))
	}
	switch *format {
	case "text":
	case "json":
		cfg.LogJSON = true
	default:
		errs = append(errs, fmt.Errorf("--log-format %q: use text or json", *format))
	}
	if cfg.StatusLeaseDuration < 4*time.Second {
		errs = append(errs, fmt.Errorf("--status-lease-duration %v: use at least 4s", cfg.StatusLeaseDuration))
	}
	if cfg.NodeName == "" {
		errs = append(errs, errors.New("--node-name (or $NODE_NAME) is required: the agent must know which pods are local"))
	}
	return cfg, errors.Join(errs...)
}

// metricsAddr is the listen address of --metrics-addr and --metrics-port:
// "" for none, ":port" for every address (IPv4 and IPv6), else the IP's.
func metricsAddr(host string, port uint) (string, error) {
	if port == 0 || port > 65535 {
		return "", fmt.Errorf("--metrics-port %d: use a port from 1 to 65535", port)
	}
	switch host {
	case "none":
		return "", nil
	case "all":
		return fmt.Sprintf(":%d", port), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		// A Kubernetes $(VAR) left unexpanded ends up here too: its
		// variable was not set in the container's env.
		return "", fmt.Errorf("--metrics-addr %q: use an IP address of the node, all or none", host)
	}
	return netip.AddrPortFrom(ip, uint16(port)).String(), nil
}

// helpError asks for the usage, with the flags' descriptions.
type helpError struct{ flags string }

func (e *helpError) Error() string { return "help requested" }

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func usage(fs *flag.FlagSet) string {
	var b strings.Builder
	fs.SetOutput(&b)
	fs.PrintDefaults()
	return b.String()
}

func newLogger(cfg Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogJSON {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
