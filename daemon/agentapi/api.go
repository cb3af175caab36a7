// Package agentapi is the wire contract between the palisade CNI plugin and
// the palisade-agent: request and response types, the socket path, error
// codes and a Client. It is a leaf: it imports only the standard library, so
// the plugin binary never pulls in the agent's dependency graph.
package agentapi

import (
	"net/netip"
	"time"
)

// DefaultSocket is where the agent listens. Its directory is 0700 and the
// socket 0600: only root may register endpoints.
const DefaultSocket = "/run/palisade/agent.sock"

// DefaultStateDir holds the agent's endpoint registry and identity table.
// They describe this boot's pods and pinned maps, which a reboot takes
// away, so they live on the tmpfs /run too: writing them (an fsync on every
// pod start) costs nothing there, and no stale state outlives the boot.
const DefaultStateDir = "/run/palisade/state"

// DefaultBPFRoot is the bpffs directory under which the agent pins its maps,
// programs and links.
const DefaultBPFRoot = "/sys/fs/bpf/palisade"

// AddTimeout bounds how long the agent holds an ADD while it programs the
// pod's policy. It stays below the plugin client's timeout, which itself stays
// well below the kubelet's CNI timeout, so an error reaches the runtime as a
// message rather than as a kill.
const AddTimeout = 10 * time.Second

// Status is the agent's answer to GET /v1/status.
type Status struct {
	Version string `json:"version"`
	// Ready is true once the datapath is loaded and the Kubernetes caches
	// have synced; until then ADD is refused.
	Ready bool `json:"ready"`
	// Reason says why the agent is not ready.
	Reason string `json:"reason,omitempty"`
	// BPFRoot is the bpffs directory holding the agent's pinned objects; the
	// plugin opens the programs there to attach them.
	BPFRoot string `json:"bpfRoot"`
	// AttachMode is "tcx", "tc" or "auto".
	AttachMode string `json:"attachMode"`
	Endpoints  int    `json:"endpoints"`
	Revision   uint64 `json:"revision"`
	// The fields below are for palisadectl status, filled only when asked
	// for (StatusDetail): reading the maps' fill levels walks conntrack,
	// which a CNI ADD must not wait for.
	NodeName string `json:"nodeName,omitempty"`
	// APIConnected is false when the last request to the API server failed.
	APIConnected bool      `json:"apiConnected"`
	APIError     string    `json:"apiError,omitempty"`
	Identities   int       `json:"identities"`
	Policies     int       `json:"policies"`
	Maps         []MapFill `json:"maps,omitempty"`
}

// AddRequest registers a pod's interface with the agent (POST /v1/endpoints).
type AddRequest struct {
	ContainerID  string       `json:"containerID"`
	IfName       string       `json:"ifName"`
	Netns        string       `json:"netns"`
	PodNamespace string       `json:"podNamespace"`
	PodName      string       `json:"podName"`
	PodUID       string       `json:"podUID,omitempty"`
	HostIfName   string       `json:"hostIfName"`
	HostIfIndex  int          `json:"hostIfIndex"`
	IPs          []netip.Addr `json:"ips"`
}

// EndpointID names an endpoint: one interface of one container.
func EndpointID(containerID, ifName string) string {
	return containerID + "_" + ifName
}

// Endpoint is an endpoint as the agent knows it (GET /v1/endpoints/{id}).
type Endpoint struct {
	ID           string       `json:"id"`
	ContainerID  string       `json:"containerID"`
	IfName       string       `json:"ifName"`
	Netns        string       `json:"netns"`
	PodNamespace string       `json:"podNamespace"`
	PodName      string       `json:"podName"`
	PodUID       string       `json:"podUID,omitempty"`
	HostIfName   string       `json:"hostIfName"`
	HostIfIndex  int          `json:"hostIfIndex"`
	IPs          []netip.Addr `json:"ips"`
	// Revision is the agent revision whose policy is in this endpoint's maps;
	// zero means not yet programmed.
	Revision uint64 `json:"revision"`
	// Current is true when no newer revision is waiting to be programmed.
	Current bool `json:"current"`
	// Adopted is true for a pod that was running before the agent and that
	// the agent registered itself at start, with no CNI ADD.
	Adopted bool `json:"adopted,omitempty"`
	// The fields below come from the last compiled policy; palisadectl
	// endpoints shows them.
	Identity        uint32   `json:"identity,omitempty"`
	IngressIsolated bool     `json:"ingressIsolated,omitempty"`
	EgressIsolated  bool     `json:"egressIsolated,omitempty"`
	Policies        []string `json:"policies,omitempty"`
}

// AddResponse answers a successful AddRequest, sent only once the pod's
// policy is in the datapath.
type AddResponse struct {
	Endpoint Endpoint `json:"endpoint"`
	// BPFRoot and AttachMode say where the plugin finds the programs to
	// attach and how, as in Status: the ADD needs no Status call first.
	BPFRoot    string `json:"bpfRoot"`
	AttachMode string `json:"attachMode"`
}

// Attachment names a container interface the runtime still has.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCRequest lists every attachment the runtime still has (POST /v1/gc); the
// agent forgets every other endpoint.
type GCRequest struct {
	Valid []Attachment `json:"valid"`
}

// GCResponse lists the endpoints the agent removed.
type GCResponse struct {
	Removed []string `json:"removed"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// ErrorCode classifies an agent error so that the plugin can map it to a CNI
// error code.
type ErrorCode string

const (
	CodeInvalidRequest ErrorCode = "InvalidRequest"
	CodeNotReady       ErrorCode = "NotReady"
	CodeNotFound       ErrorCode = "NotFound"
	CodePodUnknown     ErrorCode = "PodUnknown"
	CodeTimeout        ErrorCode = "Timeout"
	CodeInternal       ErrorCode = "Internal"
	// CodeForbidden: the caller is not root (the socket checks its peer).
	CodeForbidden ErrorCode = "Forbidden"
	// CodeTooLarge: the request body is over the socket's limit.
	CodeTooLarge ErrorCode = "TooLarge"
)
