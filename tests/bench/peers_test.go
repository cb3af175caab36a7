package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestErrorLines(t *testing.T) {
	log := strings.Join([]string{
		`I1130 03:00:00.000000    1 main.go:1] "flag" name="v" value="2"`,
		`E1130 03:00:01.000000    1 controller.go:9] "syncing" err=<`,
		"\tnetlink receive: no such file or directory",
		` >`,
		`time="2026" level=info msg="Starting network policy controller"`,
		`E1130 03:00:02.500000    1 controller.go:9] "syncing" err=<`,
		"\tnetlink receive: no such file or directory",
		` >`,
		`time="2026" level=error msg="Failed to sync iptables"`,
		`plain line`,
	}, "\n")
	syncing := `E1130 03:00:02.500000    1 controller.go:9] "syncing" err=< netlink receive: no such file or directory >`
	iptables := `time="2026" level=error msg="Failed to sync iptables"`
	for _, tc := range []struct {
		name string
		max  int
		want []string
	}{
		{"joined, repeats once at their last place", 10, []string{syncing, iptables}},
		{"last only", 1, []string{iptables}},
		{"none", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ErrorLines(log, tc.max); !slices.Equal(got, tc.want) {
				t.Errorf("ErrorLines = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPeerVersionReadsPinnedModule(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "tests", "peers"), 0o755); err != nil {
		t.Fatal(err)
	}
	mod := "module x\n\nrequire (\n\tsigs.k8s.io/kube-network-policies v0.8.0 // indirect\n\tgithub.com/cloudnativelabs/kube-router/v2 v2.1.0 // indirect\n)\n"
	if err := os.WriteFile(filepath.Join(root, "tests", "peers", "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ module, want string }{
		{"github.com/cloudnativelabs/kube-router/v2", "v2.1.0"},
		{"sigs.k8s.io/kube-network-policies", "v0.8.0"},
		{"github.com/cloudnativelabs/kube-router", ""},
	} {
		got, err := PeerVersion(root, tc.module)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("PeerVersion(%s) = %q, %v; want %q", tc.module, got, err, tc.want)
		}
	}
}

func TestPeersInTestsPeersGoMod(t *testing.T) {
	for _, p := range Peers {
		if _, err := PeerVersion(filepath.Join("..", ".."), p.Module); err != nil {
			t.Errorf("peer %s: %v", p.Name, err)
		}
	}
}

func TestPeerTableNotRunnable(t *testing.T) {
	r := &PeerResults{Peers: []PeerResult{
		{Name: "a", Version: "v1", Command: []string{"a", "--x"}, Error: "nft: queue: not supported"},
		{Name: "b", Version: "v2", Command: []string{"b"}, Runnable: true, Enforcement: &Enforcement{Namespace: "ns", DenyMs: 12, AllowMs: 34},
			Cost: []PeerCost{{Stage: "idle", Node: "node-1", RSSMiB: 42.5, CPUSeconds: 1.25}}},
	}}
	var b bytes.Buffer
	r.WriteTable(&b)
	for _, want := range []string{
		"### a v1", "`a --x`", "Not runnable here", "nft: queue: not supported",
		"### b v2", "after 12 ms", "after 34 ms", "| idle | node-1 | 0 | 0 | 42.5 | 1.25 | 0 | 0.0 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Count(b.String(), "Not runnable") != 1 {
		t.Errorf("only peer a is not runnable:\n%s", b.String())
	}
}
