package testbed

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// modulePath is the product module whose binaries the testbed builds.
const modulePath = "github.com/palisade-cni/palisade"

// cniPlugins are the upstream plugins the testbed's conflist chains; go.mod
// lists them as tools, so they build from the module root at its versions.
var cniPlugins = []string{
	"github.com/containernetworking/plugins/plugins/main/bridge",
	"github.com/containernetworking/plugins/plugins/ipam/host-local",
	"github.com/containernetworking/plugins/plugins/meta/portmap",
	"github.com/containernetworking/plugins/plugins/main/loopback",
	"github.com/containernetworking/plugins/plugins/sample",
}

// Bins is the directory of the binaries the testbed runs. Dir doubles as the
// CNI_PATH: it holds the upstream plugins and, once built, palisade.
type Bins struct {
	Dir  string
	root string

	plugin, agent lazyBuild
}

type lazyBuild struct {
	once sync.Once
	path string
	err  error
}

var (
	binsOnce sync.Once
	bins     *Bins
	binsErr  error
)

// Binaries builds the upstream CNI plugins once per test process into
// $XDG_CACHE_HOME/palisade/bin-test-<checkout> (go build's cache makes
// repeats cheap).
// Palisade's own binaries are built on first use by Plugin and Agent, so a
// test that needs neither does not depend on them compiling.
func Binaries(tb TB) *Bins {
	tb.Helper()
	binsOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			binsErr = err
			return
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			binsErr = fmt.Errorf("find cache dir: %w", err)
			return
		}
		// One directory per checkout: two work trees testing at once
		// must not run each other's palisade and palisade-agent.
		sum := sha256.Sum256([]byte(root))
		dir := filepath.Join(cache, "palisade", "bin-test-"+hex.EncodeToString(sum[:6]))
		b := &Bins{Dir: dir, root: root}
		binsErr = b.build(cniPlugins...)
		bins = b
	})
	if binsErr != nil {
		tb.Fatal(binsErr)
	}
	return bins
}

// Plugin builds ./plugin as Dir/palisade, once, and returns its path.
func (b *Bins) Plugin(tb TB) string {
	tb.Helper()
	return b.lazy(tb, &b.plugin, "palisade", "./plugin")
}

// Agent builds ./daemon/cmd/palisade-agent, once, and returns its path.
func (b *Bins) Agent(tb TB) string {
	tb.Helper()
	return b.lazy(tb, &b.agent, "palisade-agent", "./daemon/cmd/palisade-agent")
}

func (b *Bins) lazy(tb TB, l *lazyBuild, name, pkg string) string {
	tb.Helper()
	l.once.Do(func() {
		l.err = b.buildAs(name, pkg)
		l.path = filepath.Join(b.Dir, name)
	})
	if l.err != nil {
		tb.Fatal(l.err)
	}
	return l.path
}

// build builds packages named by their last path element into Dir.
func (b *Bins) build(pkgs ...string) error {
	for _, pkg := range pkgs {
		if err := b.buildAs(filepath.Base(pkg), pkg); err != nil {
			return err
		}
	}
	return nil
}

// buildAs builds pkg to a temporary name and renames it into place: test
// binaries of other packages may be executing the old file right now (a
// rewrite in place would fail with ETXTBSY or corrupt it), and a rename
// leaves their inode alone. It builds as releases are built (the Makefile):
// static, without cgo, without symbol table and DWARF (-s -w). A cgo build
// links libc dynamically and takes ~2 ms longer to exec here, which the CNI
// ADD benchmark would charge to every plugin in the chain; every binary,
// upstream's no-op plugin included, gets the same flags, so the benchmark
// compares like with like.
func (b *Bins) buildAs(name, pkg string) error {
	if err := os.MkdirAll(b.Dir, 0o755); err != nil {
		return fmt.Errorf("create bin dir: %w", err)
	}
	dst := filepath.Join(b.Dir, name)
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Dir = b.root
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("build %s: %w\n%s", pkg, err, out)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("install %s: %w", name, err)
	}
	return nil
}

// KubeBinDir runs scripts/kube-build and returns the directory holding
// kube-apiserver, kube-controller-manager, kube-proxy and kubectl. The
// script builds them only when tests/kube/go.mod changed, so this is cheap.
func KubeBinDir(tb TB) string {
	tb.Helper()
	return cachedBuild(tb, "kube-build")
}

// FlannelBinDir runs scripts/flannel-build and returns the directory holding
// the Flannel CNI plugin (flannel) and flanneld, built from tests/flannel.
func FlannelBinDir(tb TB) string {
	tb.Helper()
	return cachedBuild(tb, "flannel-build")
}

// builtDirs memoizes cachedBuild per script: the pod runner asks for
// Flannel's directory on every sandbox.
var builtDirs sync.Map

// cachedBuild runs a build script that prints its cache directory, once per
// test process when it succeeds.
func cachedBuild(tb TB, script string) string {
	tb.Helper()
	if dir, ok := builtDirs.Load(script); ok {
		return dir.(string)
	}
	root, err := moduleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "scripts", script))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("scripts/%s: %v", script, err)
	}
	dir := strings.TrimSpace(string(out))
	builtDirs.Store(script, dir)
	return dir
}

// ModuleRoot is the directory of Palisade's go.mod.
func ModuleRoot(tb TB) string {
	tb.Helper()
	root, err := moduleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	return root
}

// moduleRoot walks up from the working directory (a test runs in its
// package's directory) to the go.mod declaring the product module; nested
// modules under tests/ have go.mod files of their own and are skipped.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if declaresModule(filepath.Join(dir, "go.mod"), modulePath) {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("find module root: no go.mod for %s above %s", modulePath, wd)
		}
	}
}

func declaresModule(gomod, path string) bool {
	f, err := os.Open(gomod)
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == path
		}
	}
	return false
}
