package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

const (
	// agentHealthAddr is per node: each node namespace has its own loopback.
	agentHealthAddr = "127.0.0.1:9879"
	// agentReadyTimeout bounds the wait for Status.Ready: loading the
	// datapath and syncing the caches from a local API server.
	agentReadyTimeout = 60 * time.Second
	// bpffsRoot is where the host's bpffs is normally mounted.
	bpffsRoot = "/sys/fs/bpf"
)

// AgentOptions tunes a node's palisade-agent.
type AgentOptions struct {
	// AttachMode is "tcx", "tc" or "" for auto.
	AttachMode string
	// Args are extra flags, appended after the testbed's own.
	Args []string
	// AdoptFromCNICache points --cni-cache-dir at the node's libcni cache,
	// so that the agent adopts pods that started without palisade, as the
	// DaemonSet's agent reads the host's /var/lib/cni.
	AdoptFromCNICache bool
	// Env is added to the agent's environment ("KEY=value"), as a
	// DaemonSet's env would be: GOGC or GOMEMLIMIT for the benchmarks.
	Env []string
}

// Agent is a palisade-agent running inside a node's namespace.
type Agent struct {
	node     *Node
	proc     *Process
	client   *agentapi.Client
	bpfRoot  string
	stateDir string
}

// StartAgent runs palisade-agent inside the node (built on first use) with a
// state directory and a bpffs directory of its own, and waits until it
// reports ready. Cleanup stops it and removes its pins.
func (n *Node) StartAgent(tb TB, opts AgentOptions) *Agent {
	tb.Helper()
	bin := Binaries(tb).Agent(tb)
	a := &Agent{
		node:     n,
		client:   agentapi.NewClient(n.AgentSocket()),
		bpfRoot:  filepath.Join(bpffs(tb), "palisade-test-"+randomHex(4)),
		stateDir: tmpfsDir(tb, "palisade-agent-state-"),
	}
	record(tb, "path", a.bpfRoot)
	// Registered before the process, so it runs after the agent stopped.
	tb.Cleanup(func() {
		if err := os.RemoveAll(a.bpfRoot); err != nil {
			tb.Errorf("remove agent bpf root: %v", err)
		}
	})
	mode := opts.AttachMode
	if mode == "" {
		mode = "auto"
	}
	args := []string{
		bin,
		"--kubeconfig=" + n.cp.Kubeconfig(),
		"--node-name=" + n.Name,
		"--socket=" + n.AgentSocket(),
		"--state-dir=" + a.stateDir,
		"--bpf-root=" + a.bpfRoot,
		"--health-addr=" + agentHealthAddr,
		"--attach-mode=" + mode,
		"--log-level=debug",
		// The benchmarks profile the agents.
		"--pprof",
	}
	if opts.AdoptFromCNICache {
		args = append(args, "--cni-cache-dir="+n.CNICacheDir())
	}
	a.proc = NewProcess(tb, n.NetNS, "palisade-agent-"+n.Name, append(args, opts.Args...)...)
	a.proc.Setenv(opts.Env...)
	if err := a.Start(); err != nil {
		tb.Fatal(err)
	}
	return a
}

// Start starts the agent again after Stop, with the same state directory and
// bpf root, and waits until it is ready.
func (a *Agent) Start() error {
	if err := a.proc.Start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), agentReadyTimeout)
	defer cancel()
	if err := a.WaitReady(ctx); err != nil {
		return fmt.Errorf("start agent on node %s: %w", a.node.Name, err)
	}
	return nil
}

// WaitReady polls the agent's status until it says Ready, the agent exits,
// or ctx ends.
func (a *Agent) WaitReady(ctx context.Context) error {
	exited := a.proc.Exited()
	var last error
	for {
		st, err := a.client.Status(ctx)
		switch {
		case err != nil:
			last = err
		case st.Ready:
			return nil
		default:
			last = fmt.Errorf("not ready: %s", st.Reason)
		}
		select {
		case <-exited:
			return fmt.Errorf("agent exited (%v) while waiting for ready: %w", a.proc.ExitErr(), last)
		case <-ctx.Done():
			return fmt.Errorf("wait for agent ready: %w", errors.Join(ctx.Err(), last))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM and waits for the agent to exit. Its pins stay, as they
// do when a DaemonSet pod restarts.
func (a *Agent) Stop() error { return a.proc.Stop() }

// Socket is the agent's API socket.
func (a *Agent) Socket() string { return a.node.AgentSocket() }

// BPFRoot is the bpffs directory holding the agent's pins.
func (a *Agent) BPFRoot() string { return a.bpfRoot }

// StateDir is the directory the agent rebuilds its state from on restart.
func (a *Agent) StateDir() string { return a.stateDir }

// Client talks to the agent's API.
func (a *Agent) Client() *agentapi.Client { return a.client }

// Process is the agent's process, for its PID and log.
func (a *Agent) Process() *Process { return a.proc }

var (
	hostBPFFSOnce sync.Once
	hostBPFFSErr  error
)

// hostBPFFS mounts bpffs on /sys/fs/bpf unless it is one already, as on
// every Kubernetes node (systemd mounts it at boot; the agent's DaemonSet
// mounts it from the host). A machine booted without it would otherwise
// pin under a private mount that the nodes' mount namespaces (mountview.go,
// copies taken when a node starts, from a private root mount) never see:
// the Flannel chain's palisade then finds no programs to attach. It stays
// mounted, as it would on a node: other test processes may pin under it.
func hostBPFFS() error {
	hostBPFFSOnce.Do(func() {
		if isBPFFS(bpffsRoot) {
			return
		}
		if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil && !isBPFFS(bpffsRoot) {
			hostBPFFSErr = fmt.Errorf("mount bpffs on %s: %w", bpffsRoot, err)
		}
	})
	return hostBPFFSErr
}

// bpffs returns a bpffs mount to pin under: the host's /sys/fs/bpf (mounted
// if need be), else a private bpffs mounted for this test on a directory of
// its own, which cleanup unmounts and removes (after the agent's own
// cleanup ran); node mount views do not see the latter.
func bpffs(tb TB) string {
	tb.Helper()
	err := hostBPFFS()
	if err == nil {
		return bpffsRoot
	}
	tb.Logf("%v: pinning under a private bpffs, which pods on Flannel nodes cannot see", err)
	dir, err := os.MkdirTemp("", "palisade-bpffs-")
	if err != nil {
		tb.Fatalf("create bpffs mount point: %v", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		_ = os.Remove(dir)
		tb.Fatalf("mount bpffs on %s (%s is not one): %v", dir, bpffsRoot, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			tb.Errorf("unmount bpffs %s: %v", dir, err)
			return
		}
		if err := os.Remove(dir); err != nil {
			tb.Errorf("remove bpffs mount point: %v", err)
		}
	})
	return dir
}

func isBPFFS(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// tmpfsDir makes a directory on /dev/shm, removed at cleanup: the agent's
// state lives on a tmpfs on a real node (/run), so a test that writes it on
// disk would time disk flushes no node makes.
func tmpfsDir(tb TB, prefix string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("/dev/shm", prefix)
	if err != nil {
		tb.Fatalf("make a directory on tmpfs: %v", err)
	}
	record(tb, "path", dir)
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove %s: %v", dir, err)
		}
	})
	return dir
}
