package install

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// confExtensions are the files the kubelet's runtime (containerd, CRI-O,
// through libcni) considers, in the order libcni.ConfFiles lists them.
var confExtensions = []string{".conf", ".conflist", ".json"}

// BackupSuffix names the copy of a conflist taken before each edit. Its
// extension is none of confExtensions, so no runtime ever reads it.
const BackupSuffix = ".palisade-backup"

// tmpSuffix names files being written; not a CNI extension either.
const tmpSuffix = ".palisade-tmp"

// Config says where things are on the node.
type Config struct {
	// PluginSource is the palisade binary to install.
	PluginSource string
	// BinDir is the CNI binary directory (/opt/cni/bin).
	BinDir string
	// ConfDir is the CNI configuration directory (/etc/cni/net.d).
	ConfDir string
	// Options tune the conflist edit.
	Options Options
}

// Result says what Install did.
type Result struct {
	Conflist      string
	PluginUpdated bool
	Chained       bool
}

// Install copies the plugin into BinDir and chains it into the conflist
// the kubelet reads. It is idempotent: a second run changes nothing. The
// binary goes first, so that the conflist never names a plugin that is not
// there.
func Install(cfg Config) (Result, error) {
	var res Result
	updated, err := installBinary(cfg.PluginSource, filepath.Join(cfg.BinDir, PluginType))
	if err != nil {
		return res, err
	}
	res.PluginUpdated = updated
	file, err := FindConflist(cfg.ConfDir)
	if err != nil {
		return res, err
	}
	res.Conflist = file
	data, err := os.ReadFile(file)
	if err != nil {
		return res, fmt.Errorf("read %s: %w", file, err)
	}
	out, changed, err := Chain(file, data, cfg.Options)
	if err != nil {
		return res, err
	}
	if !changed {
		return res, nil
	}
	st, err := os.Stat(file)
	if err != nil {
		return res, fmt.Errorf("stat %s: %w", file, err)
	}
	if err := writeAtomic(file+BackupSuffix, data, st.Mode().Perm()); err != nil {
		return res, fmt.Errorf("back up %s: %w", file, err)
	}
	if err := writeAtomic(file, out, st.Mode().Perm()); err != nil {
		return res, fmt.Errorf("write %s: %w", file, err)
	}
	res.Chained = true
	return res, nil
}

// ErrNoConfig means the configuration directory holds no CNI configuration
// yet (the main CNI has not written it).
var ErrNoConfig = errors.New("no CNI configuration")

// FindConflist returns the file the kubelet's runtime uses: the first, in
// lexical order, of the files in dir ending in .conf, .conflist or .json.
func FindConflist(dir string) (string, error) {
	files, err := listConf(dir)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", dir, err)
	}
	if len(files) == 0 {
		return "", fmt.Errorf("%w in %s: install the main CNI (e.g. Flannel) first", ErrNoConfig, dir)
	}
	return files[0], nil
}

// WaitInstall runs Install until it succeeds, retrying only while the main
// CNI has not written its configuration yet, or until ctx ends.
func WaitInstall(ctx context.Context, log *slog.Logger, cfg Config, every time.Duration) (Result, error) {
	for {
		res, err := Install(cfg)
		if !errors.Is(err, ErrNoConfig) {
			return res, err
		}
		log.Info("Waiting for the main CNI's configuration", "dir", cfg.ConfDir)
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(every):
		}
	}
}

// installBinary copies src to dst by writing a temporary file next to dst
// and renaming it over dst: a runtime executing dst at that moment runs
// either the old or the new binary, never a half-written one. It reports
// whether dst changed.
func installBinary(src, dst string) (bool, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("read plugin %s: %w", src, err)
	}
	if old, err := os.ReadFile(dst); err == nil && string(old) == string(data) {
		return false, nil
	}
	if err := writeAtomic(dst, data, 0o755); err != nil {
		return false, fmt.Errorf("install plugin %s: %w", dst, err)
	}
	return true, nil
}

// writeAtomic writes data to path through a synced temporary file in the
// same directory and a rename.
func writeAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".*"+tmpSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func listConf(dir string) ([]string, error) { return libcni.ConfFiles(dir, confExtensions) }

// Watch keeps palisade chained until ctx ends. A main CNI may rewrite its
// conflist at any time (Flannel's install-cni copies it afresh whenever its
// pod restarts), dropping Palisade from the chain, and every pod the runtime
// starts meanwhile runs unprotected: so Watch re-chains as soon as the
// configuration directory changes (inotify), and also every interval, in
// case an event was missed or the binary was removed. Errors are logged and
// retried, never fatal: the pods already running stay protected meanwhile.
func Watch(ctx context.Context, log *slog.Logger, cfg Config, every time.Duration) {
	changed, err := watchDir(ctx, cfg.ConfDir)
	if err != nil {
		log.Warn("Cannot watch the CNI configuration directory; checking every interval only", "dir", cfg.ConfDir, "interval", every, "error", err)
	}
	// One look right after the watch is in place: a rewrite since the
	// caller's install, before the watch, sends no event.
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			case <-time.After(every):
			}
		}
		res, err := Install(cfg)
		switch {
		case err != nil:
			log.Error("Palisade not in the CNI chain; new pods are not protected until this is fixed", "error", err)
		case res.Chained:
			log.Warn("Conflist had lost the palisade entry (rewritten by another installer); chained again", "file", res.Conflist)
		case res.PluginUpdated:
			log.Info("Plugin binary restored", "dir", cfg.BinDir)
		}
	}
}
