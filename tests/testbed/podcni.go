package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
)

// CNIAdd runs ADD for the sandbox inside the node's namespace, so that the
// plugins (children of the locked thread) work on the node's links, and, on
// a Flannel node, in its mount view (see doCNI).
func (p *Pod) CNIAdd(ctx context.Context) error {
	var res *current.Result
	var ver string
	err := p.Node.doCNI(func() error {
		r, err := p.cni.AddNetworkList(ctx, p.list, p.rt)
		if err != nil {
			return err
		}
		ver = r.Version()
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return fmt.Errorf("cni add pod %s on node %s: %w", p, p.Node.Name, err)
	}
	ip, err := sandboxIPv4(res)
	if err != nil {
		return fmt.Errorf("cni add pod %s: %w", p, err)
	}
	for _, want := range p.wantIPs {
		if !resultHas(res, want) {
			return fmt.Errorf("cni add pod %s on node %s: asked for IP %s, got %v", p, p.Node.Name, want, res.IPs)
		}
	}
	name, index, err := p.hostVeth()
	if err != nil {
		return fmt.Errorf("cni add pod %s: %w", p, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.result, p.resultVer, p.ip, p.hostIfName, p.hostIfIndex = res, ver, ip, name, index
	return nil
}

// CNICheck runs CHECK against the result cached by the last ADD.
func (p *Pod) CNICheck(ctx context.Context) error {
	err := p.Node.doCNI(func() error { return p.cni.CheckNetworkList(ctx, p.list, p.rt) })
	if err != nil {
		return fmt.Errorf("cni check pod %s on node %s: %w", p, p.Node.Name, err)
	}
	return nil
}

// CNIDel runs DEL. The spec makes DEL idempotent, so calling it twice, or
// after a failed ADD, must succeed.
func (p *Pod) CNIDel(ctx context.Context) error {
	err := p.Node.doCNI(func() error { return p.cni.DelNetworkList(ctx, p.list, p.rt) })
	if err != nil {
		return fmt.Errorf("cni del pod %s on node %s: %w", p, p.Node.Name, err)
	}
	return nil
}

// hostVeth follows eth0's veth peer index from the sandbox to the node.
func (p *Pod) hostVeth() (string, int, error) {
	var peer int
	err := p.NetNS.Do(func() error {
		l, err := netlink.LinkByName(PodIfName)
		if err != nil {
			return fmt.Errorf("find %s: %w", PodIfName, err)
		}
		veth, ok := l.(*netlink.Veth)
		if !ok {
			return fmt.Errorf("%s is a %s, not a veth", PodIfName, l.Type())
		}
		peer, err = netlink.VethPeerIndex(veth)
		if err != nil {
			return fmt.Errorf("find peer of %s: %w", PodIfName, err)
		}
		return nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("host veth in netns %s: %w", p.NetNS.Name(), err)
	}
	var name string
	err = p.Node.Do(func() error {
		l, err := netlink.LinkByIndex(peer)
		if err != nil {
			return fmt.Errorf("find link %d: %w", peer, err)
		}
		name = l.Attrs().Name
		return nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("host veth on node %s: %w", p.Node.Name, err)
	}
	return name, peer, nil
}

// sandboxIPv4 is the first IPv4 address the result gives the sandbox's
// interface.
func sandboxIPv4(res *current.Result) (netip.Addr, error) {
	for _, ipc := range res.IPs {
		// bridge lists its own gateway interface too; skip host-side ones.
		if i := ipc.Interface; i != nil && *i < len(res.Interfaces) && res.Interfaces[*i].Sandbox == "" {
			continue
		}
		if a, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok {
			return a, nil
		}
	}
	return netip.Addr{}, errors.New("cni result has no IPv4 address on the sandbox interface")
}

// resultHas reports whether the result gives the sandbox address ip.
func resultHas(res *current.Result, ip netip.Addr) bool {
	for _, ipc := range res.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap() == ip {
			return true
		}
	}
	return false
}

// portMappings passes hostPorts to portmap the way the CRI runtimes do: only
// ports that declare one.
func portMappings(pod *corev1.Pod) map[string]any {
	var maps []map[string]any
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.HostPort == 0 {
				continue
			}
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			maps = append(maps, map[string]any{
				"hostPort":      cp.HostPort,
				"containerPort": cp.ContainerPort,
				"protocol":      map[corev1.Protocol]string{corev1.ProtocolTCP: "tcp", corev1.ProtocolUDP: "udp", corev1.ProtocolSCTP: "sctp"}[proto],
				"hostIP":        cp.HostIP,
			})
		}
	}
	if len(maps) == 0 {
		return nil
	}
	return map[string]any{"portMappings": maps}
}
