package testbed

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConflistPointsAtTheNode(t *testing.T) {
	n := &Node{Name: "n", PodCIDR: netip.MustParsePrefix("10.244.7.0/24"), dir: t.TempDir()}
	tests := []struct {
		name  string
		opts  []CNIOption
		types []string
		ver   string
	}{
		{"the full chain keeps palisade last", nil, []string{"bridge", "portmap", "palisade"}, "1.0.0"},
		{"the baseline drops palisade", []CNIOption{WithoutPalisade()}, []string{"bridge", "portmap"}, "1.0.0"},
		{"the version can be raised for STATUS and GC", []CNIOption{WithCNIVersion("1.1.0")}, []string{"bridge", "portmap", "palisade"}, "1.1.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			list, err := n.conflist(buildCNIOptions(tc.opts))
			if err != nil {
				t.Fatal(err)
			}
			if list.CNIVersion != tc.ver {
				t.Errorf("cniVersion %s, want %s", list.CNIVersion, tc.ver)
			}
			var got []string
			for _, p := range list.Plugins {
				got = append(got, p.Network.Type)
				var conf struct {
					AgentSocket string `json:"agentSocket"`
					IPAM        struct {
						Ranges  [][]struct{ Subnet string } `json:"ranges"`
						DataDir string                      `json:"dataDir"`
					} `json:"ipam"`
				}
				if err := json.Unmarshal(p.Bytes, &conf); err != nil {
					t.Fatal(err)
				}
				switch p.Network.Type {
				case "bridge":
					if len(conf.IPAM.Ranges) != 1 || len(conf.IPAM.Ranges[0]) != 1 || conf.IPAM.Ranges[0][0].Subnet != "10.244.7.0/24" {
						t.Errorf("bridge ranges %+v, want the node's pod CIDR only", conf.IPAM.Ranges)
					}
					if conf.IPAM.DataDir != filepath.Join(n.dir, "ipam") {
						t.Errorf("ipam dataDir %q, want the node's own", conf.IPAM.DataDir)
					}
				case "palisade":
					if conf.AgentSocket != n.AgentSocket() {
						t.Errorf("agentSocket %q, want %q", conf.AgentSocket, n.AgentSocket())
					}
				}
			}
			if diff := cmp.Diff(tc.types, got); diff != "" {
				t.Errorf("plugin types (-want +got):\n%s", diff)
			}
		})
	}
}
