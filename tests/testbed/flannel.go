package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
)

// PodNetwork is what connects a node's pods to each other and to the other
// nodes.
type PodNetwork string

const (
	// FlannelVXLAN is real Flannel, as kube-flannel deploys it: flanneld
	// (kube subnet manager, VXLAN backend) on every node, and kube-flannel's
	// own conflist (flannel CNI plugin delegating to bridge and
	// host-local, then portmap) with palisade chained by install-cni. The
	// default.
	FlannelVXLAN PodNetwork = "flannel-vxlan"
	// FlannelHostGW is FlannelVXLAN with flanneld's host-gw backend.
	FlannelHostGW PodNetwork = "flannel-host-gw"
	// BridgeChain is the imitation the testbed ran before Flannel:
	// conf/testbed.conflist (bridge + host-local, portmap, palisade) and
	// host-gw routes the testbed sets itself. It stays for what Flannel's
	// CNI plugin cannot run: cniVersion 1.0.0 and 1.1.0 (STATUS, GC).
	// Dual stack runs on real Flannel (DualStackNode).
	BridgeChain PodNetwork = "bridge"
)

const (
	// flannelConflistPath is kube-flannel's cni-conf.json, byte for byte.
	flannelConflistPath = "conf/10-flannel.conflist"
	// flannelConflistName is the name kube-flannel's install-cni init
	// container copies it to.
	flannelConflistName = "10-flannel.conflist"
	// flannelReadyTimeout bounds the wait for flanneld's subnet.env and
	// for every node's routes to the others.
	flannelReadyTimeout = 60 * time.Second
)

// flannelBackend is the net-conf.json Backend.Type for pn, "" for the
// bridge chain.
func (pn PodNetwork) flannelBackend() string {
	switch pn {
	case FlannelVXLAN:
		return "vxlan"
	case FlannelHostGW:
		return "host-gw"
	}
	return ""
}

// Flannel reports whether pn runs real Flannel.
func (pn PodNetwork) Flannel() bool { return pn.flannelBackend() != "" }

// CNIConfDir is the node's /etc/cni/net.d: where Flannel's conflist is
// written and install-cni chains palisade into it.
func (n *Node) CNIConfDir() string { return filepath.Join(n.dir, "etc", "cni", "net.d") }

// CNIBinDir is the node's /opt/cni/bin, where install-cni puts palisade.
// CNI_PATH lists it first, then the Flannel and upstream plugins.
func (n *Node) CNIBinDir() string { return filepath.Join(n.dir, "opt", "cni", "bin") }

// SubnetEnv is the node's /run/flannel/subnet.env as flanneld wrote it.
func (n *Node) SubnetEnv() string { return filepath.Join(n.dir, "run", "flannel", "subnet.env") }

// StartFlanneld runs flanneld in the node's namespace with the flags and
// environment of kube-flannel's DaemonSet (kube subnet manager, --ip-masq),
// plus --iface=eth0, the testbed's kubeconfig, and the node's own paths
// for net-conf.json and subnet.env. It waits until subnet.env is written.
// Cleanup stops it by PID; its links and rules die with the namespace.
func (n *Node) StartFlanneld(tb TB, backend string) *Process {
	tb.Helper()
	start := time.Now()
	netConfPath := filepath.Join(n.dir, "etc", "kube-flannel", "net-conf.json")
	netConf := map[string]any{
		"Network": ClusterCIDR.String(),
		"Backend": map[string]string{"Type": backend},
	}
	if n.DualStack {
		// kube-flannel's dual-stack net-conf.json: flanneld then reads
		// the node's IPv6 pod CIDR from spec.podCIDRs, tunnels IPv6 over
		// the node's IPv6 address, and writes FLANNEL_IPV6_NETWORK and
		// FLANNEL_IPV6_SUBNET to subnet.env.
		netConf["EnableIPv6"] = true
		netConf["IPv6Network"] = ClusterCIDR6.String()
	}
	conf, err := json.Marshal(netConf)
	if err != nil {
		tb.Fatalf("flanneld on node %s: encode net-conf.json: %v", n.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(netConfPath), 0o755); err != nil {
		tb.Fatalf("flanneld on node %s: %v", n.Name, err)
	}
	writeFile(tb, netConfPath, string(conf), 0o644)
	p := NewProcess(tb, n.NetNS, "flanneld-"+n.Name, filepath.Join(FlannelBinDir(tb), "flanneld"),
		"--kube-subnet-mgr",
		"--kubeconfig-file="+n.cp.kubeconfig,
		"--ip-masq",
		"--iface="+nodeUplink,
		"--net-config-path="+netConfPath,
		"--subnet-file="+n.SubnetEnv(),
	)
	p.Setenv("NODE_NAME="+n.Name, "POD_NAME=kube-flannel-ds-"+n.Name, "POD_NAMESPACE=kube-flannel")
	if err := p.Start(); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), flannelReadyTimeout)
	defer cancel()
	if err := waitFile(ctx, n.SubnetEnv(), p); err != nil {
		tb.Fatalf("flanneld on node %s: %v\n%s", n.Name, err, p.LogTail(logTailLines))
	}
	tb.Logf("flanneld (%s) on node %s up in %v", backend, n.Name, time.Since(start).Round(time.Millisecond))
	return p
}

// waitFile polls until path exists, p exits, or ctx ends.
func waitFile(ctx context.Context, path string, p *Process) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("exited (%v) before writing %s", p.ExitErr(), path)
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitFlannelRoutes waits until every node routes every other node's pod
// CIDR (both, between dual-stack nodes), which flanneld adds once it has
// seen the other node's annotations.
func waitFlannelRoutes(ctx context.Context, nodes []*Node) error {
	for _, n := range nodes {
		for _, m := range nodes {
			if m == n {
				continue
			}
			if err := n.waitRoute(ctx, m.PodCIDR); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
			if !n.DualStack || !m.DualStack {
				continue
			}
			if err := n.waitRoute(ctx, m.PodCIDR6()); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

func (n *Node) waitRoute(ctx context.Context, dst netip.Prefix) error {
	want := prefixNet(dst)
	family := netlink.FAMILY_V4
	if dst.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	for {
		var found bool
		err := n.Do(func() error {
			routes, err := netlink.RouteListFiltered(family, &netlink.Route{Dst: want}, netlink.RT_FILTER_DST)
			found = len(routes) > 0
			return err
		})
		if err != nil {
			return fmt.Errorf("list routes to %s: %w", dst, err)
		}
		if found {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for flanneld's route to %s: %w", dst, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WriteFlannelConflist copies kube-flannel's conflist into the node's CNI
// configuration directory, as kube-flannel's install-cni init container
// does (`cp -f`).
func (n *Node) WriteFlannelConflist(tb TB) {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(ModuleRoot(tb), flannelConflistPath))
	if err != nil {
		tb.Fatalf("read Flannel's conflist: %v", err)
	}
	if err := os.MkdirAll(n.CNIConfDir(), 0o755); err != nil {
		tb.Fatalf("node %s: create CNI conf dir: %v", n.Name, err)
	}
	writeFile(tb, filepath.Join(n.CNIConfDir(), flannelConflistName), string(raw), 0o644)
}

// InstallCNI runs `palisade-agent install-cni` for the node with the
// DaemonSet init container's flags (conf/kubernetes/palisade.yaml), the
// node's directories standing for the host's /opt/cni/bin and
// /etc/cni/net.d, and the plugin the testbed built as --plugin-src (the
// image's copy in the DaemonSet). It returns the installer's output.
func (n *Node) InstallCNI(tb TB, extra ...string) string {
	tb.Helper()
	b := Binaries(tb)
	args := append([]string{"install-cni",
		"--cni-bin-dir=" + n.CNIBinDir(),
		"--cni-conf-dir=" + n.CNIConfDir(),
		"--wait=10m",
		"--plugin-src=" + b.Plugin(tb),
	}, extra...)
	return n.runAgentCommand(tb, args...)
}

func (n *Node) runAgentCommand(tb TB, args ...string) string {
	tb.Helper()
	// The first call of a test process builds the agent: that build (tens
	// of seconds on a loaded machine) must not eat the command's own
	// time, or install-cni fails with "context deadline exceeded" before
	// it has started.
	bin := Binaries(tb).Agent(tb)
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("node %s: palisade-agent %s: %v\n%s", n.Name, args[0], err, out)
	}
	return string(out)
}

// flannelCNI is the chain a Flannel node runs: the file the kubelet's
// runtime would pick in the node's CNI configuration directory (the first
// in lexical order, as libcni lists them), read from disk. Without
// palisade (o.last == "") the palisade entry is left out, and the no-op
// plugin can take its place, as for the bridge chain.
func (n *Node) flannelCNI(tb TB, o cniOptions) (*libcni.CNIConfig, *libcni.NetworkConfigList) {
	tb.Helper()
	if o.cniVersion != "" {
		tb.Fatalf("node %s: Flannel's CNI plugin speaks CNI up to 0.4.0: use the %s network for cniVersion", n.Name, BridgeChain)
	}
	if o.dualStack && !n.DualStack {
		// The flannel CNI plugin takes the families from subnet.env,
		// that is from flanneld's net-conf.json, not from the pod.
		tb.Fatalf("node %s: a Flannel pod is dual-stack when its node is (DualStackNode)", n.Name)
	}
	b := Binaries(tb)
	if o.last == "palisade" {
		b.Plugin(tb)
	}
	list, err := n.loadFlannelConflist(o)
	if err == nil {
		list, err = setPluginLog(list, o)
	}
	if err != nil {
		tb.Fatalf("node %s: %v", n.Name, err)
	}
	return n.flannelCNIConfig(tb), list
}

// runtimeChain is what a runtime would run on the node right now: the
// first file of its conf dir, whatever it holds, read from disk with libcni.
func (n *Node) runtimeChain(tb TB) (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	list, _, err := n.confDirChain()
	if err != nil {
		return nil, nil, err
	}
	return n.flannelCNIConfig(tb), list, nil
}

func (n *Node) flannelCNIConfig(tb TB) *libcni.CNIConfig {
	path := []string{n.CNIBinDir(), FlannelBinDir(tb), Binaries(tb).Dir}
	return libcni.NewCNIConfigWithCacheDir(path, n.CNICacheDir(), nil)
}

// CNICacheDir is where libcni, standing in for the runtime, caches the
// node's results: its /var/lib/cni, as containerd's and CRI-O's.
func (n *Node) CNICacheDir() string { return filepath.Join(n.dir, "var", "lib", "cni") }

// confDirChain loads the first file of the conf dir in lexical order, as
// libcni lists them for a runtime, and returns its path.
func (n *Node) confDirChain() (*libcni.NetworkConfigList, string, error) {
	files, err := libcni.ConfFiles(n.CNIConfDir(), []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, "", fmt.Errorf("list CNI conf dir: %w", err)
	}
	if len(files) == 0 {
		return nil, "", fmt.Errorf("no CNI configuration in %s", n.CNIConfDir())
	}
	sort.Strings(files)
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		return nil, "", fmt.Errorf("load %s: %w", files[0], err)
	}
	return list, files[0], nil
}

func (n *Node) loadFlannelConflist(o cniOptions) (*libcni.NetworkConfigList, error) {
	list, file, err := n.confDirChain()
	if err != nil {
		return nil, err
	}
	installed := len(list.Plugins) > 0 && list.Plugins[len(list.Plugins)-1].Network.Type == "palisade"
	switch {
	case o.last == "palisade" && !installed:
		return nil, fmt.Errorf("%s does not end with palisade: install-cni has not run", file)
	case o.last == "palisade", o.last == "" && !installed:
		return list, nil
	}
	return replaceLast(list, installed, o.last)
}

// replaceLast drops the palisade entry, if there is one, and appends the
// plugin named last ("" for none) with its configuration.
func replaceLast(list *libcni.NetworkConfigList, installed bool, last string) (*libcni.NetworkConfigList, error) {
	var conf map[string]any
	if err := json.Unmarshal(list.Bytes, &conf); err != nil {
		return nil, fmt.Errorf("parse conflist: %w", err)
	}
	plugins, _ := conf["plugins"].([]any)
	if installed {
		plugins = plugins[:len(plugins)-1]
	}
	if entry := lastPluginEntry(last, ""); entry != nil {
		plugins = append(plugins, entry)
	}
	conf["plugins"] = plugins
	out, err := json.Marshal(conf)
	if err != nil {
		return nil, fmt.Errorf("encode conflist: %w", err)
	}
	return libcni.NetworkConfFromBytes(out)
}

// lastPluginEntry is the conflist entry for the plugin in palisade's place:
// none, upstream's no-op sample, or palisade talking to socket ("" leaves
// the plugin's default).
func lastPluginEntry(last, socket string) map[string]any {
	switch last {
	case "":
		return nil
	case "sample":
		// sample refuses to run without this argument.
		return map[string]any{"type": "sample", "anotherAwesomeArg": "noop"}
	}
	entry := map[string]any{"type": "palisade"}
	if socket != "" {
		entry["agentSocket"] = socket
	}
	return entry
}

// StartFlannel brings Flannel up on nodes (all on the same Flannel
// network), as kube-flannel's DaemonSet would: flanneld everywhere, then,
// once every node routes to every other, kube-flannel's conflist in each
// node's CNI directory and, when install is set, install-cni on it. It
// returns the flanneld processes by node.
func StartFlannel(tb TB, nodes []*Node, install bool) []*Process {
	tb.Helper()
	procs := make([]*Process, len(nodes))
	errs := make([]error, len(nodes))
	FlannelBinDir(tb) // built once before the parallel starts
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			errs[i] = collectFatal(tb, func(tb TB) { procs[i] = n.StartFlanneld(tb, n.Network.flannelBackend()) })
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), flannelReadyTimeout)
	defer cancel()
	if err := waitFlannelRoutes(ctx, nodes); err != nil {
		tb.Fatalf("flannel: %v", err)
	}
	for _, n := range nodes {
		n.WriteFlannelConflist(tb)
		if install {
			n.InstallCNI(tb)
		}
	}
	return procs
}
