package main

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// cmdStatus reports whether the plugin can serve ADD: the agent must answer
// and be ready. Both failures are code 50, "plugin not available".
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseNetconf(args.StdinData)
	if err != nil {
		return cniError(verbStatus, "", err)
	}
	_, err = readyStatus(context.Background(), agentapi.NewClient(conf.AgentSocket))
	return cniError(verbStatus, conf.AgentSocket, err)
}

// readyStatus returns the agent's status, or an error if it does not answer
// or is not ready.
func readyStatus(ctx context.Context, c *agentapi.Client) (*agentapi.Status, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("ask palisade-agent for its status: %w", err)
	}
	if !st.Ready {
		reason := st.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return nil, &notReadyError{reason: reason}
	}
	return st, nil
}
