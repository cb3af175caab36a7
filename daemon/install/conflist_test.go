package install

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestChain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    string
		opts    Options
		want    string // testdata file with the expected bytes; "" = unchanged
		wantErr error  // nil: no error
		errText string // part of the message an operator needs
	}{
		{name: "flannel conflist gets palisade appended after portmap in its own style", file: "10-flannel.conflist", want: "10-flannel.conflist.want"},
		{name: "bridge conflist as containerd writes it", file: "10-containerd-net.conflist", want: "10-containerd-net.conflist.want"},
		{name: "compact one-plugin conflist, other keys named plugins untouched", file: "05-ptp-compact.conflist", want: "05-ptp-compact.conflist.want"},
		{name: "conflist that already has palisade is left as it is", file: "10-chained.conflist"},
		{name: "plain .conf is refused with how to convert it", file: "10-bridge.conf", wantErr: ErrNotConflist, errText: "Convert it into a conflist"},
		{name: "broken JSON is refused", file: "10-broken.conflist", errText: "not valid JSON"},
		{name: "conflist without plugins is refused", file: "10-no-plugins.conflist", wantErr: ErrNotConflist},
		{name: "macvlan main plugin is refused with the reason", file: "10-macvlan.conflist", wantErr: ErrUnsupportedMainPlugin, errText: "macvlan"},
		{name: "flannel delegating to ipvlan is refused", file: "10-flannel-ipvlan.conflist", wantErr: ErrUnsupportedMainPlugin, errText: "ipvlan"},
		{name: "unknown main plugin is refused with the override flag named", file: "10-unknown.conflist", wantErr: ErrUnsupportedMainPlugin, errText: "--accept-main-plugin=vendor-cni"},
		{name: "unknown main plugin accepted when the operator says it is veth-based", file: "10-unknown.conflist", opts: Options{AcceptMainPlugins: []string{"vendor-cni"}}, want: "-"},
		{name: "palisade as the first plugin is refused", file: "10-palisade-first.conflist", errText: "must follow the main plugin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := readTestdata(t, tc.file)
			out, changed, err := Chain(tc.file, in, tc.opts)
			if tc.wantErr != nil || tc.errText != "" {
				if err == nil {
					t.Fatalf("Chain succeeded, want an error; output:\n%s", out)
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("error %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("error %q does not say %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				if changed || string(out) != string(in) {
					t.Fatalf("changed=%v, want the input unchanged; diff:\n%s", changed, cmp.Diff(string(in), string(out)))
				}
				return
			}
			if !changed {
				t.Fatal("changed=false, want palisade appended")
			}
			if tc.want != "-" {
				if diff := cmp.Diff(string(readTestdata(t, tc.want)), string(out)); diff != "" {
					t.Errorf("output differs from %s (-want +got):\n%s", tc.want, diff)
				}
			}
			// What a runtime loads: palisade is the last plugin.
			list, err := libcni.NetworkConfFromBytes(out)
			if err != nil {
				t.Fatalf("libcni cannot load the output: %v\n%s", err, out)
			}
			if last := list.Plugins[len(list.Plugins)-1].Network.Type; last != PluginType {
				t.Errorf("last plugin %q, want palisade", last)
			}
			// Idempotent: a second run is a no-op.
			again, changed, err := Chain(tc.file, out, tc.opts)
			if err != nil || changed || string(again) != string(out) {
				t.Errorf("second Chain: changed=%v err=%v", changed, err)
			}
			// Unchain restores the original byte for byte.
			back, changed, err := Unchain(tc.file, out)
			if err != nil || !changed {
				t.Fatalf("Unchain: changed=%v err=%v", changed, err)
			}
			if diff := cmp.Diff(string(in), string(back)); diff != "" {
				t.Errorf("Unchain did not restore the original (-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnchain(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		want       string
	}{
		{
			name: "entry written by hand, with options, is removed with its separator",
			file: "10-chained.conflist",
			want: strings.Replace(string(readTestdata(t, "10-chained.conflist")), ",\n    {\n      \"type\": \"palisade\",\n      \"logLevel\": \"debug\"\n    }", "", 1),
		},
		{
			name: "palisade first is removed with the separator after it",
			file: "10-palisade-first.conflist",
			want: strings.Replace(string(readTestdata(t, "10-palisade-first.conflist")), "{\"type\": \"palisade\"},\n    ", "", 1),
		},
		{name: "conflist without palisade is unchanged", file: "10-flannel.conflist", want: string(readTestdata(t, "10-flannel.conflist"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := Unchain(tc.file, readTestdata(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, string(out)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
