package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// cmdDel forgets the endpoint. The agent, which owns every kernel object,
// detaches the programs and removes the pins. prevResult is optional on DEL.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseNetconf(args.StdinData)
	if err != nil {
		return cniError(verbDel, "", err)
	}
	return cniError(verbDel, conf.AgentSocket, del(context.Background(), conf, args))
}

// del is idempotent, as the spec requires of DEL: an endpoint the agent does
// not know is already deleted, and when the agent is down DEL succeeds
// anyway, logging what it skipped, because the agent's reconcile drops
// endpoints whose host veth is gone within seconds of its return (and a
// 1.1.0 runtime's GC too), while a failing DEL would only wedge the
// runtime's teardown. Every other error fails DEL so the runtime retries.
func del(ctx context.Context, conf *Conf, args *skel.CmdArgs) error {
	log, closeLog := newLogger(conf, args, podOf(args.Args))
	defer closeLog()

	id := agentapi.EndpointID(args.ContainerID, args.IfName)
	err := agentapi.NewClient(conf.AgentSocket).Delete(ctx, id)
	switch {
	case err == nil:
		log.Info("Endpoint deleted", "endpoint", id)
		return nil
	case errors.Is(err, agentapi.ErrEndpointNotFound):
		log.Info("Endpoint already gone", "endpoint", id)
		return nil
	case errors.Is(err, agentapi.ErrAgentUnavailable):
		log.Warn("Agent unavailable, endpoint left for the agent's reconcile or next GC",
			"endpoint", id, "agentSocket", conf.AgentSocket, "error", err)
		return nil
	}
	return fmt.Errorf("delete endpoint %s from palisade-agent: %w", id, err)
}
