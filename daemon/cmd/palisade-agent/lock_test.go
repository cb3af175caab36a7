package main

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/palisade-cni/palisade/daemon/statefile"
)

// TestAgentRefusesALockedStateDir: a second agent stops before it loads,
// pins or prunes anything, with an error naming the lock.
func TestAgentRefusesALockedStateDir(t *testing.T) {
	dir := t.TempDir()
	held, err := statefile.Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// A bpf root that Load could not use: reaching it would fail otherwise.
	cfg := Config{StateDir: dir, BPFRoot: filepath.Join(t.TempDir(), "not-bpffs"), NodeName: "node-1"}
	err = agent(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if !errors.Is(err, statefile.ErrLocked) {
		t.Fatalf("second agent: %v, want %v", err, statefile.ErrLocked)
	}
}
