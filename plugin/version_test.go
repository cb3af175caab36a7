package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	binOnce sync.Once
	binPath string
	binErr  string
)

// pluginBinary builds the plugin once per test process, so that skel's own
// version checks, which direct calls of the verbs skip, run as a runtime
// would meet them.
func pluginBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	binOnce.Do(func() {
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			binErr = "go env GOMOD: " + err.Error()
			return
		}
		dir, err := os.MkdirTemp("", "palisade-version-test")
		if err != nil {
			binErr = err.Error()
			return
		}
		binPath = filepath.Join(dir, "palisade")
		build := exec.Command("go", "build", "-o", binPath, "./plugin")
		build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		if out, err := build.CombinedOutput(); err != nil {
			binErr = "go build ./plugin: " + err.Error() + "\n" + string(out)
		}
	})
	if binErr != "" {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// runPlugin runs the binary with CNI_COMMAND=cmd and stdin, as a runtime does.
func runPlugin(t *testing.T, cmd string, stdin []byte) (stdout []byte, err error) {
	t.Helper()
	c := exec.Command(pluginBinary(t))
	c.Env = append(os.Environ(), "CNI_COMMAND="+cmd, "CNI_CONTAINERID=ctr1", "CNI_NETNS=/var/run/netns/palisade-test-gone",
		"CNI_IFNAME=eth0", "CNI_PATH=/nonexistent", "CNI_ARGS=K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod")
	c.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	c.Stdout = &out
	err = c.Run()
	return out.Bytes(), err
}

// TestVersion asks the binary, as a runtime would, which CNI versions it
// supports.
func TestVersion(t *testing.T) {
	out, err := runPlugin(t, "VERSION", nil)
	if err != nil {
		t.Fatalf("CNI_COMMAND=VERSION: %v\n%s", err, out)
	}
	var got struct {
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("decode VERSION output %q: %v", out, err)
	}
	if diff := cmp.Diff([]string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}, got.SupportedVersions); diff != "" {
		t.Errorf("supportedVersions (-want +got):\n%s", diff)
	}
}

// TestVersionGates runs the verbs through skel, whose checks come before
// palisade's own code: which versions a verb is refused for, and that DEL
// is refused for none.
func TestVersionGates(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "no-agent.sock")
	tests := []struct {
		cmd, ver string
		wantErr  string // "" : the verb succeeds
	}{
		{"CHECK", "0.3.1", "config version does not allow CHECK"},
		{"CHECK", "0.3.0", "config version does not allow CHECK"},
		{"ADD", "0.2.0", "incompatible CNI versions"},
		{"ADD", "1.2.0", "incompatible CNI versions"},
		// The agent is down, which DEL tolerates: only a version check
		// could fail these.
		{"DEL", "0.3.1", ""},
		{"DEL", "0.2.0", ""},
		{"DEL", "1.2.0", ""},
		{"STATUS", "1.0.0", "config version does not allow STATUS"},
	}
	for _, tt := range tests {
		t.Run(tt.cmd+"/"+tt.ver, func(t *testing.T) {
			stdin := netconf(t, "1.1.0", set("cniVersion", tt.ver), set("agentSocket", socket), without("prevResult"))
			out, err := runPlugin(t, tt.cmd, stdin)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("%s with cniVersion %s: %v\n%s", tt.cmd, tt.ver, err, out)
				}
				return
			}
			if err == nil || !strings.Contains(string(out), tt.wantErr) {
				t.Fatalf("%s with cniVersion %s: err %v, output %s; want an error saying %q", tt.cmd, tt.ver, err, out, tt.wantErr)
			}
		})
	}
}
