// Command palisade is a chained CNI plugin: placed after the main plugin
// (flannel) and portmap in a conflist, it registers the pod with
// palisade-agent, which enforces Kubernetes NetworkPolicy on it, and attaches
// Palisade's eBPF programs to the pod's host-side veth.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// about is printed on stderr when the binary runs without CNI_COMMAND.
const about = "palisade: chained CNI plugin enforcing Kubernetes NetworkPolicy with eBPF"

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Check:  cmdCheck,
		Del:    cmdDel,
		GC:     cmdGC,
		Status: cmdStatus,
	}, version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), about)
}
