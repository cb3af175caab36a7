package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// cmdAdd registers the pod with the agent, which answers only once the
// pod's policy is in the maps, then attaches the programs to the pod's host
// veth: a pod never runs a moment unprotected, because the runtime starts it
// only after ADD. It then passes prevResult through.
func cmdAdd(args *skel.CmdArgs) error {
	conf, prev, err := parseConfig(args.StdinData)
	if err != nil {
		return cniError(verbAdd, "", err)
	}
	if err := add(context.Background(), conf, prev, args); err != nil {
		return cniError(verbAdd, conf.AgentSocket, err)
	}
	return types.PrintResult(prev, conf.CNIVersion)
}

// add makes one round trip to the agent: registering first lets the answer
// carry where the programs are, so no status call precedes it (each costs
// ~2 ms of the pod's start).
func add(ctx context.Context, conf *Conf, prev *current.Result, args *skel.CmdArgs) error {
	if prev == nil {
		return errChained
	}
	pa, err := parsePodArgs(args.Args)
	if err != nil {
		return err
	}
	log, closeLog := newLogger(conf, args, pa.pod())
	defer closeLog()

	// Each phase's time goes into the log, so that a slow pod start on a
	// node can be split into its parts without rebuilding the plugin.
	start := time.Now()
	hv, err := findHostVeth(args.Netns, args.IfName, prev)
	if err != nil {
		return err
	}
	tVeth := time.Since(start)
	ips, err := containerIPs(prev, args.IfName)
	if err != nil {
		return err
	}
	client := agentapi.NewClient(conf.AgentSocket)
	id := agentapi.EndpointID(args.ContainerID, args.IfName)
	start = time.Now()
	resp, err := client.Add(ctx, &agentapi.AddRequest{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		Netns:        args.Netns,
		PodNamespace: string(pa.K8S_POD_NAMESPACE),
		PodName:      string(pa.K8S_POD_NAME),
		PodUID:       string(pa.K8S_POD_UID),
		HostIfName:   hv.Name,
		HostIfIndex:  hv.Index,
		IPs:          ips,
	})
	if err != nil {
		return fmt.Errorf("register endpoint %s of pod %s with palisade-agent: %w", id, pa.pod(), err)
	}
	tRegister := time.Since(start)
	log.Info("Endpoint registered", "endpoint", id, "revision", resp.Endpoint.Revision)

	if resp.BPFRoot == "" {
		// An agent older than this plugin does not say; its status does.
		st, err := readyStatus(ctx, client)
		if err != nil {
			return errors.Join(err, unregister(ctx, client, id))
		}
		resp.BPFRoot, resp.AttachMode = st.BPFRoot, st.AttachMode
	}
	start = time.Now()
	mode, err := bpf.Attach(resp.BPFRoot, hv.Index, id, bpf.AttachMode(resp.AttachMode))
	if err != nil {
		// No half state: the agent must not keep an endpoint whose programs
		// are missing, nor the interface programs of a failed ADD.
		err = fmt.Errorf("attach programs to host veth %s (ifindex %d): %w", hv.Name, hv.Index, err)
		return errors.Join(err, detach(resp.BPFRoot, hv, id), unregister(ctx, client, id))
	}
	log.Info("Programs attached", "endpoint", id, "ifname", hv.Name, "ifindex", hv.Index, "mode", mode,
		"vethLookup", tVeth, "register", tRegister, "attach", time.Since(start))
	return nil
}

func detach(bpfRoot string, hv hostVeth, id string) error {
	if err := bpf.Detach(bpfRoot, hv.Index, id); err != nil {
		return fmt.Errorf("detach programs from host veth %s after the failed ADD: %w", hv.Name, err)
	}
	return nil
}

func unregister(ctx context.Context, client *agentapi.Client, id string) error {
	if err := client.Delete(ctx, id); err != nil && !errors.Is(err, agentapi.ErrEndpointNotFound) {
		return fmt.Errorf("remove endpoint %s from palisade-agent after the failed ADD: %w", id, err)
	}
	return nil
}

// containerIPs returns the addresses prev assigns to the container interface
// ifName: those whose interface index names it, and those with no index.
func containerIPs(prev *current.Result, ifName string) ([]netip.Addr, error) {
	var ips []netip.Addr
	for _, ipc := range prev.IPs {
		if i := ipc.Interface; i != nil {
			if *i < 0 || *i >= len(prev.Interfaces) ||
				prev.Interfaces[*i].Name != ifName || prev.Interfaces[*i].Sandbox == "" {
				continue
			}
		}
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return nil, &configError{msg: fmt.Sprintf("prevResult has a malformed IP address %q", ipc.Address.String())}
		}
		ips = append(ips, addr.Unmap())
	}
	if len(ips) == 0 {
		return nil, &configError{msg: fmt.Sprintf(
			"prevResult assigns no IP address to %s: chain palisade after the plugin that assigns the pod's IPs", ifName)}
	}
	return ips, nil
}
