package main

import (
	"fmt"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// hostVeth is the host-side end of a pod's veth, where the programs attach.
type hostVeth struct {
	Name  string
	Index int
}

// findHostVeth returns the host-side peer of the veth ifName inside netnsPath.
// It enters the pod's netns only to read the peer's ifindex, then resolves
// that ifindex in the calling (host) netns. When prev lists host-side
// interfaces, the peer must be one of them: otherwise the main plugin and the
// kernel disagree about which interface belongs to the pod.
func findHostVeth(netnsPath, ifName string, prev *current.Result) (hostVeth, error) {
	var peerIndex int
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find link: %w", err)
		}
		veth, ok := l.(*netlink.Veth)
		if !ok {
			return &configError{msg: fmt.Sprintf(
				"palisade needs a veth-based pod network: %s in netns %s is a %s link", ifName, netnsPath, l.Type())}
		}
		peerIndex, err = netlink.VethPeerIndex(veth)
		if err != nil {
			return fmt.Errorf("read veth peer ifindex: %w", err)
		}
		return nil
	})
	if err != nil {
		return hostVeth{}, fmt.Errorf("look up %s in netns %s: %w", ifName, netnsPath, err)
	}
	peer, err := netlink.LinkByIndex(peerIndex)
	if err != nil {
		return hostVeth{}, fmt.Errorf("find veth peer (ifindex %d) of %s in netns %s in the host netns: %w",
			peerIndex, ifName, netnsPath, err)
	}
	hv := hostVeth{Name: peer.Attrs().Name, Index: peer.Attrs().Index}
	if prev == nil {
		return hv, nil
	}
	var listed []string
	for _, iface := range prev.Interfaces {
		if iface.Sandbox != "" {
			continue
		}
		if iface.Name == hv.Name {
			return hv, nil
		}
		listed = append(listed, iface.Name)
	}
	if len(listed) > 0 {
		return hostVeth{}, fmt.Errorf("host veth %s of %s in netns %s is not among prevResult's host interfaces %v",
			hv.Name, ifName, netnsPath, listed)
	}
	return hv, nil
}
