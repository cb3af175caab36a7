package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedIsolate isolates a real child process: it must land on
// the other CPUs and in a freezer cgroup that freezes it, the test process
// on the load CPU, and Close must put both back and leave no cgroup.
func TestPrivilegedIsolate(t *testing.T) {
	privileged.Require(t)
	if _, err := os.Stat(filepath.Join(freezerRoot, "cgroup.procs")); err != nil {
		t.Skipf("no cgroup v1 freezer here: %v", err)
	}
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil || before.Count() < 2 {
		t.Skipf("needs two CPUs (%d, %v)", before.Count(), err)
	}
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	pid := child.Process.Pid

	iso, err := isolate(1)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = iso.Close()
		}
	})
	var self, kid unix.CPUSet
	if err := unix.SchedGetaffinity(0, &self); err != nil {
		t.Fatal(err)
	}
	if err := unix.SchedGetaffinity(pid, &kid); err != nil {
		t.Fatal(err)
	}
	if self.Count() != 1 || !self.IsSet(1) {
		t.Errorf("test process affinity: %d CPUs, CPU 1 %v; want CPU 1 only", self.Count(), self.IsSet(1))
	}
	if kid.IsSet(1) {
		t.Error("child may run on the load CPU 1")
	}
	if err := iso.Freeze(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(iso.freezer, "freezer.state")); err != nil || strings.TrimSpace(string(b)) != "FROZEN" {
		t.Errorf("freezer state %q, %v; want FROZEN", b, err)
	}
	if err := iso.Thaw(); err != nil {
		t.Fatal(err)
	}
	dirs := append([]string(nil), iso.dirs...)
	closed = true
	if err := iso.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left behind (%v)", d, err)
		}
	}
	var after unix.CPUSet
	if err := unix.SchedGetaffinity(0, &after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Errorf("test process affinity after Close: %d CPUs, want %d", after.Count(), before.Count())
	}
	if cs, fz, err := procCgroups(pid); err != nil || strings.Contains(cs, "palisade-bench") || strings.Contains(fz, "palisade-bench") {
		t.Errorf("child back in cpuset %q freezer %q (%v); want where it was", cs, fz, err)
	}
}
