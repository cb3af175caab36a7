package statefile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockName is the lock file in the state directory.
const LockName = "agent.lock"

// ErrLocked means another agent holds the state directory.
var ErrLocked = errors.New("state directory locked by another palisade-agent")

// Lock takes dir's lock for as long as the process lives (or until the
// returned file is closed): two agents on one node, as a surge rollout or
// a debug run would start, each prune the endpoints and pins the other
// registered. The kernel drops the lock when its holder dies, so a crash
// never leaves it behind. The holder's pid is written into the file for
// the message the next one prints.
func Lock(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, LockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "unknown pid"
			if b, rerr := os.ReadFile(path); rerr == nil && len(strings.TrimSpace(string(b))) > 0 {
				holder = "pid " + strings.TrimSpace(string(b))
			}
			return nil, fmt.Errorf("%w (%s holds %s): stop it first, or give this one its own --state-dir and --bpf-root", ErrLocked, holder, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// LockWait is Lock, retried until wait has passed while another agent
// holds the directory: an agent that is shutting down (its pod in its
// grace period) lets go within seconds.
func LockWait(dir string, wait time.Duration) (*os.File, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := Lock(dir)
		if !errors.Is(err, ErrLocked) || !time.Now().Before(deadline) {
			return f, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}
