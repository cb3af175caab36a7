package install

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/statefile"
)

// UninstallConfig says where Palisade's pieces are on the node.
type UninstallConfig struct {
	BinDir   string
	ConfDir  string
	BPFRoot  string
	StateDir string
	// LockWait is how long to wait for a stopping agent to let go of the
	// state directory before giving up.
	LockWait time.Duration
}

// Uninstall takes Palisade off the node, in the order that never leaves a
// pod without a network: first the conflist entry (new pods no longer call
// the plugin), then the programs on every pod's veth and the pinned maps
// (running pods become unenforced, as before Palisade), then the agent's
// state, and the plugin binary last. Run it after the agent has stopped; it
// is idempotent.
//
// It takes the agent's lock first, and refuses while an agent holds it: a
// running agent would re-pin what this removes and re-attach programs to
// the veths it sees, leaving a half-enforced node that says it has no
// Palisade.
func Uninstall(log *slog.Logger, cfg UninstallConfig) error {
	lock, err := statefile.LockWait(cfg.StateDir, cfg.LockWait)
	if err != nil {
		return fmt.Errorf("uninstall needs the agent stopped (delete its DaemonSet first): %w", err)
	}
	// Held until the state directory, lock file included, is gone: an agent
	// that starts after that finds nothing to resume.
	defer lock.Close()
	var errs []error
	if err := unchainAll(log, cfg.ConfDir); err != nil {
		errs = append(errs, err)
	}
	if err := detachAll(log, cfg.BPFRoot, cfg.StateDir); err != nil {
		errs = append(errs, err)
	}
	if err := bpf.Unpin(cfg.BPFRoot); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		errs = append(errs, fmt.Errorf("remove state directory: %w", err))
	}
	bin := filepath.Join(cfg.BinDir, PluginType)
	if err := os.Remove(bin); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove plugin %s: %w", bin, err))
	}
	return errors.Join(errs...)
}

// unchainAll removes the palisade entry from every configuration file, not
// only the first: the file order may have changed since the install.
func unchainAll(log *slog.Logger, dir string) error {
	files, err := FindAll(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", file, err))
			continue
		}
		if filepath.Ext(file) != ".conflist" {
			continue
		}
		out, changed, err := Unchain(file, data)
		if err != nil {
			// Not ours to fix, and it cannot hold our entry usably.
			log.Warn("Configuration file left alone", "file", file, "error", err)
			continue
		}
		if changed {
			st, err := os.Stat(file)
			if err != nil {
				errs = append(errs, fmt.Errorf("stat %s: %w", file, err))
				continue
			}
			if err := writeAtomic(file, out, st.Mode().Perm()); err != nil {
				errs = append(errs, fmt.Errorf("write %s: %w", file, err))
				continue
			}
			log.Info("Palisade removed from the chain", "file", file)
		}
		if err := os.Remove(file + BackupSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove backup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// FindAll lists every CNI configuration file in dir, in the kubelet's order.
func FindAll(dir string) ([]string, error) {
	files, err := listConf(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	return files, nil
}

// detachAll removes Palisade's programs from every endpoint the agent knew
// and, to be sure, every tc filter of ours on any interface of the node.
// TCX links go with their pins in bpf.Unpin.
func detachAll(log *slog.Logger, root, stateDir string) error {
	var errs []error
	reg, err := endpoint.Open(filepath.Join(stateDir, "endpoints.json"))
	if err != nil {
		errs = append(errs, err)
	} else {
		att := endpoint.BPFAttacher{Root: root}
		for _, ep := range reg.List() {
			if err := att.Detach(ep.HostIfIndex, ep.ID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list links: %w", err))...)
	}
	for _, l := range links {
		// An empty endpoint ID names no link pin: this removes only our
		// tc filters (by their priority).
		if err := bpf.Detach(root, l.Attrs().Index, ""); err != nil {
			errs = append(errs, err)
		}
	}
	log.Info("Programs detached", "interfaces", len(links))
	return errors.Join(errs...)
}
