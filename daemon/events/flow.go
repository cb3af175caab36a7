package events

import (
	"fmt"
	"time"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/inspect"
)

// Decode turns a verdict event into a Flow. v may be nil before the first
// policy sync; names are then left out. boot is the wall-clock time of
// monotonic time zero, which the event's timestamp counts from.
//
// The rule reference is resolved against v's compiled policy: an event
// emitted just before a policy change may name a rule of the new revision's
// numbering; the reader keeps up within milliseconds, so this is rare.
func Decode(ev *bpf.VerdictEvent, v *inspect.View, boot time.Time) agentapi.Flow {
	src, dst := ev.Addrs()
	sport, dport := ev.Ports()
	dir := bpf.ToPod
	if ev.Dir == 0 {
		dir = bpf.FromPod
	}
	f := agentapi.Flow{
		Time:        boot.Add(time.Duration(ev.Timestamp)),
		Verdict:     agentapi.FlowDropped,
		Reason:      bpf.ReasonName(int(ev.Reason)),
		Direction:   dir.PolicyDirection(),
		Source:      agentapi.FlowPeer{IP: src.String(), Port: sport},
		Destination: agentapi.FlowPeer{IP: dst.String(), Port: dport},
		Protocol:    protoName(ev.Proto),
	}
	if ev.Reason == bpf.ReasonAllowed {
		f.Verdict = agentapi.FlowAllowed
	}
	peer, self := &f.Source, &f.Destination
	if dir == bpf.FromPod {
		peer, self = &f.Destination, &f.Source
	}
	peer.Identity = ev.PeerIdentity
	if v != nil {
		if p := v.PodByIP(src); p != nil {
			f.Source.Pod = p.Namespace + "/" + p.Name
		}
		if p := v.PodByIP(dst); p != nil {
			f.Destination.Pod = p.Namespace + "/" + p.Name
		}
		if ep, ok := v.EndpointByIfindex(int(ev.Ifindex)); ok {
			f.Pod = ep.PodNamespace + "/" + ep.PodName
			// A spoofed packet's source is not the pod's: its identity
			// would name the sender under another's address.
			if pol, ok := v.Result.Endpoints[ep.ID]; ok && ev.Reason != bpf.ReasonSpoofed {
				self.Identity = pol.Identity
			}
		}
		// A drop names a rule only when a cluster policy's Deny decided.
		if ref, ok := v.Ref(ev.Rule); ok && (f.Verdict == agentapi.FlowAllowed || ref.Tier != "") {
			f.Policy, f.Rule, f.Tier = ref.Policy, inspect.RuleName(ref), ref.Tier
		}
	}
	if f.Pod == "" {
		f.Pod = fmt.Sprintf("ifindex %d", ev.Ifindex)
	}
	f.Summary = summary(&f, ev)
	return f
}

func summary(f *agentapi.Flow, ev *bpf.VerdictEvent) string {
	switch int(ev.Reason) {
	case bpf.ReasonAllowed:
		switch {
		case f.Tier != "":
			return "allowed by the " + f.Tier + " tier: ClusterNetworkPolicy " + f.Policy + " " + f.Rule
		case f.Policy != "":
			return "allowed by " + f.Policy + " " + f.Rule
		case ev.PeerIdentity == identity.Host:
			return "allowed: traffic with the pod's own node"
		}
		return fmt.Sprintf("allowed: no policy isolates %s for %s", f.Pod, f.Direction)
	case bpf.ReasonPolicy:
		if f.Tier != "" {
			return "denied by the " + f.Tier + " tier: ClusterNetworkPolicy " + f.Policy + " " + f.Rule
		}
		return "no policy allows"
	case bpf.ReasonUnknownEndpoint:
		return "the interface has no endpoint: its pod is not (or no longer) programmed"
	case bpf.ReasonRejudged:
		if f.Tier != "" {
			return "the policy changed: the " + f.Tier + " tier's ClusterNetworkPolicy " + f.Policy + " " + f.Rule + " now denies this established flow"
		}
		return "the policy changed and no longer allows this established flow"
	case bpf.ReasonMalformed:
		return "malformed packet"
	case bpf.ReasonNAT:
		return "Service translation failed"
	case bpf.ReasonSpoofed:
		return "the pod sent what is not its own to send: another source address or ARP sender, or neighbour discovery beyond its link"
	case bpf.ReasonFragment:
		return "a fragment whose datagram's first fragment was not admitted (denied, or never seen)"
	}
	return f.Reason
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	case 0:
		// IPv6 hop-by-hop options, as MLD reports carry: the datapath
		// reports the first next-header.
		return "HOPOPT"
	}
	return inspect.ProtoName(p)
}
