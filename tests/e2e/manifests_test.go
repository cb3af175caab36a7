package e2e

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/palisade-cni/palisade/tests/testbed"
)

var update = flag.Bool("update", false, "rewrite conf/kubernetes from charts/palisade")

// TestManifestsFromChart keeps conf/kubernetes equal to the chart rendered
// with each file's values, so the plain manifests and the chart never drift
// (go test ./tests/e2e -run ManifestsFromChart -update rewrites them).
func TestManifestsFromChart(t *testing.T) {
	dir := filepath.Join(testbed.ModuleRoot(t), "conf", "kubernetes")
	for _, m := range testbed.ChartManifests {
		want := append([]byte(testbed.ChartManifestHeader(m.File, m.Args)), testbed.RenderChart(t, m.Args...)...)
		path := filepath.Join(dir, m.File)
		if *update {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is not what the chart renders: run go test ./tests/e2e -run ManifestsFromChart -update", path)
		}
	}
}

// TestK3sPreset: the k3s files differ from the plain ones by the host paths
// of the CNI directories only, where k3s's containerd looks.
func TestK3sPreset(t *testing.T) {
	for _, name := range []string{"palisade.yaml", "uninstall.yaml"} {
		plain, k3s := manifestBytes(t, name), manifestBytes(t, "k3s/"+name)
		for from, to := range map[string]string{
			"{path: /etc/cni/net.d,": "{path: /var/lib/rancher/k3s/agent/etc/cni/net.d,",
			"{path: /opt/cni/bin,":   "{path: /var/lib/rancher/k3s/data/current/bin,",
		} {
			if bytes.Count(plain, []byte(from)) != 1 {
				t.Fatalf("%s: want exactly one %q", name, from)
			}
			plain = bytes.ReplaceAll(plain, []byte(from), []byte(to))
		}
		// Past the header, which names the values file.
		body := func(b []byte) []byte { return b[bytes.Index(b, []byte("\n---\n")):] }
		if !bytes.Equal(body(plain), body(k3s)) {
			t.Errorf("k3s/%s differs from %s by more than the CNI host paths", name, name)
		}
	}
}

func manifestBytes(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testbed.ModuleRoot(t), "conf", "kubernetes", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
