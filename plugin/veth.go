package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// hostVeth is the host-side end of a pod's veth, where the programs attach.
type hostVeth struct {
	Name  string
	Index int
}

// findHostVeth returns the host-side peer of the veth ifName inside netnsPath.
// It first takes the candidates prev names as host interfaces and proves one
// of them is that peer from the host netns alone (hostVethFromPrev). When
// none can be proven, it enters the pod's netns, reads the peer's ifindex
// there and resolves it in the calling (host) netns; if prev lists host-side
// interfaces, the peer must then be one of them: otherwise the main plugin
// and the kernel disagree about which interface belongs to the pod. Either
// way the answer is the kernel's, never prev's word alone.
func findHostVeth(netnsPath, ifName string, prev *current.Result) (hostVeth, error) {
	if hv, ok := hostVethFromPrev(netnsPath, ifName, prev); ok {
		return hv, nil
	}
	return hostVethFromNetns(netnsPath, ifName, prev)
}

// hostVethFromPrev looks for the host veth among prev's host interfaces
// without entering the pod's netns, which cost ~2 ms of every ADD (a locked
// thread's setns there and back, and the ethtool query for the peer's
// ifindex). prev comes from the plugins before palisade and names the
// interface; it is not trusted to be right. A candidate is taken only if
// the kernel says, in three netlink requests from the host netns:
//   - it is a veth whose peer lives in the netns that netnsPath names (its
//     IFLA_LINK_NETNSID is the id the host netns gives that netns), and
//   - that peer, read in the pod's netns by IFLA_TARGET_NETNSID, is named
//     ifName and points back at the candidate's ifindex.
//
// So a prevResult naming another pod's veth, or a second veth of this pod,
// is never attached to. Anything unproven (no host interfaces listed, a
// kernel before 4.20 without IFLA_TARGET_NETNSID, a netns without an id)
// returns false, and the caller falls back to entering the netns, which
// also produces the precise error.
func hostVethFromPrev(netnsPath, ifName string, prev *current.Result) (hostVeth, bool) {
	if prev == nil {
		return hostVeth{}, false
	}
	nsid := -1 // the id the host netns gives the pod's, once asked
	for _, iface := range prev.Interfaces {
		if iface.Sandbox != "" || iface.Name == "" {
			continue
		}
		l, err := netlink.LinkByName(iface.Name)
		if err != nil {
			continue
		}
		a := l.Attrs()
		// The bridge (cni0) is listed too; only a veth can be the pod's.
		if _, ok := l.(*netlink.Veth); !ok || a.NetNsID < 0 || a.ParentIndex <= 0 {
			continue
		}
		if nsid < 0 {
			if nsid, err = netnsID(netnsPath); err != nil {
				return hostVeth{}, false
			}
		}
		if nsid != a.NetNsID {
			continue
		}
		peerName, peerLink, err := linkInNetns(nsid, a.ParentIndex)
		if err != nil || peerName != ifName || peerLink != a.Index {
			continue
		}
		return hostVeth{Name: a.Name, Index: a.Index}, true
	}
	return hostVeth{}, false
}

// netnsID is the id the calling netns gives the netns at path, or an error
// when it has none.
func netnsID(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	id, err := netlink.GetNetNsIdByFd(int(f.Fd()))
	if err == nil && id < 0 {
		err = fmt.Errorf("netns %s has no id", path)
	}
	return id, err
}

// errNoTargetNetns means the kernel answered about a link without saying it
// read it in the requested netns: one older than 4.20 ignores
// IFLA_TARGET_NETNSID and answers for the ifindex in the caller's netns.
var errNoTargetNetns = errors.New("kernel ignored IFLA_TARGET_NETNSID")

// linkInNetns returns the name and IFLA_LINK of the link with ifindex index in
// the netns the calling netns knows as nsid, without entering it.
func linkInNetns(nsid, index int) (name string, link int, err error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(nsid))))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return "", 0, fmt.Errorf("get ifindex %d in netns id %d: %w", index, nsid, err)
	}
	if len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return "", 0, fmt.Errorf("get ifindex %d in netns id %d: %d answers", index, nsid, len(msgs))
	}
	attrs, err := nl.ParseRouteAttr(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return "", 0, fmt.Errorf("parse ifindex %d in netns id %d: %w", index, nsid, err)
	}
	target := -1
	for _, at := range attrs {
		switch {
		case at.Attr.Type == unix.IFLA_IFNAME:
			name = string(bytes.TrimRight(at.Value, "\x00"))
		case at.Attr.Type == unix.IFLA_LINK && len(at.Value) == 4:
			link = int(nl.NativeEndian().Uint32(at.Value))
		case at.Attr.Type == unix.IFLA_TARGET_NETNSID && len(at.Value) == 4:
			target = int(int32(nl.NativeEndian().Uint32(at.Value)))
		}
	}
	if target != nsid {
		return "", 0, errNoTargetNetns
	}
	return name, link, nil
}

// hostVethFromNetns finds the peer by entering the pod's netns.
func hostVethFromNetns(netnsPath, ifName string, prev *current.Result) (hostVeth, error) {
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
