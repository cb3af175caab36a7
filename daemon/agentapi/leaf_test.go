package agentapi

import (
	"os/exec"
	"strings"
	"testing"
)

// The plugin imports this package; it must stay a leaf so that the plugin
// binary never pulls in client-go or the agent's other dependencies.
func TestImportsOnlyTheStandardLibrary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg != "github.com/palisade-cni/palisade/daemon/agentapi" {
			t.Errorf("agentapi depends on %s", pkg)
		}
	}
}
