package e2e

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-cni/palisade/tests/testbed"
)

var updateManifests = flag.Bool("update-manifests", false, "rewrite conf/kubernetes/k3s from conf/kubernetes")

// k3sPaths are where k3s keeps what the manifests mount from the host: its
// containerd reads CNI configuration and plugins there, not from /etc/cni
// and /opt/cni. Only the host side changes; inside the containers the
// paths, and so every command line, stay the same.
var k3sPaths = map[string]string{
	"{path: /etc/cni/net.d,": "{path: /var/lib/rancher/k3s/agent/etc/cni/net.d,",
	"{path: /opt/cni/bin,":   "{path: /var/lib/rancher/k3s/data/current/bin,",
}

// TestK3sManifests keeps conf/kubernetes/k3s equal to the plain manifests
// with k3s's host paths, so the two never drift
// (go test ./tests/e2e -run K3s -update-manifests rewrites them).
func TestK3sManifests(t *testing.T) {
	dir := filepath.Join(testbed.ModuleRoot(t), "conf", "kubernetes")
	for _, name := range []string{"palisade.yaml", "uninstall.yaml"} {
		plain, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		want := []byte("# Generated from ../" + name + " with k3s's CNI paths (tests/e2e/manifests_test.go); do not edit.\n")
		want = append(want, plain...)
		for from, to := range k3sPaths {
			if bytes.Count(want, []byte(from)) != 1 {
				t.Fatalf("%s: want exactly one %q to replace", name, from)
			}
			want = bytes.ReplaceAll(want, []byte(from), []byte(to))
		}
		path := filepath.Join(dir, "k3s", name)
		if *updateManifests {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not %s with k3s's paths: run go test ./tests/e2e -run K3s -update-manifests", path, name)
		}
	}
}
