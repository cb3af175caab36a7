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
