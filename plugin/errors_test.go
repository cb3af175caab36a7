package main

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

func TestCNIError(t *testing.T) {
	const sock = "/run/palisade/agent.sock"
	down := fmt.Errorf("ask palisade-agent for its status: %w: GET /v1/status on %s: connection refused", agentapi.ErrAgentUnavailable, sock)
	tests := []struct {
		name     string
		verb     verb
		err      error
		wantCode uint
		wantMsg  []string
	}{
		{"config errors are code 7 with what to change", verbAdd, errChained, types.ErrInvalidNetworkConfig, []string{`add {"type":"palisade"} after flannel`}},
		{"wrapped config errors are still code 7", verbAdd, fmt.Errorf("look up eth0: %w", &configError{msg: "palisade needs a veth"}), types.ErrInvalidNetworkConfig, []string{"palisade needs a veth"}},
		{"agent down at ADD names the socket and the DaemonSet, and the runtime retries", verbAdd, down, types.ErrTryAgainLater, []string{sock, "palisade-agent DaemonSet"}},
		{"agent down at CHECK is try again later", verbCheck, down, types.ErrTryAgainLater, []string{sock}},
		{"agent down at STATUS is plugin not available", verbStatus, down, types.ErrPluginNotAvailable, []string{sock}},
		{"agent not ready at ADD gives its reason", verbAdd, &notReadyError{reason: "caches syncing"}, types.ErrTryAgainLater, []string{"caches syncing"}},
		{"agent not ready at STATUS is plugin not available", verbStatus, &notReadyError{reason: "caches syncing"}, types.ErrPluginNotAvailable, []string{"caches syncing"}},
		{"agent answering NotReady at ADD is try again later", verbAdd, &agentapi.Error{Code: agentapi.CodeNotReady, Message: "datapath loading"}, types.ErrTryAgainLater, []string{"datapath loading"}},
		{"unknown endpoint at CHECK is unknown container", verbCheck, fmt.Errorf("get: %w: %w", agentapi.ErrEndpointNotFound, &agentapi.Error{Code: agentapi.CodeNotFound}), types.ErrUnknownContainer, []string{sock}},
		{"agent timeout programming policy is try again later", verbAdd, &agentapi.Error{Code: agentapi.CodeTimeout}, types.ErrTryAgainLater, []string{"could not program"}},
		{"agent internal error is internal", verbAdd, &agentapi.Error{Code: agentapi.CodeInternal}, types.ErrInternal, []string{"refused the request"}},
		{"a gone netns is invalid netns", verbCheck, fmt.Errorf("look up eth0: %w", ns.NSPathNotExistErr{}), types.ErrInvalidNetNS, []string{"network namespace is gone"}},
		{"anything else is internal with the error as message", verbCheck, errors.New("check programs on host veth veth1: not attached"), types.ErrInternal, []string{"check programs on host veth veth1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCNIError(t, cniError(tt.verb, sock, tt.err), tt.wantCode, tt.wantMsg...)
		})
	}
	t.Run("no error is no error", func(t *testing.T) {
		if err := cniError(verbAdd, sock, nil); err != nil {
			t.Errorf("cniError(nil) = %v", err)
		}
	})
}
