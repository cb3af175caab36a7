package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// cmdCheck verifies that the agent knows the endpoint with prevResult's IPs
// on this veth, that its policy is current, and that the programs are
// attached to the host veth.
func cmdCheck(args *skel.CmdArgs) error {
	conf, prev, err := parseConfig(args.StdinData)
	if err != nil {
		return cniError(verbCheck, "", err)
	}
	return cniError(verbCheck, conf.AgentSocket, check(context.Background(), conf, prev, args))
}

func check(ctx context.Context, conf *Conf, prev *current.Result, args *skel.CmdArgs) error {
	if prev == nil {
		return errChained
	}
	id := agentapi.EndpointID(args.ContainerID, args.IfName)
	ep, err := agentapi.NewClient(conf.AgentSocket).Get(ctx, id)
	if err != nil {
		return fmt.Errorf("get endpoint %s from palisade-agent: %w", id, err)
	}
	if !ep.Current {
		return fmt.Errorf("endpoint %s enforces policy revision %d, and a newer one is not programmed yet", id, ep.Revision)
	}
	want, err := containerIPs(prev, args.IfName)
	if err != nil {
		return err
	}
	got := slices.SortedFunc(slices.Values(ep.IPs), netip.Addr.Compare)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		return fmt.Errorf("endpoint %s has IPs %v in palisade-agent, but prevResult assigns %v to %s", id, got, want, args.IfName)
	}

	hv, err := findHostVeth(args.Netns, args.IfName, prev)
	if err != nil {
		return err
	}
	if ep.HostIfIndex != hv.Index {
		return fmt.Errorf("endpoint %s is registered on ifindex %d, but the host veth of %s is %s (ifindex %d)",
			id, ep.HostIfIndex, args.IfName, hv.Name, hv.Index)
	}
	if err := bpf.Attached(hv.Index); err != nil {
		return fmt.Errorf("check programs on host veth %s: %w", hv.Name, err)
	}
	return nil
}
