package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/install"
)

// The installer is a subcommand of the agent rather than a binary of its
// own: the image then carries one Go binary with everything linked once,
// and the installer's version always matches the agent's.

// subcommands run instead of the agent when named as the first argument.
var subcommands = map[string]func(args []string) int{
	"install-cni": runInstall,
	"uninstall":   runUninstall,
}

const agentUsage = `palisade-agent is Palisade's node agent: it loads the eBPF datapath and keeps
every local pod's policy maps equal to the cluster's NetworkPolicies.

Usage:
  palisade-agent [flags]                 run the agent (as the DaemonSet does)
  palisade-agent install-cni [flags]     put the palisade plugin into the node's CNI chain
  palisade-agent uninstall [flags]       take it out again, and remove the agent's pins and state
  palisade-agent --version               print the version

Run palisade-agent SUBCOMMAND --help for a subcommand's flags.

Flags:
`

// command handles everything but running the agent: subcommands, --help
// and --version, and flags that do not parse. done says it did; the agent
// runs with cfg otherwise.
func command(args []string, stdout, stderr io.Writer) (cfg Config, code int, done bool) {
	if len(args) > 0 {
		if sub, ok := subcommands[args[0]]; ok {
			return cfg, sub(args[1:]), true
		}
		switch args[0] {
		case "--version", "-version", "version":
			fmt.Fprintf(stdout, "palisade-agent %s (%s)\n", version, runtime.Version())
			return cfg, 0, true
		case "help":
			args = []string{"--help"}
		}
	}
	cfg, err := parseFlags(args)
	var he *helpError
	switch {
	case errors.As(err, &he):
		fmt.Fprint(stdout, agentUsage+he.flags)
		return cfg, 0, true
	case err != nil:
		fmt.Fprintf(stderr, "palisade-agent: %v\n", err)
		return cfg, 2, true
	}
	return cfg, 0, false
}

// defaultPluginSource is the plugin binary next to the agent's own, as the
// image lays them out.
func defaultPluginSource() string {
	self, err := os.Executable()
	if err != nil {
		return "/usr/local/bin/palisade"
	}
	return filepath.Join(filepath.Dir(self), install.PluginType)
}

func subcommandLogger() *slog.Logger { return slog.New(slog.NewTextHandler(os.Stderr, nil)) }

func runInstall(args []string) int {
	var cfg install.Config
	fs := flag.NewFlagSet("palisade-agent install-cni", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.PluginSource, "plugin-src", defaultPluginSource(), "the palisade plugin binary to install")
	fs.StringVar(&cfg.BinDir, "cni-bin-dir", "/opt/cni/bin", "CNI plugin directory")
	fs.StringVar(&cfg.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "CNI configuration directory")
	accept := fs.String("accept-main-plugin", "", "comma-separated main plugin types to accept as veth-based besides flannel, bridge, ptp and weave-net")
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the main CNI to write its configuration")
	watch := fs.Duration("watch", 0, "after installing, keep palisade chained: again on every change in the conf dir, and every this often (0: exit)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stdout, "Usage: palisade-agent install-cni [flags]\n\nFlags:\n%s", usage(fs))
			return 0
		}
		fmt.Fprintf(os.Stderr, "palisade-agent install-cni: %v\nflags:\n%s", err, usage(fs))
		return 2
	}
	if *accept != "" {
		cfg.Options.AcceptMainPlugins = strings.Split(*accept, ",")
	}
	log := subcommandLogger()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	waitCtx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	res, err := install.WaitInstall(waitCtx, log, cfg, time.Second)
	if err != nil {
		log.Error("Palisade not installed", "error", err)
		return 1
	}
	log.Info("Palisade installed", "conflist", res.Conflist, "chained", res.Chained, "pluginUpdated", res.PluginUpdated)
	if *watch > 0 {
		install.Watch(ctx, log, cfg, *watch)
	}
	return 0
}

func runUninstall(args []string) int {
	// Longer than a pod's default grace period (30 s): the agent's pod may
	// still be stopping when the uninstall DaemonSet's pod starts.
	cfg := install.UninstallConfig{LockWait: 2 * time.Minute}
	fs := flag.NewFlagSet("palisade-agent uninstall", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.BinDir, "cni-bin-dir", "/opt/cni/bin", "CNI plugin directory")
	fs.StringVar(&cfg.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "CNI configuration directory")
	fs.StringVar(&cfg.BPFRoot, "bpf-root", agentapi.DefaultBPFRoot, "the agent's bpffs directory")
	fs.StringVar(&cfg.StateDir, "state-dir", agentapi.DefaultStateDir, "the agent's state directory")
	stay := fs.Bool("stay", false, "after a successful uninstall, wait for SIGTERM instead of exiting (for a DaemonSet)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stdout, "Usage: palisade-agent uninstall [flags]\n\nFlags:\n%s", usage(fs))
			return 0
		}
		fmt.Fprintf(os.Stderr, "palisade-agent uninstall: %v\nflags:\n%s", err, usage(fs))
		return 2
	}
	log := subcommandLogger()
	if err := install.Uninstall(log, cfg); err != nil {
		log.Error("Uninstall incomplete; run it again", "error", err)
		return 1
	}
	log.Info("Palisade removed from this node")
	if *stay {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		<-ctx.Done()
	}
	return 0
}
