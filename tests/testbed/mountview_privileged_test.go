package testbed

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedMountView checks a Flannel node's view: each node reads its
// own /run/flannel and /var/lib/cni, the host's paths stay as they were
// (nothing created there), and a sandbox created after the view exists is
// visible in it, as CNI_NETNS must be.
func TestPrivilegedMountView(t *testing.T) {
	privileged.Require(t)
	var hostBefore []bool
	for _, dir := range nodeViewDirs {
		_, err := os.Stat(dir)
		hostBefore = append(hostBefore, err == nil)
	}
	nodes := map[string]*Node{}
	for _, name := range []string{"a", "b"} {
		n := &Node{Name: name, NetNS: NewNetNS(t, "pal-view"), dir: t.TempDir()}
		v, err := newMountView(n.dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = v.close() })
		n.view = v
		for _, dir := range nodeViewDirs {
			if err := os.WriteFile(filepath.Join(n.dir, dir, "owner"), []byte(name), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		nodes[name] = n
	}
	// A long-lived child dies with the thread that forked it
	// (Pdeathsig): entering views must never end a thread.
	sleeper := StartProcess(t, nodes["a"].NetNS, "sleeper", "sleep", "600")
	sandbox := NewNetNS(t, "pal-view-late")
	for name, n := range nodes {
		err := n.doCNI(func() error {
			for _, dir := range nodeViewDirs {
				got, err := os.ReadFile(filepath.Join(dir, "owner"))
				if err != nil {
					return err
				}
				if string(got) != name {
					t.Errorf("node %s reads %s/owner = %q", name, dir, got)
				}
			}
			_, err := os.Stat(sandbox.Path())
			return err
		})
		if err != nil {
			t.Errorf("node %s: %v", name, err)
		}
	}
	for range 200 {
		if err := nodes["b"].doCNI(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-sleeper.Exited():
		t.Errorf("a process started before the views were entered died: %v", sleeper.ExitErr())
	default:
	}
	for i, dir := range nodeViewDirs {
		_, err := os.Stat(filepath.Join(dir, "owner"))
		if err == nil {
			t.Errorf("the host sees %s/owner: a node's view leaked", dir)
		}
		if _, err := os.Stat(dir); (err == nil) != hostBefore[i] {
			t.Errorf("host %s: existed before %v, exists now %v", dir, hostBefore[i], err == nil)
		}
	}
}
