package testbed

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestFlannelChainIsReadFromTheNodesConfDir checks what a Flannel node's
// pods run: the file in its CNI conf dir, as libcni reads it, byte for byte
// when it is the whole chain; with palisade left out for the baseline; and
// never a chain without palisade when palisade is asked for.
func TestFlannelChainIsReadFromTheNodesConfDir(t *testing.T) {
	flannel := readRepoFile(t, flannelConflistPath)
	installed := readRepoFile(t, "daemon/install/testdata/10-flannel.conflist.want")
	tests := []struct {
		name      string
		file      []byte
		opts      []CNIOption
		wantTypes []string
		wantBytes []byte // nil: not compared
		wantErr   bool
	}{
		{"the installed chain runs as written", installed, nil, []string{"flannel", "portmap", "palisade"}, installed, false},
		{"without install-cni palisade is refused", flannel, nil, nil, nil, true},
		{"the baseline runs Flannel's own file as written", flannel, []CNIOption{WithoutPalisade()}, []string{"flannel", "portmap"}, flannel, false},
		{"the baseline leaves an installed palisade out", installed, []CNIOption{WithoutPalisade()}, []string{"flannel", "portmap"}, nil, false},
		{"the no-op takes palisade's place", installed, []CNIOption{WithNoopInsteadOfPalisade()}, []string{"flannel", "portmap", "sample"}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := &Node{Name: "n", Network: FlannelVXLAN, dir: t.TempDir()}
			if err := os.MkdirAll(n.CNIConfDir(), 0o755); err != nil {
				t.Fatal(err)
			}
			// A later file must not win: the runtime takes the first.
			for name, data := range map[string][]byte{flannelConflistName: tc.file, "99-loopback.conf": []byte(`{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`)} {
				if err := os.WriteFile(filepath.Join(n.CNIConfDir(), name), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			list, err := n.loadFlannelConflist(buildCNIOptions(tc.opts))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("loaded %s, want an error", list.Bytes)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range list.Plugins {
				got = append(got, p.Network.Type)
			}
			if diff := cmp.Diff(tc.wantTypes, got); diff != "" {
				t.Errorf("plugin types (-want +got):\n%s", diff)
			}
			if list.CNIVersion != "0.3.1" {
				t.Errorf("cniVersion %s, want Flannel's 0.3.1", list.CNIVersion)
			}
			if tc.wantBytes != nil && string(list.Bytes) != string(tc.wantBytes) {
				t.Errorf("chain bytes differ from the file:\n%s\nwant\n%s", list.Bytes, tc.wantBytes)
			}
		})
	}
}

func TestPodNetworkBackends(t *testing.T) {
	for pn, want := range map[PodNetwork]string{FlannelVXLAN: "vxlan", FlannelHostGW: "host-gw", BridgeChain: ""} {
		if got := pn.flannelBackend(); got != want {
			t.Errorf("%s: backend %q, want %q", pn, got, want)
		}
		if pn.Flannel() != (want != "") {
			t.Errorf("%s: Flannel() = %v", pn, pn.Flannel())
		}
	}
}

func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(ModuleRoot(t), rel))
	if err != nil {
		t.Fatal(err)
	}
	return data
}
