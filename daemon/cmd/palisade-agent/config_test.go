package main

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/palisade-cni/palisade/bpf"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(Config) bool
	}{
		{"defaults are the documented ones", []string{"--node-name=n1"}, "", func(c Config) bool {
			return c.Socket == "/run/palisade/agent.sock" && c.BPFRoot == "/sys/fs/bpf/palisade" && c.StateDir == "/run/palisade/state" &&
				c.AttachMode == bpf.AttachAuto && c.Rejudge && c.LogLevel == slog.LevelInfo
		}},
		{"the node name is required", nil, "--node-name", nil},
		{"an unknown attach mode names the choices", []string{"--node-name=n", "--attach-mode=xdp"}, "use auto, tcx or tc", nil},
		{"an unknown log level is refused", []string{"--node-name=n", "--log-level=loud"}, "--log-level", nil},
		{"an unknown flag lists the flags", []string{"--node-name=n", "--frobnicate"}, "-bpf-root", nil},
		{"conntrack is sized from 1 % of memory unless told", []string{"--node-name=n"}, "", func(c Config) bool {
			return c.ConntrackMemoryPercent == 1 && c.ConntrackTCP == 0 && c.ConntrackOther == 0
		}},
		{"conntrack sizes can be set", []string{"--node-name=n", "--conntrack-tcp-max=1000", "--conntrack-other-max=64"}, "", func(c Config) bool {
			return c.ConntrackTCP == 1000 && c.ConntrackOther == 64
		}},
		{"a memory share of 0 is refused", []string{"--node-name=n", "--conntrack-memory-percent=0"}, "--conntrack-memory-percent", nil},
		{"metrics are served only on the health address unless told", []string{"--node-name=n"}, "", func(c Config) bool { return c.MetricsAddr == "" }},
		{"metrics on every address", []string{"--node-name=n", "--metrics-addr=all"}, "", func(c Config) bool { return c.MetricsAddr == ":9880" }},
		{"metrics on the node's IPv4 address and a port", []string{"--node-name=n", "--metrics-addr=192.0.2.7", "--metrics-port=9100"}, "", func(c Config) bool {
			return c.MetricsAddr == "192.0.2.7:9100"
		}},
		{"metrics on an IPv6 node address", []string{"--node-name=n", "--metrics-addr=2001:db8::7"}, "", func(c Config) bool { return c.MetricsAddr == "[2001:db8::7]:9880" }},
		{"an unexpanded $(HOST_IP) is refused", []string{"--node-name=n", "--metrics-addr=$(HOST_IP)"}, "--metrics-addr", nil},
		{"port 0 is refused", []string{"--node-name=n", "--metrics-addr=all", "--metrics-port=0"}, "--metrics-port", nil},
		{"rejudge can be switched off", []string{"--node-name=n", "--rejudge=false"}, "", func(c Config) bool { return !c.Rejudge }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", "")
			cfg, err := parseFlags(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(cfg) {
				t.Errorf("config %+v", cfg)
			}
		})
	}
}

func TestConntrackSizes(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		name              string
		mem               uint64
		percent           float64
		tcpFlag, otherFlg uint32
		tcp, other        uint32
	}{
		{"a large node gets the default sizes", 64 * gib, 1, 0, 0, bpf.DefaultConntrackTCP, bpf.DefaultConntrackOther},
		{"from 12 GiB on, 1 % buys the default sizes", 12 * gib, 1, 0, 0, bpf.DefaultConntrackTCP, bpf.DefaultConntrackOther},
		{"a 4 GiB node gets 1 % of its memory, two thirds for TCP", 4 * gib, 1, 0, 0, 188375, 94187},
		{"a tiny node gets the floor", 256 << 20, 1, 0, 0, minConntrackTCP, minConntrackOther},
		{"a larger share grows the tables up to the default sizes", 4 * gib, 10, 0, 0, bpf.DefaultConntrackTCP, bpf.DefaultConntrackOther},
		{"flags win, each on its own", 64 * gib, 1, 0, 1024, bpf.DefaultConntrackTCP, 1024},
		{"flags win over the bounds", 256 << 20, 1, 1 << 21, 100, 1 << 21, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tcp, other := conntrackSizes(tt.mem, tt.percent, tt.tcpFlag, tt.otherFlg)
			if tcp != tt.tcp || other != tt.other {
				t.Errorf("sizes %d/%d, want %d/%d", tcp, other, tt.tcp, tt.other)
			}
			if tt.tcpFlag == 0 && tt.otherFlg == 0 && tt.tcp < bpf.DefaultConntrackTCP && tt.tcp > minConntrackTCP {
				if bytes := uint64(tcp+other) * bpf.ConntrackEntryBytes; bytes > uint64(float64(tt.mem)*tt.percent/100) {
					t.Errorf("the tables cost %d bytes, more than %v %% of %d", bytes, tt.percent, tt.mem)
				}
			}
		})
	}
}

func TestCommandHelpAndVersion(t *testing.T) {
	for _, tt := range []struct {
		args      []string
		code      int
		done      bool
		out, errs []string
	}{
		{args: []string{"--help"}, done: true, out: []string{"install-cni", "uninstall", "--version", "-node-name", "-status-lease-duration"}},
		{args: []string{"-h"}, done: true, out: []string{"install-cni"}},
		{args: []string{"help"}, done: true, out: []string{"Usage:"}},
		{args: []string{"--version"}, done: true, out: []string{"palisade-agent dev"}},
		{args: []string{"--node-name=n", "--frobnicate"}, code: 2, done: true, errs: []string{"flag provided but not defined", "-bpf-root"}},
		{args: []string{"--node-name=n"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Setenv("NODE_NAME", "")
			var out, errb strings.Builder
			_, code, done := command(tt.args, &out, &errb)
			if code != tt.code || done != tt.done {
				t.Errorf("code %d done %v, want %d %v (stderr %q)", code, done, tt.code, tt.done, errb.String())
			}
			for _, s := range tt.out {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tt.errs {
				if !strings.Contains(errb.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, errb.String())
				}
			}
		})
	}
}

func TestNamespaceFromEnvironment(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "kube-system")
	cfg, err := parseFlags([]string{"--node-name=n"})
	if err != nil || cfg.Namespace != "kube-system" {
		t.Errorf("namespace %q (%v), want kube-system from $POD_NAMESPACE", cfg.Namespace, err)
	}
	t.Setenv("POD_NAMESPACE", "")
	if cfg, _ := parseFlags([]string{"--node-name=n"}); cfg.Namespace != "palisade-system" {
		t.Errorf("namespace %q, want palisade-system without $POD_NAMESPACE", cfg.Namespace)
	}
	if _, err := parseFlags([]string{"--node-name=n", "--status-lease-duration=1s"}); err == nil {
		t.Error("a 1s lease duration was accepted")
	}
}
