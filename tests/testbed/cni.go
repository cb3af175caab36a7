package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// conflistPath is the bridge chain (BridgeChain), relative to the module
// root: Flannel's bridge delegate settings, then portmap, then palisade.
const conflistPath = "conf/testbed.conflist"

// CNIOption changes the conflist a node runs for a pod or a node-wide verb.
type CNIOption func(*cniOptions)

type cniOptions struct {
	// last is the plugin in palisade's place at the end of the chain:
	// "palisade", "sample" (a no-op) or "" (none).
	last       string
	cniVersion string
	dualStack  bool
	// ips are the addresses the pod asks host-local for (CNI_ARGS IP=,
	// one per family at most).
	ips []netip.Addr
	// pluginLog, if set, is palisade's logFile, at level info.
	pluginLog string
}

// WithoutPalisade drops the palisade entry: the baseline pod network, with no
// policy enforced and no agent needed.
func WithoutPalisade() CNIOption { return func(o *cniOptions) { o.last = "" } }

// WithNoopInsteadOfPalisade puts upstream's chained example plugin, which
// passes prevResult through and does nothing else, where palisade was: the
// cost of one more Go plugin in the chain, the floor under Palisade's own.
func WithNoopInsteadOfPalisade() CNIOption {
	return func(o *cniOptions) { o.last = "sample" }
}

// WithCNIVersion rewrites the conflist's cniVersion; STATUS and GC need 1.1.0.
func WithCNIVersion(v string) CNIOption { return func(o *cniOptions) { o.cniVersion = v } }

// WithIP asks for a fixed pod address, as a runtime does with CNI_ARGS
// "IP=" (host-local honours it: the address must lie in the node's range
// and be free). ADD fails if the chain gives the pod another address, so a
// fixed IP plan is never shifted silently. host-local reads one address
// from CNI_ARGS (two, one per family, need the "ips" capability, which
// kube-flannel's conflist does not declare), so ADD refuses "IP=a,b".
func WithIP(ip netip.Addr) CNIOption { return func(o *cniOptions) { o.ips = append(o.ips, ip) } }

// WithPluginLog has palisade log at level info to path: its ADD records
// the time of each phase ("Programs attached", vethLookup=…), which the
// benchmark reads.
func WithPluginLog(path string) CNIOption { return func(o *cniOptions) { o.pluginLog = path } }

// setPluginLog points the palisade entry at the end of list at o.pluginLog.
func setPluginLog(list *libcni.NetworkConfigList, o cniOptions) (*libcni.NetworkConfigList, error) {
	if o.pluginLog == "" || o.last != "palisade" {
		return list, nil
	}
	var conf map[string]any
	if err := json.Unmarshal(list.Bytes, &conf); err != nil {
		return nil, fmt.Errorf("parse conflist: %w", err)
	}
	plugins, _ := conf["plugins"].([]any)
	if len(plugins) == 0 {
		return nil, fmt.Errorf("conflist %s has no plugins", list.Name)
	}
	last, ok := plugins[len(plugins)-1].(map[string]any)
	if !ok || last["type"] != "palisade" {
		return nil, fmt.Errorf("conflist %s does not end with palisade", list.Name)
	}
	last["logFile"], last["logLevel"] = o.pluginLog, "info"
	out, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	list, err = libcni.NetworkConfFromBytes(out)
	if err != nil {
		return nil, fmt.Errorf("reload conflist with the plugin log: %w", err)
	}
	return list, nil
}

func buildCNIOptions(opts []CNIOption) cniOptions {
	o := cniOptions{last: "palisade"}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// cni returns the libcni handle for the node, with the plugins' directory as
// CNI_PATH and a cache of the node's own (libcni keeps ADD results there for
// CHECK and DEL, as a runtime does).
func (n *Node) cni(tb TB, o cniOptions) (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	tb.Helper()
	if n.Network.Flannel() {
		return n.flannelCNI(tb, o)
	}
	b := Binaries(tb)
	if o.last == "palisade" {
		b.Plugin(tb)
	}
	list, err := n.conflist(o)
	if err == nil {
		list, err = setPluginLog(list, o)
	}
	if err != nil {
		tb.Fatalf("node %s: %v", n.Name, err)
	}
	return libcni.NewCNIConfigWithCacheDir([]string{b.Dir}, n.CNICacheDir(), nil), list
}

// conflist loads conf/testbed.conflist and points it at this node: the
// bridge's IPAM range becomes the node's pod CIDR with its allocations in a
// directory of the node's, and palisade talks to the node's agent socket.
func (n *Node) conflist(o cniOptions) (*libcni.NetworkConfigList, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(root, conflistPath)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read conflist: %w", err)
	}
	var conf map[string]any
	if err := json.Unmarshal(raw, &conf); err != nil {
		return nil, fmt.Errorf("parse conflist %s: %w", path, err)
	}
	if o.cniVersion != "" {
		conf["cniVersion"] = o.cniVersion
	}
	plugins, _ := conf["plugins"].([]any)
	var kept []any
	var sawBridge, sawPalisade bool
	for _, p := range plugins {
		plugin, ok := p.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("conflist %s: plugin entry is %T, not an object", path, p)
		}
		switch plugin["type"] {
		case "bridge":
			sawBridge = true
			ipam, ok := plugin["ipam"].(map[string]any)
			if !ok {
				return nil, fmt.Errorf("conflist %s: bridge has no ipam object", path)
			}
			ipam["ranges"] = []any{[]any{map[string]any{"subnet": n.PodCIDR.String()}}}
			if o.dualStack || n.DualStack {
				ipam["ranges"] = append(ipam["ranges"].([]any), []any{map[string]any{"subnet": n.PodCIDR6().String()}})
				ipam["routes"] = append(ipam["routes"].([]any), map[string]any{"dst": ClusterCIDR6.String()})
			}
			ipam["dataDir"] = filepath.Join(n.dir, "ipam")
		case "palisade":
			sawPalisade = true
			if plugin = lastPluginEntry(o.last, n.AgentSocket()); plugin == nil {
				continue
			}
		}
		kept = append(kept, plugin)
	}
	if !sawBridge {
		return nil, fmt.Errorf("conflist %s: no bridge plugin to point at the node's pod CIDR", path)
	}
	if o.last != "" && !sawPalisade {
		return nil, fmt.Errorf("conflist %s: no palisade plugin", path)
	}
	conf["plugins"] = kept
	out, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	list, err := libcni.NetworkConfFromBytes(out)
	if err != nil {
		return nil, fmt.Errorf("load conflist %s: %w", path, err)
	}
	return list, nil
}

// CNIStatus runs the chain's STATUS verb inside the node (cniVersion 1.1.0
// and later; libcni skips it for older versions).
func (n *Node) CNIStatus(tb TB, ctx context.Context, opts ...CNIOption) error {
	tb.Helper()
	c, list := n.cni(tb, buildCNIOptions(opts))
	return n.doCNI(func() error { return c.GetStatusNetworkList(ctx, list) })
}

// CNIGC runs the chain's GC verb inside the node, naming valid as the
// attachments the runtime still has (cniVersion 1.1.0 and later).
func (n *Node) CNIGC(tb TB, ctx context.Context, valid []*Pod, opts ...CNIOption) error {
	tb.Helper()
	c, list := n.cni(tb, buildCNIOptions(opts))
	// Never nil: a runtime always names the valid attachments, and an
	// absent list is what GC implementations refuse to act on.
	args := &libcni.GCArgs{ValidAttachments: make([]types.GCAttachment, 0, len(valid))}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: PodIfName})
	}
	return n.doCNI(func() error { return c.GCNetworkList(ctx, list, args) })
}
