package agentapi

import "time"

// The types below are what palisadectl reads: the agent's compiled view of
// its local pods, explanations of verdicts, and flows. Only the agent
// writes them; their fields are added to, never changed in meaning.

// MapFill is how full one of the datapath's maps is.
type MapFill struct {
	Map      string `json:"map"`
	Entries  int    `json:"entries"`
	Capacity int    `json:"capacity"`
}

// PodPolicy is the compiled policy of one local pod (GET /v1/policy).
type PodPolicy struct {
	Pod        string `json:"pod"` // namespace/name
	EndpointID string `json:"endpointID"`
	Identity   uint32 `json:"identity"`
	Revision   uint64 `json:"revision"`
	// Ingress is what the pod may receive, Egress what it may send.
	Ingress DirectionPolicy `json:"ingress"`
	Egress  DirectionPolicy `json:"egress"`
}

// DirectionPolicy is a pod's policy in one direction.
type DirectionPolicy struct {
	// Isolated is false when no policy selects the pod for this direction:
	// then everything is allowed and Rules is empty.
	Isolated bool `json:"isolated"`
	// Policies are the policies (namespace/name) isolating the pod here.
	Policies []string    `json:"policies"`
	Rules    []AllowRule `json:"rules"`
}

// AllowRule is one compiled allow rule: a peer identity, a protocol and a
// port range, and the policy rule it comes from.
type AllowRule struct {
	Policy string `json:"policy"` // namespace/name
	// Rule is the rule's place in the policy, such as "ingress[0]".
	Rule     string `json:"rule"`
	Identity uint32 `json:"identity"`
	// Peer describes the addresses behind Identity.
	Peer     string `json:"peer"`
	Protocol string `json:"protocol"` // TCP, UDP, SCTP or any
	Ports    string `json:"ports"`    // "80", "8000-8080" or "all"
	// Text is the rule in words.
	Text string `json:"text"`
	// Entries are the map keys the rule became: what the datapath matches.
	Entries []MapEntry `json:"entries"`
}

// MapEntry is one key of a pod's policy map, as read back from the kernel.
type MapEntry struct {
	Identity  uint32 `json:"identity"`
	Protocol  uint8  `json:"protocol"`
	Port      uint16 `json:"port"`      // first port of the prefix, host byte order
	PrefixLen uint32 `json:"prefixLen"` // LPM prefix length of the key
	Rule      uint32 `json:"rule"`      // rule reference in the value
}

// ExplainRequest asks what the datapath would do with a flow
// (POST /v1/explain). From and To are "namespace/pod" or an IP address.
// Port 0 explains every port the destination pod declares.
type ExplainRequest struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"` // TCP (default), UDP or SCTP
}

// Explanation is the verdict on one flow, with the reasons.
type Explanation struct {
	From     Peer   `json:"from"`
	To       Peer   `json:"to"`
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
	// Allowed is the verdict of every direction judged on this node.
	Allowed bool `json:"allowed"`
	// Egress is the source pod's egress, judged only when it runs here.
	Egress *DirectionVerdict `json:"egress,omitempty"`
	// Ingress is the destination pod's ingress, judged only when it runs here.
	Ingress *DirectionVerdict `json:"ingress,omitempty"`
	// Notes say what this node cannot judge, and why.
	Notes []string `json:"notes,omitempty"`
}

// Peer is one end of an explained flow.
type Peer struct {
	IP       string `json:"ip"`
	Pod      string `json:"pod,omitempty"` // namespace/name
	Node     string `json:"node,omitempty"`
	Local    bool   `json:"local"`
	Identity uint32 `json:"identity"`
	// Description says what the agent knows of the address.
	Description string `json:"description"`
}

// DirectionVerdict is one pod's verdict on the flow in one direction.
type DirectionVerdict struct {
	Pod      string `json:"pod"`
	Allowed  bool   `json:"allowed"`
	Isolated bool   `json:"isolated"`
	// Reason is the verdict in one sentence.
	Reason   string          `json:"reason"`
	Policies []PolicyVerdict `json:"policies,omitempty"`
	// Fix is the smallest change that would allow a denied flow.
	Fix string `json:"fix,omitempty"`
	// Tier and Rule name what decided where cluster policies judge: the
	// tier (Admin, NetworkPolicy, Baseline, or none) and the object's rule.
	Tier string `json:"tier,omitempty"`
	Rule string `json:"rule,omitempty"`
}

// PolicyVerdict says whether one policy selecting the pod allows the flow.
type PolicyVerdict struct {
	Policy string        `json:"policy"`
	Allows bool          `json:"allows"`
	Rules  []RuleVerdict `json:"rules"`
}

// RuleVerdict says why one rule of a policy allows the flow or not.
type RuleVerdict struct {
	Rule   string `json:"rule"` // such as "ingress[0]"
	Allows bool   `json:"allows"`
	Why    string `json:"why"`
}

// Flow is one verdict of the datapath, decoded (GET /v1/flows).
type Flow struct {
	Time    time.Time `json:"time"`
	Verdict string    `json:"verdict"` // FlowAllowed or FlowDropped
	// Reason is why a packet was dropped: policy, unknown-endpoint,
	// rejudged, malformed, nat or spoofed; "allowed" for an allowed flow.
	Reason string `json:"reason"`
	// Direction is from Pod's point of view: ingress or egress.
	Direction   string   `json:"direction"`
	Pod         string   `json:"pod"` // the local pod that judged, namespace/name
	Source      FlowPeer `json:"source"`
	Destination FlowPeer `json:"destination"`
	Protocol    string   `json:"protocol"`
	// Policy and Rule name the rule that allowed the flow, when one did,
	// or the cluster policy rule that denied it; Tier is the cluster
	// policy's tier (Admin or Baseline).
	Policy string `json:"policy,omitempty"`
	Rule   string `json:"rule,omitempty"`
	Tier   string `json:"tier,omitempty"`
	// Summary is the verdict in words, such as "no policy allows".
	Summary string `json:"summary"`
}

// Flow verdicts.
const (
	FlowAllowed = "allowed"
	FlowDropped = "dropped"
)

// FlowPeer is one end of a flow.
type FlowPeer struct {
	IP       string `json:"ip"`
	Port     uint16 `json:"port"`
	Pod      string `json:"pod,omitempty"` // namespace/name when the address is a known pod's
	Identity uint32 `json:"identity,omitempty"`
}

// FlowFilter selects flows. Empty fields select everything.
type FlowFilter struct {
	// Pod is "namespace/name", or a name in any namespace: flows from or to it.
	Pod     string
	Verdict string // FlowAllowed or FlowDropped
	// Follow keeps the stream open for new flows after the recent ones.
	Follow bool
}

// Match reports whether f passes the filter.
func (ff FlowFilter) Match(f *Flow) bool {
	if ff.Verdict != "" && f.Verdict != ff.Verdict {
		return false
	}
	if ff.Pod == "" {
		return true
	}
	return podMatches(ff.Pod, f.Pod) || podMatches(ff.Pod, f.Source.Pod) || podMatches(ff.Pod, f.Destination.Pod)
}

func podMatches(want, got string) bool {
	if got == "" {
		return false
	}
	if got == want {
		return true
	}
	for i := len(got) - 1; i >= 0; i-- {
		if got[i] == '/' {
			return got[i+1:] == want
		}
	}
	return false
}
