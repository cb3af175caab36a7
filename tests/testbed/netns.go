package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// netnsDir is where iproute2 keeps named network namespaces, so that
// `ip netns list` and `ip netns exec` see ours while debugging.
const netnsDir = "/run/netns"

// NetNS is a named network namespace created by the test.
type NetNS struct {
	name string
	ns   ns.NetNS
}

// NewNetNS creates the named network namespace /run/netns/<prefix>-<random>
// with its loopback up, and deletes it in tb's cleanup.
func NewNetNS(tb TB, prefix string) *NetNS {
	tb.Helper()
	n, err := CreateNetNS(prefix)
	if err != nil {
		tb.Fatal(err)
	}
	record(tb, "netns", n.name)
	tb.Cleanup(func() {
		if err := n.Delete(); err != nil {
			tb.Error(err)
		}
	})
	return n
}

// CreateNetNS is NewNetNS for owners that are not a TB, such as the pod
// runner, whose sandboxes live as long as their Pod: the caller deletes it.
func CreateNetNS(prefix string) (*NetNS, error) {
	name := prefix + "-" + randomHex(4)
	// iproute2 creates the bind mount and makes /run/netns a shared mount
	// point, exactly as the tools an operator debugs with expect it.
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("create netns %s: %w: %s", name, err, trimOut(out))
	}
	h, err := ns.GetNS(filepath.Join(netnsDir, name))
	if err != nil {
		_ = exec.Command("ip", "netns", "delete", name).Run()
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	n := &NetNS{name: name, ns: h}
	if err := n.Do(func() error { return linkUp("lo") }); err != nil {
		_ = n.Delete()
		return nil, fmt.Errorf("netns %s: %w", name, err)
	}
	return n, nil
}

// Delete closes the handle and removes the namespace; its links go with it.
func (n *NetNS) Delete() error {
	_ = n.ns.Close()
	if out, err := exec.Command("ip", "netns", "delete", n.name).CombinedOutput(); err != nil {
		return fmt.Errorf("delete netns %s: %w: %s", n.name, err, trimOut(out))
	}
	return nil
}

// Name is the namespace's name, as `ip netns` shows it.
func (n *NetNS) Name() string { return n.name }

// Path is the namespace's bind-mount path, the CNI_NETNS of a pod.
func (n *NetNS) Path() string { return n.ns.Path() }

// Do runs fn on an OS thread locked into the namespace. Sockets and child
// processes created by fn stay in the namespace after Do returns. fn must
// return its failures rather than call t.Fatal: it runs on another goroutine.
func (n *NetNS) Do(fn func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return fn() })
}

// DialContext opens a connection whose socket lives in the namespace, so a
// test in the host namespace can reach addresses that exist only there.
func (n *NetNS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s in netns %s: %w", network, address, n.name, err)
	}
	return c, nil
}

// Listen opens a stream listener inside the namespace.
func (n *NetNS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, address, n.name, err)
	}
	return l, nil
}

// ListenPacket opens a datagram socket inside the namespace.
func (n *NetNS) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in netns %s: %w", network, address, n.name, err)
	}
	return c, nil
}

// Sysctl sets a sysctl of the namespace; key is the path under /proc/sys
// ("net/ipv4/ip_forward"). Only per-netns keys (net.*) stay inside.
func (n *NetNS) Sysctl(key, value string) error {
	if !strings.HasPrefix(key, "net/") {
		return fmt.Errorf("sysctl %s: not a per-netns key", key)
	}
	// /proc/sys/net resolves against the netns of the thread that opens
	// it, so the write must happen on the locked thread.
	err := n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in netns %s: %w", key, value, n.name, err)
	}
	return nil
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %s up: %w", name, err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	// Since Go 1.24 crypto/rand.Read never returns an error.
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// trimOut trims a command's combined output for an error message.
func trimOut(out []byte) string { return strings.TrimSpace(string(out)) }
