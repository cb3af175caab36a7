package install

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// node is a fake node's CNI directories with a plugin binary to install.
type node struct {
	cfg Config
}

func newNode(t *testing.T, confs map[string]string) node {
	t.Helper()
	root := t.TempDir()
	n := node{cfg: Config{
		PluginSource: filepath.Join(root, "image", "palisade"),
		BinDir:       filepath.Join(root, "opt/cni/bin"),
		ConfDir:      filepath.Join(root, "etc/cni/net.d"),
	}}
	for _, dir := range []string{filepath.Dir(n.cfg.PluginSource), n.cfg.BinDir, n.cfg.ConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.cfg.PluginSource, []byte("#!plugin v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range confs {
		if err := os.WriteFile(filepath.Join(n.cfg.ConfDir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// snapshot maps every file under the node's directories to its content.
func (n node) snapshot(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, dir := range []string{n.cfg.BinDir, n.cfg.ConfDir} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out[filepath.Join(filepath.Base(dir), e.Name())] = string(data)
		}
	}
	return out
}

func TestFindConflist(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		want  string
	}{
		{name: "the lexically first CNI file wins, as in libcni", files: []string{"20-b.conflist", "10-flannel.conflist", "99-z.conf"}, want: "10-flannel.conflist"},
		{name: ".conf sorts before .conflist of the same stem", files: []string{"10-a.conflist", "10-a.conf"}, want: "10-a.conf"},
		{name: "backups, temporary and other files are never picked", files: []string{"00-x.conflist" + BackupSuffix, ".00-y.conflist.1" + tmpSuffix, "00-readme.txt", "50-json.json"}, want: "50-json.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			confs := map[string]string{}
			for _, f := range tc.files {
				confs[f] = "{}"
			}
			n := newNode(t, confs)
			got, err := FindConflist(n.cfg.ConfDir)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(got) != tc.want {
				t.Errorf("FindConflist = %s, want %s", filepath.Base(got), tc.want)
			}
		})
	}
}

// TestInstall chains the conflist each Flannel distribution writes: the
// kube-flannel manifests' file and the one k3s writes into
// /var/lib/rancher/k3s/agent/etc/cni/net.d (its template, byte for byte).
func TestInstall(t *testing.T) {
	for _, dir := range []string{".", "k3s"} {
		t.Run(dir, func(t *testing.T) { testInstall(t, dir) })
	}
}

func testInstall(t *testing.T, dir string) {
	flannel := string(readTestdata(t, filepath.Join(dir, "10-flannel.conflist")))
	n := newNode(t, map[string]string{"10-flannel.conflist": flannel, "99-loopback.conf": `{"type": "loopback"}`})
	res, err := Install(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.PluginUpdated || !res.Chained || filepath.Base(res.Conflist) != "10-flannel.conflist" {
		t.Errorf("result %+v, want plugin updated and 10-flannel.conflist chained", res)
	}
	want := map[string]string{
		"bin/palisade":                             "#!plugin v1",
		"net.d/10-flannel.conflist":                string(readTestdata(t, filepath.Join(dir, "10-flannel.conflist.want"))),
		"net.d/10-flannel.conflist" + BackupSuffix: flannel,
		"net.d/99-loopback.conf":                   `{"type": "loopback"}`,
	}
	if diff := cmp.Diff(want, n.snapshot(t)); diff != "" {
		t.Fatalf("after install (-want +got):\n%s", diff)
	}
	st, err := os.Stat(filepath.Join(n.cfg.BinDir, "palisade"))
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("plugin mode %v (%v), want 0755", st.Mode(), err)
	}

	// Idempotent: a second run rewrites nothing (same inode).
	before, _ := os.Stat(filepath.Join(n.cfg.ConfDir, "10-flannel.conflist"))
	res, err = Install(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.PluginUpdated || res.Chained {
		t.Errorf("second install %+v, want no change", res)
	}
	after, _ := os.Stat(filepath.Join(n.cfg.ConfDir, "10-flannel.conflist"))
	if !os.SameFile(before, after) {
		t.Error("second install replaced the conflist")
	}
	if diff := cmp.Diff(want, n.snapshot(t)); diff != "" {
		t.Errorf("after second install (-want +got):\n%s", diff)
	}

	// An upgrade replaces the binary, and only it.
	if err := os.WriteFile(n.cfg.PluginSource, []byte("#!plugin v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if res, err = Install(n.cfg); err != nil || !res.PluginUpdated || res.Chained {
		t.Fatalf("upgrade: %+v, %v; want only the plugin updated", res, err)
	}
	want["bin/palisade"] = "#!plugin v2"
	if diff := cmp.Diff(want, n.snapshot(t)); diff != "" {
		t.Errorf("after upgrade (-want +got):\n%s", diff)
	}

	// Uninstall's conflist and binary part restores the original files.
	if err := unchainAll(slog.New(slog.NewTextHandler(io.Discard, nil)), n.cfg.ConfDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(n.cfg.BinDir, "palisade")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"net.d/10-flannel.conflist": flannel, "net.d/99-loopback.conf": `{"type": "loopback"}`}, n.snapshot(t)); diff != "" {
		t.Errorf("after unchain (-want +got):\n%s", diff)
	}
}

func TestInstallRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		confs   map[string]string
		wantErr error
	}{
		{name: "an empty configuration directory is reported as such", confs: nil, wantErr: ErrNoConfig},
		{name: "a plain .conf read first is refused", confs: map[string]string{"10-bridge.conf": string(readTestdata(t, "10-bridge.conf")), "20-flannel.conflist": "{}"}, wantErr: ErrNotConflist},
		{name: "a macvlan conflist is refused", confs: map[string]string{"10-macvlan.conflist": string(readTestdata(t, "10-macvlan.conflist"))}, wantErr: ErrUnsupportedMainPlugin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, tc.confs)
			before := n.snapshot(t)
			_, err := Install(n.cfg)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Install error %v, want %v", err, tc.wantErr)
			}
			// A refusal leaves the configuration alone (the binary may be
			// there: it is harmless until a conflist names it).
			after := n.snapshot(t)
			delete(after, "bin/palisade")
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("refused install changed files (-before +after):\n%s", diff)
			}
		})
	}
}

func TestWaitInstallWaitsForTheMainCNI(t *testing.T) {
	n := newNode(t, nil)
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = os.WriteFile(filepath.Join(n.cfg.ConfDir, "10-flannel.conflist"), readTestdata(t, "10-flannel.conflist"), 0o644)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := WaitInstall(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), n.cfg, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Chained {
		t.Errorf("result %+v, want chained", res)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = WaitInstall(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), newNode(t, nil).cfg, 50*time.Millisecond)
	if !errors.Is(err, ErrNoConfig) || !strings.Contains(err.Error(), "gave up") {
		t.Errorf("WaitInstall on an empty directory: %v, want ErrNoConfig after giving up", err)
	}
}

// TestWatchRechainsOnRewrite: the main CNI rewrites its conflist without
// palisade (as Flannel's init container does on every restart); Watch
// chains it again at once, not at its next interval, which is an hour here.
func TestWatchRechainsOnRewrite(t *testing.T) {
	flannel, err := os.ReadFile(filepath.Join("testdata", "10-flannel.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, map[string]string{"10-flannel.conflist": string(flannel)})
	conf := filepath.Join(n.cfg.ConfDir, "10-flannel.conflist")
	if _, err := Install(n.cfg); err != nil {
		t.Fatal(err)
	}
	chained, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Watch(ctx, slog.New(slog.DiscardHandler), n.cfg, time.Hour)
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })

	// Rewrite it the way installers do: a new file renamed over the old,
	// and, a second time, written in place.
	rewrites := map[string]func() error{
		"renamed over": func() error {
			tmp := conf + ".tmp"
			if err := os.WriteFile(tmp, flannel, 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, conf)
		},
		"written in place": func() error { return os.WriteFile(conf, flannel, 0o644) },
	}
	for name, rewrite := range rewrites {
		if err := rewrite(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, err := os.ReadFile(conf)
			if err == nil && string(got) == string(chained) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("conflist %s without palisade: not chained again within 10 s (an hour's interval); now:\n%s", name, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
