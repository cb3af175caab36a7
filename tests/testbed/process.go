package testbed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before SIGKILL. kube-apiserver
// drains in about a second; five leaves room on a loaded 2-core machine.
const stopGrace = 5 * time.Second

// logTailLines is how much of a process's log a failing test prints.
const logTailLines = 40

// Process is a child process of the test running inside a namespace, with
// its output in a log file. It is ended by its own PID, never by name.
type Process struct {
	name    string
	netns   *NetNS
	argv    []string
	env     []string // added to the test's environment
	logPath string
	// onStart records each run's PID with the TB (see record).
	onStart func(pid int)

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// StartProcess runs argv inside netns, appending its output to a log file in
// tb.TempDir(). Cleanup prints the log's tail if tb failed, then stops it.
func StartProcess(tb TB, netns *NetNS, name string, argv ...string) *Process {
	tb.Helper()
	p := NewProcess(tb, netns, name, argv...)
	if err := p.Start(); err != nil {
		tb.Fatal(err)
	}
	return p
}

// NewProcess prepares argv inside netns without starting it; see StartProcess.
func NewProcess(tb TB, netns *NetNS, name string, argv ...string) *Process {
	tb.Helper()
	p := &Process{
		name:    name,
		netns:   netns,
		argv:    argv,
		logPath: filepath.Join(tb.TempDir(), name+".log"),
		onStart: func(pid int) { record(tb, "pid", strconv.Itoa(pid)) },
	}
	tb.Cleanup(func() {
		// The tail before stopping shows why the test failed rather than
		// how the process shut down.
		if tb.Failed() {
			tb.Logf("last %d lines of %s (%s):\n%s", logTailLines, name, p.logPath, p.LogTail(logTailLines))
		}
		if err := p.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return p
}

// Setenv adds "KEY=value" entries to the environment of the next Start, for
// programs configured that way, as a DaemonSet's env does.
func (p *Process) Setenv(kv ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.env = append(p.env, kv...)
}

// Start starts the process (again, after Stop). The child's network namespace
// is that of the thread that forks it, so the fork happens inside netns.Do.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.done) {
		return fmt.Errorf("start %s: already running as pid %d", p.name, p.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start %s: open log: %w", p.name, err)
	}
	defer logf.Close()
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(p.env) > 0 {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group keeps a terminal's ^C from reaching it
		// before the test's cleanup does.
		Setpgid: true,
		// A test binary killed by `go test -timeout` runs no cleanup; the
		// kernel then ends the child with the forking thread. ns.Do
		// unlocks that thread and keeps it, so this fires only when the
		// test process dies.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := p.netns.Do(cmd.Start); err != nil {
		return fmt.Errorf("start %s in netns %s: %w", p.name, p.netns.Name(), err)
	}
	p.onStart(cmd.Process.Pid)
	done := make(chan struct{})
	p.cmd, p.done, p.waitErr = cmd, done, nil
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Stop sends SIGTERM, then SIGKILL after stopGrace, and waits for the exit.
// Stopping a process that is not running is not an error.
func (p *Process) Stop() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || isClosed(done) {
		return nil
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s (pid %d): %w", p.name, cmd.Process.Pid, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(stopGrace):
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.name, cmd.Process.Pid, err)
	}
	<-done
	return nil
}

// Kill ends the process with SIGKILL at once, as the OOM killer or a crash
// does: no signal handler runs and nothing is cleaned up. It waits for the
// exit. Killing a process that is not running is not an error.
func (p *Process) Kill() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || isClosed(done) {
		return nil
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s (pid %d): %w", p.name, cmd.Process.Pid, err)
	}
	<-done
	return nil
}

// PID is the process's id, or 0 before the first Start.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited is closed when the current run of the process has ended.
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// ExitErr is how the last run ended (nil while running or on exit status 0).
func (p *Process) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// LogPath is the file holding the process's stdout and stderr.
func (p *Process) LogPath() string { return p.logPath }

// LogTail returns the last n lines of the log.
func (p *Process) LogTail(n int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(read log %s: %v)", p.logPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
