package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// Conf is palisade's entry in the conflist.
type Conf struct {
	types.PluginConf
	// AgentSocket is the unix socket palisade-agent listens on.
	AgentSocket string `json:"agentSocket,omitempty"`
	// LogFile receives the plugin's log; stderr when empty.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel,omitempty"`

	level slog.Level
}

// defaultLogLevel keeps the runtime's log quiet unless something degrades.
const defaultLogLevel = "warn"

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// parseConfig parses the netconf on stdin once: it applies defaults,
// validates, and converts prevResult, when there is one, to the current
// result type. Verbs never read stdin again.
func parseConfig(stdin []byte) (*Conf, *current.Result, error) {
	conf, err := parseNetconf(stdin)
	if err != nil {
		return nil, nil, err
	}
	if conf.RawPrevResult == nil {
		return conf, nil, nil
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, nil, &configError{msg: "parse prevResult", err: err}
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, nil, &configError{msg: fmt.Sprintf("convert prevResult from CNI version %s", conf.CNIVersion), err: err}
	}
	if err := checkRequired(prev); err != nil {
		return nil, nil, err
	}
	return conf, prev, nil
}

// checkRequired rejects a prevResult missing a field the spec requires:
// "address" in every ips entry, "dst" in every route. One without parses
// (as "<nil>"), but ADD would hand it on as a result that neither the
// runtime nor the next plugin can read back (found by FuzzParseConfig).
func checkRequired(prev *current.Result) error {
	for i, ipc := range prev.IPs {
		if ipc == nil || ipc.Address.IP == nil || ipc.Address.Mask == nil {
			return &configError{msg: fmt.Sprintf("prevResult ips[%d] has no address: the main plugin's result is malformed", i)}
		}
	}
	for i, r := range prev.Routes {
		if r == nil || r.Dst.IP == nil || r.Dst.Mask == nil {
			return &configError{msg: fmt.Sprintf("prevResult routes[%d] has no dst: the main plugin's result is malformed", i)}
		}
	}
	return nil
}

// parseNetconf is parseConfig without prevResult, which DEL never needs:
// a DEL must not fail on a result it would not read.
func parseNetconf(stdin []byte) (*Conf, error) {
	conf := &Conf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, &configError{msg: "parse palisade netconf from stdin", err: err}
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = agentapi.DefaultSocket
	}
	if !filepath.IsAbs(conf.AgentSocket) {
		return nil, &configError{msg: fmt.Sprintf("agentSocket %q must be an absolute path", conf.AgentSocket)}
	}
	if conf.LogLevel == "" {
		conf.LogLevel = defaultLogLevel
	}
	level, ok := logLevels[conf.LogLevel]
	if !ok {
		return nil, &configError{msg: fmt.Sprintf("unknown logLevel %q: use debug, info, warn or error", conf.LogLevel)}
	}
	conf.level = level
	return conf, nil
}

// podArgs is the pod identity the kubelet's runtime passes in CNI_ARGS.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// parsePodArgs reads the pod identity from CNI_ARGS. Namespace and name are
// required: without them the agent cannot match the pod to its policies.
func parsePodArgs(cniArgs string) (*podArgs, error) {
	pa := &podArgs{}
	if err := types.LoadArgs(cniArgs, pa); err != nil {
		return nil, &configError{msg: "parse CNI_ARGS", err: err}
	}
	if pa.K8S_POD_NAMESPACE == "" || pa.K8S_POD_NAME == "" {
		return nil, &configError{msg: "palisade enforces Kubernetes NetworkPolicy and needs the kubelet's CNI_ARGS: " +
			"K8S_POD_NAMESPACE and K8S_POD_NAME are missing; run palisade only in a conflist used by the kubelet's container runtime"}
	}
	return pa, nil
}

// pod names the pod as namespace/name, for logs.
func (pa *podArgs) pod() string {
	return string(pa.K8S_POD_NAMESPACE) + "/" + string(pa.K8S_POD_NAME)
}
