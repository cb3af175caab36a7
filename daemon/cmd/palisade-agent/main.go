// Command palisade-agent is Palisade's node agent: it loads and pins the
// eBPF datapath, watches Pods, Namespaces, Nodes and NetworkPolicies, and
// keeps every local pod's maps equal to the policies that select it. The
// palisade CNI plugin registers pods with it over a unix socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/adopt"
	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/datapath"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/health"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/k8s"
	"github.com/palisade-cni/palisade/daemon/metrics"
	"github.com/palisade-cni/palisade/daemon/server"
	"github.com/palisade-cni/palisade/daemon/statefile"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() { os.Exit(run()) }

// How often the agent looks for local pods running without an endpoint,
// and how long one may before it counts: longer than an informer's lag
// behind a pod's status, short next to how long a pod lives.
const (
	unmanagedEvery = 2 * time.Second
	unmanagedGrace = 5 * time.Second
	// reconcileEvery is how often endpoints of vanished interfaces and
	// finished pods are reclaimed (endpoint.Manager.Reconcile).
	reconcileEvery = 2 * time.Second
)

func run() int {
	// install-cni, uninstall, --help and --version: see subcommands.go.
	cfg, code, done := command(os.Args[1:], os.Stdout, os.Stderr)
	if done {
		return code
	}
	log := newLogger(cfg)
	klog.SetSlogLogger(log)
	tuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent(ctx, cfg, log); err != nil {
		log.Error("Agent stopped", "error", err)
		return 1
	}
	log.Info("Agent stopped; the datapath keeps enforcing the last policy")
	return 0
}

// gcPercent is the agent's GOGC unless the environment sets one. The live
// heap is mostly the informers' objects and two compilations (the last
// one, kept, and the next); with Go's default of 100 the heap grows to
// twice that before a collection, which put a 10 000-pod agent's RSS at
// ~145 MiB over a ~50 MiB live heap. Like Calico's Felix (GoGCThreshold
// 40), trade a little CPU for that memory. GOMEMLIMIT, read by the runtime,
// caps the heap further where a node needs it.
const gcPercent = 50

func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
}

func agent(ctx context.Context, cfg Config, log *slog.Logger) error {
	// Before anything is loaded or pruned: a second agent must touch
	// nothing of the first's.
	lock, err := statefile.Lock(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock limit: %w", err)
	}
	opts := bpf.LoadOptions{Root: cfg.BPFRoot, Rejudge: cfg.Rejudge,
		AllowSampleRate: cfg.FlowSampleRate, EventRateLimit: cfg.EventRateLimit}
	if err := conntrackOptions(cfg, &opts); err != nil {
		return err
	}
	objs, err := bpf.Load(opts)
	if err != nil {
		return err
	}
	defer objs.Close()
	logConntrack(log, objs, opts)
	writer, err := datapath.New(objs)
	if err != nil {
		return err
	}
	registry, err := endpoint.Open(filepath.Join(cfg.StateDir, "endpoints.json"))
	if err != nil {
		return err
	}
	idPath := filepath.Join(cfg.StateDir, "identities.json")
	alloc, err := identity.Load(idPath)
	if err != nil {
		return err
	}
	var ctrl *controller.Controller
	var cluster *k8s.Cluster
	state := agentState(&cluster, &ctrl)
	obs := newObservability(log, objs, state)
	client, rc, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	cnpClient, err := clusterPolicyClient(log, client, rc)
	if err != nil {
		return err
	}

	cluster, err = k8s.New(client, cnpClient, func() { ctrl.Trigger() })
	if err != nil {
		return err
	}
	var cnpStatus func(context.Context, *cnpv1.ClusterNetworkPolicy, []string) error
	if cnpClient != nil {
		cnpStatus = k8s.StatusWriter{Client: cnpClient}.SetProgrammed
	}
	ctrl = controller.New(controller.Config{
		Log: log, NodeName: cfg.NodeName, Cluster: cluster, Registry: registry, Datapath: writer,
		Alloc: alloc, NodeIPs: localAddrs, Persist: func(a *identity.Allocator) error { return a.Save(idPath) },
		OnSync:              obs.observeSync,
		OnFailure:           obs.metrics.SyncFailed,
		ClusterPolicyStatus: cnpStatus,
	})
	endpoints := &endpoint.Manager{
		Log: log, NodeName: cfg.NodeName, Registry: registry, Program: ctrl, Pods: cluster.Pods,
		Attach: endpoint.BPFAttacher{Root: cfg.BPFRoot, Mode: cfg.AttachMode}, Alive: endpoint.KernelLinkAlive,
	}
	if err := endpoints.Restore(); err != nil {
		log.Warn("Endpoints of vanished interfaces not all forgotten", "error", err)
	}

	synced := make(chan struct{})
	ready := func() (bool, string) {
		select {
		case <-synced:
		default:
			return false, "waiting for the Kubernetes caches to sync"
		}
		if !ctrl.Synced() {
			return false, "waiting for the first policy sync"
		}
		return true, ""
	}
	metrics.RegisterReady(obs.reg, func() bool { ok, _ := ready(); return ok })
	srv := &server.Server{
		Log: log, Version: version, BPFRoot: cfg.BPFRoot, AttachMode: cfg.AttachMode,
		Endpoints: endpoints, Controller: ctrl, Ready: ready, Pprof: cfg.Pprof,
		Inspect: obs.inspector(ctx, log, cfg, objs, cluster, registry, ctrl, state),
		OnAdd:   obs.metrics.ObserveAdd,
	}
	// The Lease's last word ("agent stopped") is written after ctx ends;
	// waiting for it keeps a clean stop from reading as a stale node.
	reportCtx, stopReporting := context.WithCancel(ctx)
	reported := obs.reportToCluster(reportCtx, log, cfg, client, ctrl, ready, state)
	defer func() {
		stopReporting()
		<-reported
	}()
	errc := make(chan error, 3)
	go func() { errc <- srv.Serve(ctx, cfg.Socket) }()
	probes := &health.Checker{
		Stall: health.DefaultStall, APIGrace: health.DefaultAPIGrace,
		Progress: ctrl.Progress, APIDown: obs.metrics.APIDownSince, Ready: ready,
	}
	go func() { errc <- probes.Serve(ctx, cfg.HealthAddr, obs.metricsHandler()) }()
	if cfg.MetricsAddr != "" {
		go func() { errc <- serveMetrics(ctx, cfg.MetricsAddr, obs.metricsHandler()) }()
	}

	cluster.Start(ctx)
	defer cluster.Shutdown()
	if !cluster.WaitForSync(ctx) {
		return ctx.Err()
	}
	go ctrl.Run(ctx)
	// The programs of this version go onto the surviving endpoints only
	// once the maps hold their policy: an upgrade whose maps are new would
	// otherwise judge with empty ones for a moment.
	if !waitSynced(ctx, ctrl) {
		return ctx.Err()
	}
	if err := endpoints.Reattach(); err != nil {
		log.Error("Programs not re-attached", "error", err)
	}
	// Adopt pods that were running before the agent (daemon/adopt). The
	// agent reports ready only afterwards, so a rollout waits for it.
	adoption := adopt.Config{
		Log: log, NodeName: cfg.NodeName, CacheDir: cfg.CNICacheDir, Endpoints: endpoints, Pods: cluster.Pods,
	}
	if _, err := adopt.Run(ctx, adoption); err != nil {
		log.Error("Adoption incomplete", "error", err)
	}
	close(synced)
	// Pods started later through a chain without palisade (the main CNI
	// rewrote its conflist before install-cni put palisade back) are
	// adopted the same way.
	go (&adopt.Sweeper{Config: adoption, Every: unmanagedEvery, Grace: unmanagedGrace, Report: obs.setUnmanaged}).Run(ctx)
	go endpoints.Run(ctx, reconcileEvery, func(res endpoint.ReconcileResult, _ error) {
		for reason, n := range res.ByReason {
			obs.metrics.EndpointsReclaimed(reason, n)
		}
	})
	log.Info("Agent started", "version", version, "node", cfg.NodeName, "bpfRoot", cfg.BPFRoot, "socket", cfg.Socket)

	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// waitSynced waits for the controller's first sync, false if ctx ends first.
func waitSynced(ctx context.Context, ctrl *controller.Controller) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !ctrl.Synced() {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return true
}

func kubeClient(kubeconfig string) (kubernetes.Interface, *rest.Config, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("load Kubernetes client config (set --kubeconfig outside a cluster): %w", err)
	}
	rc.UserAgent = "palisade-agent/" + version
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	return client, rc, nil
}

// clusterPolicyClient returns a ClusterNetworkPolicy client, nil when the
// API does not serve the resource (its CRD is not installed): the agent
// then enforces NetworkPolicy alone and says so. Installing the CRD later
// takes an agent restart.
func clusterPolicyClient(log *slog.Logger, client kubernetes.Interface, rc *rest.Config) (cnpclient.Interface, error) {
	var served bool
	var err error
	// The API may still be coming up with the agent: a few tries.
	for try := 0; try < 5; try++ {
		if served, err = k8s.ServesClusterPolicies(client.Discovery()); err == nil {
			break
		}
		log.Warn("API discovery failed; retrying", "error", err)
		time.Sleep(2 * time.Second)
	}
	if err != nil {
		return nil, err
	}
	if !served {
		log.Warn("ClusterNetworkPolicy v1beta1 not served; admin tiers off until the CRD is installed and the agent restarted")
		return nil, nil
	}
	c, err := cnpclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("create ClusterNetworkPolicy client: %w", err)
	}
	return c, nil
}

// localAddrs lists the addresses of the agent's own network namespace: the
// node's. Traffic between a pod and them is always allowed.
func localAddrs() ([]netip.Addr, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		// Link-local addresses name a link, not the node: every host-side
		// veth has one, and they come and go with the pods.
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLoopback() && !ip.Unmap().IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// serveMetrics serves /metrics alone where Prometheus can reach it, apart
// from the health endpoints, which stay on loopback for the kubelet's
// probes.
func serveMetrics(ctx context.Context, addr string, handler http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", handler)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics on %s: %w", addr, err)
	}
	return nil
}
