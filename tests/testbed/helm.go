package testbed

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
)

// Helm runs scripts/helm-build (a cached build of the Helm release pinned
// in tests/helm/go.mod) and returns the helm binary's path.
func Helm(tb TB) string {
	tb.Helper()
	return cachedBuild(tb, "helm-build")
}

// RenderChart is `helm template palisade charts/palisade args...`, run from
// the module root so that args may name files of the repository.
func RenderChart(tb TB, args ...string) []byte {
	tb.Helper()
	root := ModuleRoot(tb)
	cmd := exec.Command(Helm(tb), append([]string{"template", "palisade", filepath.Join("charts", "palisade")}, args...)...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("helm template %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

// ChartManifests are the files of conf/kubernetes rendered from the chart,
// by path under conf/kubernetes, with the helm template arguments of each.
var ChartManifests = []struct {
	File string
	Args []string
}{
	{"palisade.yaml", []string{"--namespace", "palisade-system", "--set", "namespace.create=true"}},
	{"uninstall.yaml", []string{"--namespace", "kube-system", "--set", "uninstall.enabled=true"}},
	{"k3s/palisade.yaml", []string{"--namespace", "palisade-system", "--set", "namespace.create=true", "-f", "charts/palisade/values-k3s.yaml"}},
	{"k3s/uninstall.yaml", []string{"--namespace", "kube-system", "--set", "uninstall.enabled=true", "-f", "charts/palisade/values-k3s.yaml"}},
}

// ChartManifestHeader is the comment the generated files start with.
func ChartManifestHeader(file string, args []string) string {
	return fmt.Sprintf("# Generated from charts/palisade (tests/e2e TestManifestsFromChart; do not edit):\n#   helm template palisade charts/palisade %s\n# See README \"Install on a cluster\".\n",
		joinArgs(args))
}

func joinArgs(args []string) string {
	var b bytes.Buffer
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(a)
	}
	return b.String()
}
