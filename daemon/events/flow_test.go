package events

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/inspect"
	"github.com/palisade-cni/palisade/daemon/policy"
)

var (
	serverIP = netip.MustParseAddr("10.244.1.10")
	clientIP = netip.MustParseAddr("10.244.1.11")
)

func testView() *inspect.View {
	mk := func(name string, ip netip.Addr) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: ip.String()}}}}
	}
	res := &policy.Result{
		IPCache:   map[netip.Prefix]uint32{netip.PrefixFrom(serverIP, 32): 300, netip.PrefixFrom(clientIP, 32): 301},
		Endpoints: map[string]policy.EndpointPolicy{"srv_eth0": {ID: "srv_eth0", Ifindex: 7, Identity: 300, IngressIsolated: true}},
		Refs: map[uint32]policy.RuleRef{1: {Policy: "prod/backend-access", Direction: "ingress", Index: 0},
			2: {Policy: "no-lab", Direction: "ingress", Index: 1, Tier: "Admin", Action: "Deny"}},
	}
	eps := []agentapi.Endpoint{{ID: "srv_eth0", PodNamespace: "prod", PodName: "server", HostIfIndex: 7, IPs: []netip.Addr{serverIP}}}
	return inspect.NewView(res, []*corev1.Pod{mk("server", serverIP), mk("client", clientIP)}, nil, eps, "node-1")
}

func event(reason uint8, dir uint8, rule, peer uint32) *bpf.VerdictEvent {
	ev := &bpf.VerdictEvent{
		Timestamp: uint64(2 * time.Second), Saddr: netip.AddrFrom16(clientIP.As16()).As16(), Daddr: netip.AddrFrom16(serverIP.As16()).As16(),
		Sport: 0x3930 /* 12345 */, Dport: 0xeb18 /* 6379 */, Proto: 6, Dir: dir, Reason: reason, Ifindex: 7, PeerIdentity: peer, Rule: rule,
	}
	return ev
}

func TestDecode(t *testing.T) {
	boot := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		ev   *bpf.VerdictEvent
		want agentapi.Flow
	}{
		{
			name: "a policy drop names both pods, the port and no policy allows",
			ev:   event(bpf.ReasonPolicy, 1, 0, 301),
			want: agentapi.Flow{
				Time: boot.Add(2 * time.Second), Verdict: "dropped", Reason: "policy", Direction: "ingress", Pod: "prod/server",
				Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 12345, Pod: "prod/client", Identity: 301},
				Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/server", Identity: 300},
				Protocol:    "TCP", Summary: "no policy allows",
			},
		},
		{
			name: "an allowed flow names the policy rule",
			ev:   event(bpf.ReasonAllowed, 1, 1, 301),
			want: agentapi.Flow{
				Time: boot.Add(2 * time.Second), Verdict: "allowed", Reason: "allowed", Direction: "ingress", Pod: "prod/server",
				Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 12345, Pod: "prod/client", Identity: 301},
				Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/server", Identity: 300},
				Protocol:    "TCP", Policy: "prod/backend-access", Rule: "ingress[0]", Summary: "allowed by prod/backend-access ingress[0]",
			},
		},
		{
			name: "a drop by a cluster policy names its tier, object and rule",
			ev:   event(bpf.ReasonPolicy, 1, 2, 301),
			want: agentapi.Flow{
				Time: boot.Add(2 * time.Second), Verdict: "dropped", Reason: "policy", Direction: "ingress", Pod: "prod/server",
				Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 12345, Pod: "prod/client", Identity: 301},
				Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/server", Identity: 300},
				Protocol:    "TCP", Policy: "no-lab", Rule: "ingress[1]", Tier: "Admin",
				Summary: "denied by the Admin tier: ClusterNetworkPolicy no-lab ingress[1]",
			},
		},
		{
			name: "an allowed flow without rule in an open direction says so",
			ev:   event(bpf.ReasonAllowed, 0, 0, 301),
			want: agentapi.Flow{
				Time: boot.Add(2 * time.Second), Verdict: "allowed", Reason: "allowed", Direction: "egress", Pod: "prod/server",
				Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 12345, Pod: "prod/client", Identity: 300},
				Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/server", Identity: 301},
				Protocol:    "TCP", Summary: "allowed: no policy isolates prod/server for egress",
			},
		},
		{
			name: "a spoofed packet is named so",
			ev:   event(bpf.ReasonSpoofed, 0, 0, 0),
			want: agentapi.Flow{
				Time: boot.Add(2 * time.Second), Verdict: "dropped", Reason: "spoofed", Direction: "egress", Pod: "prod/server",
				Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 12345, Pod: "prod/client"},
				Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/server"},
				Protocol:    "TCP", Summary: "the pod sent what is not its own to send: another source address or ARP sender, or neighbour discovery beyond its link",
			},
		},
		{
			name: "traffic with the node",
			ev:   event(bpf.ReasonAllowed, 1, 0, identity.Host),
			want: agentapi.Flow{
				Time: boot.Add(2 * time.Second), Verdict: "allowed", Reason: "allowed", Direction: "ingress", Pod: "prod/server",
				Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 12345, Pod: "prod/client", Identity: identity.Host},
				Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/server", Identity: 300},
				Protocol:    "TCP", Summary: "allowed: traffic with the pod's own node",
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Decode(tt.ev, testView(), boot)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("flow (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeWithoutView(t *testing.T) {
	f := Decode(event(bpf.ReasonUnknownEndpoint, 1, 0, 0), nil, time.Time{})
	if f.Pod != "ifindex 7" || f.Source.Pod != "" || f.Reason != "unknown-endpoint" {
		t.Errorf("flow %+v, want ifindex 7, no names, reason unknown-endpoint", f)
	}
}

func TestHub(t *testing.T) {
	h := NewHub(3)
	ch, cancel := h.Subscribe()
	defer cancel()
	for i, v := range []string{"dropped", "allowed", "dropped", "dropped"} {
		h.Publish(agentapi.Flow{Verdict: v, Source: agentapi.FlowPeer{Port: uint16(i)}, Pod: "prod/server"})
	}
	var ports []uint16
	for _, f := range h.Recent(agentapi.FlowFilter{Verdict: "dropped"}) {
		ports = append(ports, f.Source.Port)
	}
	// The oldest flow fell out of the ring of three.
	if diff := cmp.Diff([]uint16{2, 3}, ports); diff != "" {
		t.Errorf("recent dropped flows (-want +got):\n%s", diff)
	}
	if n := len(h.Recent(agentapi.FlowFilter{Pod: "server"})); n != 3 {
		t.Errorf("%d recent flows of pod server, want 3", n)
	}
	if n := len(h.Recent(agentapi.FlowFilter{Pod: "prod/other"})); n != 0 {
		t.Errorf("%d recent flows of prod/other, want 0", n)
	}
	if n := len(ch); n != 4 {
		t.Errorf("subscriber got %d flows, want 4", n)
	}
}
