// Package release tests what `make release` versions and ships.
package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestVersionFromGit runs scripts/version in a scratch repository through
// a project's life: no commit, commits before the first tag, a tag, commits
// past it, uncommitted changes.
func TestVersionFromGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	repo := t.TempDir()
	script, err := os.ReadFile(filepath.Join(testbed.ModuleRoot(t), "scripts", "version"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(repo, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "scripts", "version"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"}, args...)...)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	version := func() string {
		t.Helper()
		out, err := exec.Command(filepath.Join(repo, "scripts", "version")).Output()
		if err != nil {
			t.Fatalf("scripts/version: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	commit := func(msg string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(repo, "f"), []byte(msg), 0o644); err != nil {
			t.Fatal(err)
		}
		git("add", "-A")
		git("commit", "-q", "-m", msg)
	}

	git("init", "-q")
	if got := version(); got != "v0.0.0-dev" {
		t.Errorf("without commits: %q, want v0.0.0-dev", got)
	}
	commit("one")
	commit("two")
	if got := version(); !regexp.MustCompile(`^v0\.0\.0-2-g[0-9a-f]{7}$`).MatchString(got) {
		t.Errorf("two commits, no tag: %q, want v0.0.0-2-g<commit>", got)
	}
	git("tag", "-a", "v0.2.0", "-m", "v0.2.0")
	if got := version(); got != "v0.2.0" {
		t.Errorf("on tag v0.2.0: %q", got)
	}
	commit("three")
	if got := version(); !regexp.MustCompile(`^v0\.2\.0-1-g[0-9a-f]+$`).MatchString(got) {
		t.Errorf("one past v0.2.0: %q, want v0.2.0-1-g<commit>", got)
	}
	if err := os.WriteFile(filepath.Join(repo, "f"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := version(); !strings.HasSuffix(got, "-dirty") {
		t.Errorf("with a change: %q, want -dirty", got)
	}
}
