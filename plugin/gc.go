package main

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// cmdGC tells the agent which attachments the runtime still has; the agent
// forgets every other endpoint and removes its programs and pins.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseNetconf(args.StdinData)
	if err != nil {
		return cniError(verbGC, "", err)
	}
	return cniError(verbGC, conf.AgentSocket, gc(context.Background(), conf, args))
}

func gc(ctx context.Context, conf *Conf, args *skel.CmdArgs) error {
	// An absent list is not an empty one: forgetting every endpoint of the
	// node would strip the policy from running pods, so refuse instead.
	if conf.ValidAttachments == nil {
		return &configError{msg: "GC without cni.dev/valid-attachments: palisade forgets no endpoint unless the runtime lists the valid ones"}
	}
	log, closeLog := newLogger(conf, args, "")
	defer closeLog()

	req := &agentapi.GCRequest{Valid: make([]agentapi.Attachment, 0, len(conf.ValidAttachments))}
	for _, a := range conf.ValidAttachments {
		req.Valid = append(req.Valid, agentapi.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	resp, err := agentapi.NewClient(conf.AgentSocket).GC(ctx, req)
	if err != nil {
		return fmt.Errorf("collect stale endpoints (%d valid attachments) with palisade-agent: %w", len(req.Valid), err)
	}
	log.Info("Stale endpoints removed", "removed", resp.Removed)
	return nil
}
