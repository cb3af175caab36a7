// Package adopt brings pods that were running before Palisade under its
// policy, without restarting them: at start the agent reads the container
// runtime's CNI result cache, matches each cached attachment with a Pod of
// this node, finds the pod's host-side veth, registers the endpoint (marked
// Adopted), waits until its policy is in the maps, and only then attaches
// the programs.
//
// Why the CNI cache rather than the node's routes, neighbours or bridge FDB:
// libcni (containerd, CRI-O) writes every ADD's result to
// <cache>/results/<network>-<containerID>-<ifName>, with the pod's CNI_ARGS.
// It names the exact container ID and interface, so the adopted endpoint has
// the ID that the runtime's later DEL, CHECK and GC use; it names the
// host-side veth the main plugin created, so no netns is entered and no
// neighbour entry has to exist (an idle pod has none, and FDB entries
// age out). Routes alone find the veth only for ptp-style networks; on a
// bridge every pod is behind cni0.
//
// It never imports the controller or the server: the agent passes what to
// call.
package adopt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/endpoint"
)

// Timeout bounds adoption at start; the agent reports ready only after it,
// so it must stay well below a DaemonSet's readiness patience.
const Timeout = 30 * time.Second

// Config wires an adoption run.
type Config struct {
	Log      *slog.Logger
	NodeName string
	CacheDir string
	// Endpoints registers, programs and attaches what adoption finds.
	Endpoints *endpoint.Manager
	Pods      corelisters.PodLister
	// LinkByName finds a host interface; nil means netlink in the agent's
	// own namespace (the node's).
	LinkByName func(name string) (netlink.Link, error)
}

// cached is the part of a libcni cache entry (libcni's cachedInfo,
// kind cniCacheV1) that adoption reads.
type cached struct {
	Kind        string          `json:"kind"`
	ContainerID string          `json:"containerId"`
	IfName      string          `json:"ifName"`
	NetworkName string          `json:"networkName"`
	NetNS       string          `json:"netns"`
	CNIArgs     [][2]string     `json:"cniArgs"`
	Result      json.RawMessage `json:"result"`
}

// candidate is an attachment to adopt, before its veth is looked up.
type candidate struct {
	ep agentapi.Endpoint
	// hostIfs are the result's interfaces outside the sandbox, one of
	// which is the pod's veth (bridge results also list the bridge).
	hostIfs []string
}

// Run adopts every pod it can and returns the endpoints it adopted. A pod
// it cannot adopt is logged with the reason and skipped: it keeps running
// as before, and is protected from its next sandbox on.
func Run(ctx context.Context, cfg Config) ([]agentapi.Endpoint, error) {
	if cfg.LinkByName == nil {
		cfg.LinkByName = netlink.LinkByName
	}
	entries, err := readCache(cfg.CacheDir)
	if err != nil {
		return nil, err
	}
	cands, skipped := match(entries, cfg.Pods, cfg.NodeName, cfg.Endpoints)
	for _, s := range skipped {
		cfg.Log.Debug("CNI cache entry not adopted", "entry", s.entry, "reason", s.reason)
	}
	var ready []agentapi.Endpoint
	for _, c := range cands {
		name, index, err := hostVeth(cfg.LinkByName, c.hostIfs)
		if err != nil {
			cfg.Log.Warn("Pod not adopted; it stays unprotected until its next sandbox",
				"endpoint", c.ep.ID, "pod", c.ep.PodNamespace+"/"+c.ep.PodName, "error", err)
			continue
		}
		c.ep.HostIfName, c.ep.HostIfIndex = name, index
		ready = append(ready, c.ep)
	}
	if len(ready) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	return cfg.Endpoints.Adopt(ctx, ready)
}

// readCache reads every result entry under dir/results; a missing directory
// means no runtime has cached anything (or the cache is elsewhere).
func readCache(dir string) (map[string]cached, error) {
	files, err := filepath.Glob(filepath.Join(dir, "results", "*"))
	if err != nil {
		return nil, fmt.Errorf("list CNI cache %s: %w", dir, err)
	}
	out := map[string]cached{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CNI cache entry: %w", err)
		}
		var c cached
		if err := json.Unmarshal(data, &c); err != nil || c.Kind != "cniCacheV1" {
			// Not libcni's format: not ours to judge, and not adoptable.
			continue
		}
		out[filepath.Base(f)] = c
	}
	return out, nil
}

type skip struct{ entry, reason string }

// match turns cache entries into candidates: an attachment of a live,
// non-host-network Pod of this node, whose status IPs are the cached
// result's, and that the registry does not know yet.
func match(entries map[string]cached, pods corelisters.PodLister, node string, reg *endpoint.Manager) ([]candidate, []skip) {
	var cands []candidate
	var skipped []skip
	names := make([]string, 0, len(entries))
	for name := range entries {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		c := entries[name]
		cand, reason := matchOne(c, pods, node, reg)
		if reason != "" {
			skipped = append(skipped, skip{name, reason})
			continue
		}
		cands = append(cands, cand)
	}
	return cands, skipped
}

func matchOne(c cached, pods corelisters.PodLister, node string, reg *endpoint.Manager) (candidate, string) {
	args := map[string]string{}
	for _, kv := range c.CNIArgs {
		args[kv[0]] = kv[1]
	}
	ns, name, uid := args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"], args["K8S_POD_UID"]
	if ns == "" || name == "" || c.ContainerID == "" || c.IfName == "" {
		return candidate{}, "no Kubernetes pod in CNI_ARGS"
	}
	id := agentapi.EndpointID(c.ContainerID, c.IfName)
	if _, ok := reg.Get(id); ok {
		return candidate{}, "already registered"
	}
	pod, err := pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return candidate{}, "pod gone"
	}
	if err != nil {
		return candidate{}, "pod lookup: " + err.Error()
	}
	switch {
	case pod.Spec.NodeName != node:
		return candidate{}, "pod of another node"
	case uid != "" && string(pod.UID) != uid:
		return candidate{}, "entry of an earlier pod of the same name"
	case pod.Spec.HostNetwork:
		return candidate{}, "host-network pod"
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return candidate{}, "pod finished"
	}
	res, err := parseResult(c.Result)
	if err != nil {
		return candidate{}, err.Error()
	}
	var ips []netip.Addr
	for _, ipc := range res.IPs {
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, ip.Unmap())
		}
	}
	var podIPs []netip.Addr
	for _, pip := range pod.Status.PodIPs {
		if ip, err := netip.ParseAddr(pip.IP); err == nil {
			podIPs = append(podIPs, ip)
		}
	}
	// An entry whose DEL never ran (a crashed runtime) can outlive its
	// sandbox; the pod's status names the sandbox that is current.
	if len(podIPs) == 0 {
		return candidate{}, "pod has no IPs in its status yet"
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	slices.SortFunc(podIPs, netip.Addr.Compare)
	if !slices.Equal(ips, podIPs) {
		return candidate{}, fmt.Sprintf("cached IPs %v are not the pod's %v (stale sandbox)", ips, podIPs)
	}
	if err := bpf.CheckEndpointAddrs(ips); err != nil {
		return candidate{}, err.Error()
	}
	var hostIfs []string
	for _, itf := range res.Interfaces {
		if itf.Sandbox == "" && itf.Name != "" {
			hostIfs = append(hostIfs, itf.Name)
		}
	}
	if len(hostIfs) == 0 {
		return candidate{}, "the main plugin's result names no host-side interface"
	}
	return candidate{
		ep: agentapi.Endpoint{
			ID: id, ContainerID: c.ContainerID, IfName: c.IfName, Netns: c.NetNS,
			PodNamespace: ns, PodName: name, PodUID: string(pod.UID), IPs: ips, Adopted: true,
		},
		hostIfs: hostIfs,
	}, ""
}

// parseResult converts a cached result of any CNI version to the current one.
func parseResult(raw json.RawMessage) (*current.Result, error) {
	if len(raw) == 0 {
		return nil, errors.New("no cached result")
	}
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("decode cached result: %w", err)
	}
	r, err := version.NewResult(v.CNIVersion, raw)
	if err != nil {
		return nil, fmt.Errorf("decode cached result: %w", err)
	}
	return resultCurrent(r)
}

func resultCurrent(r types.Result) (*current.Result, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("convert cached result: %w", err)
	}
	return res, nil
}

// hostVeth picks, among a result's host-side interfaces, the veth (a bridge
// result also lists the bridge itself).
func hostVeth(linkByName func(string) (netlink.Link, error), names []string) (string, int, error) {
	for _, name := range names {
		l, err := linkByName(name)
		if err != nil {
			continue
		}
		if _, ok := l.(*netlink.Veth); ok {
			return name, l.Attrs().Index, nil
		}
	}
	return "", 0, fmt.Errorf("none of the result's host interfaces %v is a veth on this node", names)
}
