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
