package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestVersion builds the binary and asks it, as a runtime would, which CNI
// versions it supports.
func TestVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "palisade")
	build := exec.Command("go", "build", "-o", bin, "./plugin")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./plugin: %v\n%s", err, out)
	}

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("CNI_COMMAND=VERSION: %v\nstderr: %s", err, stderr.String())
	}
	var got struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("decode VERSION output %q: %v", stdout.String(), err)
	}
	if diff := cmp.Diff([]string{"0.4.0", "1.0.0", "1.1.0"}, got.SupportedVersions); diff != "" {
		t.Errorf("supportedVersions (-want +got):\n%s", diff)
	}
}
