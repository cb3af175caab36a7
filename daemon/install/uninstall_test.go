package install

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/daemon/statefile"
)

// TestUninstallRefusesWhileTheAgentRuns: with the agent's lock held,
// uninstall changes nothing (chain, plugin, state) and says why; it never
// takes the node apart under a running agent.
func TestUninstallRefusesWhileTheAgentRuns(t *testing.T) {
	n := newNode(t, map[string]string{"10-flannel.conflist": string(readTestdata(t, "10-flannel.conflist"))})
	if _, err := Install(n.cfg); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(t.TempDir(), "state")
	held, err := statefile.Lock(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	marker := filepath.Join(stateDir, "endpoints.json")
	if err := os.WriteFile(marker, []byte(`{}`), 0o600); err != nil {
		t.Fatal(err)
	}
	before := n.snapshot(t)

	err = Uninstall(slog.New(slog.DiscardHandler), UninstallConfig{
		BinDir:   n.cfg.BinDir,
		ConfDir:  n.cfg.ConfDir,
		BPFRoot:  filepath.Join(t.TempDir(), "bpf"),
		StateDir: stateDir,
	})
	if !errors.Is(err, statefile.ErrLocked) {
		t.Fatalf("uninstall under a running agent: %v, want %v", err, statefile.ErrLocked)
	}
	if diff := cmp.Diff(before, n.snapshot(t)); diff != "" {
		t.Errorf("uninstall refused but changed the node (-before +after):\n%s", diff)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("uninstall refused but the agent's state is gone: %v", err)
	}
}
