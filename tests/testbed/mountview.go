package testbed

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// nodeViewDirs are the host paths a Flannel node sees as directories of its
// own: the Flannel CNI plugin reads /run/flannel/subnet.env and keeps its
// delegate configs in /var/lib/cni/flannel, host-local its leases in
// /var/lib/cni/networks, and palisade, chained without an agentSocket key,
// dials /run/palisade/agent.sock. kube-flannel's conflist must stay byte for
// byte, so none of these can be moved by configuration.
var nodeViewDirs = []string{"/run/flannel", "/run/palisade", "/var/lib/cni"}

// mountView is a node's mount namespace: a slave of the host's, so that the
// sandboxes the test mounts under /run/netns appear in it, in which each of
// nodeViewDirs is a bind mount of a directory under the node's own.
type mountView struct {
	fd *os.File // keeps the namespace alive; /proc/thread-self/ns/mnt of its creator
}

// newMountView creates the namespace on a locked thread and brings the
// thread back (see onThreadIn).
func newMountView(root string) (*mountView, error) {
	var fd *os.File
	err := onThreadIn(func() error {
		var err error
		fd, err = setupMountView(root)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("node mount namespace: %w", err)
	}
	return &mountView{fd: fd}, nil
}

// onThreadIn runs fn on a locked thread with fs attributes of its own, then
// puts the thread back in the process's mount namespace and working
// directory before unlocking it. The thread must not simply end, as a
// locked goroutine's thread does when it exits: the runtime may have forked
// a long-lived child (kube-apiserver, flanneld) from that very thread, with
// Pdeathsig set, and it would die with it. The thread keeps an fs_struct of
// its own, equal to everyone's; nothing in the tests changes directory.
func onThreadIn(fn func() error) error {
	// A goroutine of its own, so that a thread that cannot be brought
	// back ends with it rather than staying locked to the caller.
	done := make(chan error, 1)
	go func() { done <- lockedIn(fn) }()
	return <-done
}

func lockedIn(fn func() error) error {
	runtime.LockOSThread()
	cwd, err := os.Getwd()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get working directory: %w", err)
	}
	home, err := os.Open("/proc/thread-self/ns/mnt")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own mount namespace: %w", err)
	}
	defer home.Close()
	// setns into a mount namespace refuses a thread sharing its fs
	// attributes (cwd, root) with others, as all Go threads do.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("unshare fs attributes: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNS); err != nil {
		// Stay locked: the runtime ends the thread with the goroutine.
		return errors.Join(ferr, fmt.Errorf("return to the process's mount namespace: %w", err))
	}
	if err := unix.Chdir(cwd); err != nil {
		return errors.Join(ferr, fmt.Errorf("return to %s: %w", cwd, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func setupMountView(root string) (*os.File, error) {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return nil, fmt.Errorf("unshare mount namespace: %w", err)
	}
	// Slave, not private: mounts the host makes later (a new pod's
	// /run/netns entry) still propagate in, and ours never leak out.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return nil, fmt.Errorf("make / a recursive slave: %w", err)
	}
	shadowed := map[string]bool{}
	for _, dir := range nodeViewDirs {
		src := filepath.Join(root, dir)
		if err := os.MkdirAll(src, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", src, err)
		}
		if err := ensureMountPoint(dir, root, shadowed); err != nil {
			return nil, err
		}
		if err := unix.Mount(src, dir, "", unix.MS_BIND, ""); err != nil {
			return nil, fmt.Errorf("bind %s on %s: %w", src, dir, err)
		}
	}
	fd, err := os.Open("/proc/thread-self/ns/mnt")
	if err != nil {
		return nil, fmt.Errorf("open mount namespace: %w", err)
	}
	return fd, nil
}

// ensureMountPoint makes dir exist inside the new namespace without creating
// anything on the host: when it is missing, its parent is covered with a
// tmpfs that holds every entry the parent had (each bound back from a stash
// of the original, so /run/netns and the rest stay as they are) and dir.
func ensureMountPoint(dir, root string, shadowed map[string]bool) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	parent := filepath.Dir(dir)
	if !shadowed[parent] {
		if err := shadowParent(parent, filepath.Join(root, "host"+parent)); err != nil {
			return fmt.Errorf("make room for %s: %w", dir, err)
		}
		shadowed[parent] = true
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", dir, err)
	}
	return nil
}

func shadowParent(parent, stash string) error {
	if err := os.MkdirAll(stash, 0o755); err != nil {
		return fmt.Errorf("create stash %s: %w", stash, err)
	}
	if err := unix.Mount(parent, stash, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("stash %s: %w", parent, err)
	}
	entries, err := os.ReadDir(stash)
	if err != nil {
		return fmt.Errorf("list %s: %w", parent, err)
	}
	if err := unix.Mount("tmpfs", parent, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("cover %s with a tmpfs: %w", parent, err)
	}
	for _, e := range entries {
		if err := restoreEntry(filepath.Join(stash, e.Name()), filepath.Join(parent, e.Name()), e.Type()); err != nil {
			return err
		}
	}
	return nil
}

// restoreEntry brings one entry of the covered directory back: symlinks as
// symlinks, everything else as a recursive bind mount of the original.
func restoreEntry(orig, at string, mode os.FileMode) error {
	if mode&os.ModeSymlink != 0 {
		target, err := os.Readlink(orig)
		if err != nil {
			return fmt.Errorf("read link %s: %w", orig, err)
		}
		return os.Symlink(target, at)
	}
	var err error
	if mode.IsDir() {
		err = os.Mkdir(at, 0o755)
	} else {
		var f *os.File
		if f, err = os.Create(at); err == nil {
			err = f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("create mount point %s: %w", at, err)
	}
	if err := unix.Mount(orig, at, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s back: %w", at, err)
	}
	return nil
}

// do runs fn inside the view and netns. Only short-lived children may be
// started from fn: the CNI plugins libcni runs and waits for.
func (v *mountView) do(netns *NetNS, fn func() error) error {
	return onThreadIn(func() error {
		if err := unix.Setns(int(v.fd.Fd()), unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("enter node mount namespace: %w", err)
		}
		// On this thread: NetNS.Do would run fn on another one, outside
		// the view.
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			return fmt.Errorf("open own netns: %w", err)
		}
		defer home.Close()
		if err := unix.Setns(int(netns.ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", netns.Name(), err)
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			return errors.Join(ferr, fmt.Errorf("return to own netns: %w", err))
		}
		return ferr
	})
}

func (v *mountView) close() error { return v.fd.Close() }
