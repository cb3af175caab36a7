// Package nodestatus publishes each agent's status through the API server
// and reads it back for the whole cluster. Each agent keeps one Lease,
// palisade-agent-<node> in its own namespace, renewed every few seconds: a
// Lease is the object Kubernetes itself uses for node heartbeats, it is
// cheap to update, and its renew time tells a reader when an agent stopped
// (a stale Lease) without any other bookkeeping. The status summary rides
// in the Lease's annotations, so that `kubectl get lease -o yaml` shows it
// too.
package nodestatus

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// Names and labels of the Leases.
const (
	// DefaultNamespace is where the agents run unless POD_NAMESPACE says
	// otherwise.
	DefaultNamespace = "palisade-system"
	// LeasePrefix is followed by the node's name.
	LeasePrefix = "palisade-agent-"
	// ComponentLabel marks the Leases, so that a reader lists only them.
	ComponentLabel = "app.kubernetes.io/component"
	ComponentValue = "palisade-agent-status"
	// NodeLabel holds the node's name (a Lease's name may be shortened).
	NodeLabel = "palisade.io/node"
)

// Annotation keys of the summary.
const (
	annoPrefix     = "palisade.io/"
	annoReady      = annoPrefix + "ready"
	annoReason     = annoPrefix + "not-ready-reason"
	annoEndpoints  = annoPrefix + "endpoints"
	annoPolicies   = annoPrefix + "policies"
	annoUnmanaged  = annoPrefix + "unmanaged-pods"
	annoVersion    = annoPrefix + "version"
	annoLastSync   = annoPrefix + "last-sync"
	annoRevision   = annoPrefix + "revision"
	annoAPIError   = annoPrefix + "api-error"
	annoAttachMode = annoPrefix + "attach-mode"
)

// Summary is what an agent says about itself.
type Summary struct {
	Node    string `json:"node"`
	Version string `json:"version,omitempty"`
	Ready   bool   `json:"ready"`
	// Reason says why the agent is not ready.
	Reason     string `json:"reason,omitempty"`
	AttachMode string `json:"attachMode,omitempty"`
	Endpoints  int    `json:"endpoints"`
	Policies   int    `json:"policies"`
	// Unmanaged counts local pods running without a palisade endpoint.
	Unmanaged int `json:"unmanagedPods"`
	// Revision is the datapath revision in the maps.
	Revision uint64 `json:"revision"`
	// LastSync is when the agent last compiled and wrote the cluster's
	// policy; zero before the first sync.
	LastSync time.Time `json:"lastSync,omitzero"`
	// APIError is the last failed API request's error, empty when the
	// last one succeeded.
	APIError string `json:"apiError,omitempty"`
}

// NodeStatus is one node's entry in the cluster-wide view.
type NodeStatus struct {
	Summary
	// Renewed is when the agent last renewed its Lease.
	Renewed time.Time `json:"renewed,omitzero"`
	// Stale is true when the Lease was not renewed within its duration:
	// the agent stopped, or cannot reach the API server. Its summary is
	// the last one it wrote.
	Stale bool `json:"stale,omitempty"`
	// NoAgent is true for a Node that has no Lease at all.
	NoAgent bool `json:"noAgent,omitempty"`
}

// Healthy is true for a ready agent whose Lease is current.
func (s *NodeStatus) Healthy() bool { return s.Ready && !s.Stale && !s.NoAgent }

// LeaseName is the name of node's Lease. Node names are DNS subdomains of
// up to 253 characters, like Lease names, so a long one is cut; the node
// label keeps the full name.
func LeaseName(node string) string {
	name := LeasePrefix + node
	if len(name) > 253 {
		name = strings.TrimRight(name[:253], ".-")
	}
	return name
}

// annotations encodes a summary.
func annotations(s Summary) map[string]string {
	a := map[string]string{
		annoReady:      strconv.FormatBool(s.Ready),
		annoEndpoints:  strconv.Itoa(s.Endpoints),
		annoPolicies:   strconv.Itoa(s.Policies),
		annoUnmanaged:  strconv.Itoa(s.Unmanaged),
		annoVersion:    s.Version,
		annoRevision:   strconv.FormatUint(s.Revision, 10),
		annoAttachMode: s.AttachMode,
	}
	if s.Reason != "" {
		a[annoReason] = s.Reason
	}
	if !s.LastSync.IsZero() {
		a[annoLastSync] = s.LastSync.UTC().Format(time.RFC3339)
	}
	if s.APIError != "" {
		a[annoAPIError] = s.APIError
	}
	return a
}

// Decode reads a Lease back into a NodeStatus as of now.
func Decode(l *coordinationv1.Lease, now time.Time) (NodeStatus, error) {
	a := l.Annotations
	st := NodeStatus{Summary: Summary{
		Node: l.Labels[NodeLabel], Version: a[annoVersion], Reason: a[annoReason],
		AttachMode: a[annoAttachMode], APIError: a[annoAPIError],
	}}
	if st.Node == "" {
		st.Node = strings.TrimPrefix(l.Name, LeasePrefix)
	}
	var err error
	bad := func(key string, e error) {
		if err == nil && e != nil {
			err = fmt.Errorf("lease %s/%s: annotation %s: %w", l.Namespace, l.Name, key, e)
		}
	}
	var e error
	st.Ready, e = strconv.ParseBool(a[annoReady])
	bad(annoReady, e)
	st.Endpoints, e = strconv.Atoi(a[annoEndpoints])
	bad(annoEndpoints, e)
	st.Policies, e = strconv.Atoi(a[annoPolicies])
	bad(annoPolicies, e)
	st.Unmanaged, e = strconv.Atoi(a[annoUnmanaged])
	bad(annoUnmanaged, e)
	st.Revision, e = strconv.ParseUint(a[annoRevision], 10, 64)
	bad(annoRevision, e)
	if v := a[annoLastSync]; v != "" {
		st.LastSync, e = time.Parse(time.RFC3339, v)
		bad(annoLastSync, e)
	}
	if l.Spec.RenewTime != nil {
		st.Renewed = l.Spec.RenewTime.Time
	}
	dur := time.Duration(0)
	if l.Spec.LeaseDurationSeconds != nil {
		dur = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	st.Stale = st.Renewed.IsZero() || now.Sub(st.Renewed) > dur
	return st, err
}
