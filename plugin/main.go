// Command palisade is a chained CNI plugin: placed after the main plugin
// (flannel) and portmap in a conflist, it registers the pod with
// palisade-agent, which enforces Kubernetes NetworkPolicy on it, and attaches
// Palisade's eBPF programs to the pod's host-side veth.
package main

import (
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// about is printed on stderr when the binary runs without CNI_COMMAND.
const about = "palisade: chained CNI plugin enforcing Kubernetes NetworkPolicy with eBPF"

// supportedVersions are every version a main plugin writes into a conflist
// that can chain (prevResult came with 0.3.0). Stock Flannel's manifests
// wrote 0.3.1 until 2026, and clusters keep the file they were installed
// with. CHECK needs 0.4.0 and STATUS/GC 1.1.0: skel refuses those verbs for
// older configs.
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

func main() {
	supports := supportedVersions
	if os.Getenv("CNI_COMMAND") == "DEL" {
		var err error
		if supports, err = delVersions(); err != nil {
			fmt.Fprintf(os.Stderr, "palisade: %v\n", err)
			os.Exit(1)
		}
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Check:  cmdCheck,
		Del:    cmdDel,
		GC:     cmdGC,
		Status: cmdStatus,
	}, version.PluginSupports(supports...), about)
}

// delVersions adds the version of the config on stdin to what DEL accepts:
// DEL reads nothing version-specific, and a DEL refused for its version
// would wedge the runtime's teardown of the pod for good. skel reads stdin
// itself, so the bytes are handed back to it through a pipe.
func delVersions() ([]string, error) {
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		return nil, fmt.Errorf("read netconf from stdin: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pass netconf on to DEL: %w", err)
	}
	go func() {
		// skel reads to EOF; a failed write shows there as a bad netconf.
		_, _ = w.Write(stdin)
		w.Close()
	}()
	os.Stdin = r
	ver, err := (&version.ConfigDecoder{}).Decode(stdin)
	if err != nil || slices.Contains(supportedVersions, ver) {
		// skel reports the decoding error itself.
		return supportedVersions, nil
	}
	return append(slices.Clone(supportedVersions), ver), nil
}
