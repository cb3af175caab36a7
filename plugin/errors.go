package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// verb is a CNI command. The same failure maps to a different CNI error code
// per verb: an unreachable agent is "try again later" for ADD and CHECK but
// "plugin not available" for STATUS.
type verb string

const (
	verbAdd    verb = "ADD"
	verbCheck  verb = "CHECK"
	verbDel    verb = "DEL"
	verbGC     verb = "GC"
	verbStatus verb = "STATUS"
)

// configError is bad input from the runtime (netconf, prevResult, CNI_ARGS)
// or a chain palisade cannot work in. msg says what to change.
type configError struct {
	msg string
	err error // underlying cause; may be nil
}

func (e *configError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *configError) Unwrap() error { return e.err }

// notReadyError means the agent answered but refuses work until its
// datapath is loaded and its Kubernetes caches have synced.
type notReadyError struct{ reason string }

func (e *notReadyError) Error() string { return "palisade-agent is not ready: " + e.reason }

// errChained is the answer to an ADD or CHECK without prevResult.
var errChained = &configError{msg: `palisade must be chained after the main plugin: add {"type":"palisade"} after flannel and portmap in the conflist`}

// cniError turns err into the *types.Error the runtime sees, with a code,
// a message saying what failed and what to do, and the underlying error text
// as details. socket is the agent socket from the netconf ("" before it was
// parsed). This is the only place CNI error codes are chosen.
func cniError(v verb, socket string, err error) error {
	if err == nil {
		return nil
	}
	// Agent down or starting: the runtime retries ADD and CHECK (code 11);
	// STATUS says the plugin cannot serve ADD yet (code 50).
	transient := types.ErrTryAgainLater
	if v == verbStatus {
		transient = types.ErrPluginNotAvailable
	}
	var (
		cfgErr *configError
		apiErr *agentapi.Error
		nrErr  *notReadyError
		nsErr  ns.NSPathNotExistErr
	)
	switch {
	case errors.As(err, &cfgErr):
		details := ""
		if cfgErr.err != nil {
			details = cfgErr.err.Error()
		}
		return types.NewError(types.ErrInvalidNetworkConfig, cfgErr.msg, details)
	case errors.Is(err, agentapi.ErrAgentUnavailable):
		return types.NewError(transient, fmt.Sprintf(
			"palisade-agent is not answering on %s: check the palisade-agent DaemonSet pod on this node",
			socket), err.Error())
	case errors.As(err, &nrErr):
		return types.NewError(transient, fmt.Sprintf(
			"palisade-agent on %s is not ready: %s", socket, nrErr.reason), err.Error())
	case errors.Is(err, agentapi.ErrEndpointNotFound):
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf(
			"palisade-agent on %s has no endpoint for this container: recreate the pod", socket), err.Error())
	case errors.As(err, &apiErr):
		switch apiErr.Code {
		case agentapi.CodeNotReady:
			return types.NewError(transient, fmt.Sprintf(
				"palisade-agent on %s is not ready: %s", socket, apiErr.Message), err.Error())
		case agentapi.CodeTimeout, agentapi.CodePodUnknown:
			return types.NewError(transient, fmt.Sprintf(
				"palisade-agent on %s could not program the pod's policy yet; the runtime retries", socket), err.Error())
		}
		return types.NewError(types.ErrInternal, fmt.Sprintf(
			"palisade-agent on %s refused the request: see the agent's log", socket), err.Error())
	case errors.As(err, &nsErr):
		return types.NewError(types.ErrInvalidNetNS, "the pod's network namespace is gone", err.Error())
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}
