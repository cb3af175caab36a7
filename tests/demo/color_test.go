package demo

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/tests/testbed"
)

func TestColor(t *testing.T) {
	env := func(kv map[string]string) func(string) string {
		return func(k string) string { return kv[k] }
	}
	tests := []struct {
		name     string
		terminal bool
		env      map[string]string
		want     bool
	}{
		{"a terminal gets colours", true, map[string]string{"TERM": "xterm"}, true},
		{"a pipe or file gets none", false, map[string]string{"TERM": "xterm"}, false},
		{"NO_COLOR set to anything turns them off", true, map[string]string{"TERM": "xterm", "NO_COLOR": "1"}, false},
		{"an empty NO_COLOR is no request", true, map[string]string{"TERM": "xterm", "NO_COLOR": ""}, true},
		{"a dumb terminal gets none", true, map[string]string{"TERM": "dumb"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Color(tt.terminal, env(tt.env)); got != tt.want {
				t.Errorf("Color = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPrintColor(t *testing.T) {
	m := Matrix{From: []Source{{Name: "a"}, {Name: "b"}}, To: []Target{{Self: "a", Port: 80}, {Self: "b", Port: 80}}, OK: [][]bool{{true, false}, {true, true}}}
	var plain, colored bytes.Buffer
	m.Print(&plain, nil, false)
	m.Print(&colored, nil, true)
	if bytes.Contains(plain.Bytes(), []byte("\033")) {
		t.Errorf("plain output has escape codes:\n%q", plain.String())
	}
	if !bytes.Contains(colored.Bytes(), []byte("\033[31m")) || !bytes.Contains(colored.Bytes(), []byte("\033[32m")) {
		t.Errorf("coloured output lacks red and green:\n%q", colored.String())
	}
}

// TestDemoScriptTerminal runs scripts/demo's own check: it tells the demo
// binary "terminal" only when its standard output is one.
func TestDemoScriptTerminal(t *testing.T) {
	script := filepath.Join(testbed.ModuleRoot(t), "scripts", "demo")
	out, err := exec.Command(script, "--terminal-check").Output()
	if err != nil {
		t.Fatalf("into a pipe: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != "-demo.terminal=false" {
		t.Errorf("into a pipe: %q, want -demo.terminal=false", got)
	}

	ptm, pts := openPTY(t)
	cmd := exec.Command(script, "--terminal-check")
	cmd.Stdout = pts
	if err := cmd.Run(); err != nil {
		t.Fatalf("onto a terminal: %v", err)
	}
	pts.Close()
	buf := make([]byte, 256)
	n, err := ptm.Read(buf)
	if err != nil {
		t.Fatalf("read the terminal: %v", err)
	}
	if got := strings.TrimSpace(string(buf[:n])); got != "-demo.terminal=true" {
		t.Errorf("onto a terminal: %q, want -demo.terminal=true", got)
	}
}

// openPTY opens a pseudo-terminal pair: the script's stdout is the
// subsidiary side, the test reads the primary.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.FormatUint(uint64(n), 10), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the pty's terminal: %v", err)
	}
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}
