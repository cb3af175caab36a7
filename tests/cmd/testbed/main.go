// Command testbed keeps a Palisade testbed (see tests/testbed) running
// outside `go test`, for `scripts/testbed` and for poking at with kubectl:
//
//	testbed up --state-dir=DIR [--nodes=3] [--proxy-mode=iptables|nftables] [--without-palisade]
//	testbed down --state-dir=DIR
//
// `up` brings the cluster up, writes DIR/kubeconfig, DIR/cp-netns and
// DIR/ready, and keeps it until SIGTERM or SIGINT, when it tears everything
// down. Every namespace, process and bpffs directory it creates is listed in
// DIR/resources as it is created, so that `down` can remove what is left if
// `up` itself died without cleaning up.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// downTimeout bounds how long `down` waits for `up` to clean up after
// SIGTERM: every process gets testbed's stop grace, sequentially.
const downTimeout = 90 * time.Second

func main() { os.Exit(run()) }

func run() int {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testbed up|down --state-dir=DIR [flags]")
		return 2
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ContinueOnError)
	stateDir := fs.String("state-dir", "/run/palisade-testbed", "where the testbed keeps its state")
	nodes := fs.Int("nodes", 3, "number of nodes")
	mode := fs.String("proxy-mode", "iptables", "kube-proxy mode: iptables or nftables")
	without := fs.Bool("without-palisade", false, "run the pod network alone: no palisade, no agents")
	network := fs.String("network", string(testbed.FlannelVXLAN), "pod network: flannel-vxlan, flannel-host-gw or bridge")
	if err := fs.Parse(os.Args[2:]); err != nil {
		return 2
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(*stateDir, testbed.ClusterOptions{Nodes: *nodes, ProxyMode: testbed.ProxyMode(*mode), WithoutPalisade: *without, Network: testbed.PodNetwork(*network)})
	case "down":
		err = down(*stateDir)
	default:
		err = fmt.Errorf("unknown command %q: want up or down", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testbed %s: %v\n", os.Args[1], err)
		return 1
	}
	return 0
}

func up(dir string, opts testbed.ClusterOptions) error {
	if !slices.Contains([]testbed.PodNetwork{testbed.FlannelVXLAN, testbed.FlannelHostGW, testbed.BridgeChain}, opts.Network) {
		return fmt.Errorf("network %q: want flannel-vxlan, flannel-host-gw or bridge", opts.Network)
	}
	if opts.ProxyMode != testbed.ProxyIPTables && opts.ProxyMode != testbed.ProxyNFTables {
		return fmt.Errorf("proxy mode %q: want iptables or nftables", opts.ProxyMode)
	}
	if _, err := os.Stat(filepath.Join(dir, "pid")); err == nil {
		return fmt.Errorf("%s holds a testbed already: run `scripts/testbed down` first", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return fmt.Errorf("write pid: %w", err)
	}
	res, err := os.OpenFile(filepath.Join(dir, "resources"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("open resources: %w", err)
	}
	defer res.Close()
	var mu sync.Mutex
	h := testbed.NewHarness("testbed", dir, os.Stderr)
	h.OnRecord = func(kind, value string) {
		mu.Lock()
		defer mu.Unlock()
		// Written and synced one by one: this file is what is left to
		// clean up with if the process is killed.
		fmt.Fprintf(res, "%s %s\n", kind, value)
		_ = res.Sync()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	start := time.Now()
	err = h.Run(func(tb testbed.TB) {
		c := testbed.StartCluster(tb, opts)
		data, err := os.ReadFile(c.Kubeconfig())
		if err != nil {
			tb.Fatalf("read kubeconfig: %v", err)
		}
		for name, content := range map[string]string{
			"kubeconfig": string(data),
			"cp-netns":   c.NetNS.Name() + "\n",
			"ready":      fmt.Sprintf("up in %v\n", time.Since(start).Round(time.Millisecond)),
		} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
				tb.Fatalf("write %s: %v", name, err)
			}
		}
		tb.Logf("testbed up in %v; nodes %d, kube-proxy %s, palisade %v", time.Since(start).Round(time.Millisecond), opts.Nodes, opts.ProxyMode, !opts.WithoutPalisade)
		<-ctx.Done()
		tb.Logf("tearing down")
	})
	h.Close()
	for _, name := range []string{"ready", "kubeconfig", "cp-netns", "resources", "pid"} {
		_ = os.Remove(filepath.Join(dir, name))
	}
	_ = os.RemoveAll(filepath.Join(dir, "tmp"))
	return err
}

func down(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, "pid"))
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "testbed down: no testbed running")
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return fmt.Errorf("parse pid file: %w", err)
	}
	if isTestbed(pid) {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal testbed (pid %d): %w", pid, err)
		}
		deadline := time.Now().Add(downTimeout)
		for isTestbed(pid) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Whatever `up` did not remove (it died, or timed out): its own record.
	return sweep(dir)
}

// isTestbed reports whether pid is alive and is this program (not a reused
// PID of something else).
func isTestbed(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	self, err := os.Executable()
	return err == nil && filepath.Base(exe) == filepath.Base(self)
}

// sweep removes the resources `up` recorded and did not remove itself. A
// recorded PID is killed only if it still runs a testbed binary: its
// parent's death normally killed it already (Pdeathsig).
func sweep(dir string) error {
	f, err := os.Open(filepath.Join(dir, "resources"))
	if errors.Is(err, os.ErrNotExist) {
		return cleanState(dir)
	}
	if err != nil {
		return fmt.Errorf("open resources: %w", err)
	}
	defer f.Close()
	var errs []error
	s := bufio.NewScanner(f)
	for s.Scan() {
		kind, value, _ := strings.Cut(s.Text(), " ")
		switch kind {
		case "pid":
			pid, err := strconv.Atoi(value)
			if err != nil {
				continue
			}
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if err == nil && knownBinary(filepath.Base(exe)) {
				fmt.Fprintf(os.Stderr, "testbed down: killing leftover %s (pid %d)\n", filepath.Base(exe), pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		case "netns":
			if _, err := os.Stat(filepath.Join("/run/netns", value)); err == nil {
				fmt.Fprintf(os.Stderr, "testbed down: deleting leftover netns %s\n", value)
				if out, err := exec.Command("ip", "netns", "delete", value).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("delete netns %s: %w: %s", value, err, out))
				}
			}
		case "path":
			if _, err := os.Stat(value); err == nil {
				fmt.Fprintf(os.Stderr, "testbed down: removing leftover %s\n", value)
				errs = append(errs, os.RemoveAll(value))
			}
		}
	}
	errs = append(errs, s.Err(), cleanState(dir))
	return errors.Join(errs...)
}

func knownBinary(name string) bool {
	switch name {
	case "etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy", "palisade-agent":
		return true
	}
	return false
}

func cleanState(dir string) error {
	for _, name := range []string{"ready", "kubeconfig", "cp-netns", "resources", "pid"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return os.RemoveAll(filepath.Join(dir, "tmp"))
}
