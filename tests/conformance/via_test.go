package conformance

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

func TestParseVia(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Via
		wantErr bool
	}{
		{"", ViaClusterIP, false},
		{"clusterip", ViaClusterIP, false},
		{"pod", ViaPod, false},
		{"nodeport", ViaNodePort, false},
		{"NodePort", "", true},
		{"loadbalancer", "", true},
	} {
		got, err := ParseVia(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseVia(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// A catalog's target: pod is kept whatever the run's Via; otherwise Via
// decides.
func TestTargetOf(t *testing.T) {
	for _, tc := range []struct {
		via          Via
		probeTarget  string
		want         string
		wantSvcType  corev1.ServiceType
		wantExpected bool // of an SCTP pair whose policy admits it
	}{
		{ViaClusterIP, "", "service", corev1.ServiceTypeClusterIP, true},
		{ViaClusterIP, "pod", "pod", corev1.ServiceTypeClusterIP, true},
		{ViaPod, "", "pod", corev1.ServiceTypeClusterIP, true},
		{ViaNodePort, "", "nodeport", corev1.ServiceTypeNodePort, false},
		{ViaNodePort, "pod", "pod", corev1.ServiceTypeNodePort, true},
	} {
		e := &Env{Via: tc.via}
		p := &Probe{Target: tc.probeTarget, Protocol: corev1.ProtocolSCTP}
		got := e.targetOf(p)
		if got != tc.want || e.serviceType() != tc.wantSvcType {
			t.Errorf("via %s, probe target %q: target %q, Service type %s; want %q, %s", tc.via, tc.probeTarget, got, e.serviceType(), tc.want, tc.wantSvcType)
		}
		if exp := expectVia(got, p.Protocol, true); exp != tc.wantExpected {
			t.Errorf("via %s, probe target %q: SCTP pair the policy admits expected %v, want %v", tc.via, tc.probeTarget, exp, tc.wantExpected)
		}
	}
}

// The expected table through a NodePort is the policy's, for both
// verdicts, except SCTP (always refused).
func TestExpectVia(t *testing.T) {
	for _, target := range []string{"service", "pod", "nodeport"} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
			for _, policy := range []bool{true, false} {
				want := policy && !(target == "nodeport" && proto == corev1.ProtocolSCTP)
				if got := expectVia(target, proto, policy); got != want {
					t.Errorf("expectVia(%s, %s, %v) = %v, want %v", target, proto, policy, got, want)
				}
			}
		}
	}
}

func TestNodePortNodes(t *testing.T) {
	for _, tc := range []struct {
		own, nodes int
		want       []int
	}{
		{0, 1, []int{0}},
		{0, 2, []int{0, 1}},
		{1, 2, []int{1, 0}},
		{2, 3, []int{2, 0}},
	} {
		if got := nodePortNodes(tc.own, tc.nodes); !cmp.Equal(got, tc.want) {
			t.Errorf("nodePortNodes(%d, %d) = %v, want %v", tc.own, tc.nodes, got, tc.want)
		}
	}
}

// dests on a hand-built two-node Env: a NodePort probe goes to the
// source's own node and the other one, which is the backend's node for a
// cross-node pair and neither pod's for a same-node pair.
func TestDestsNodePort(t *testing.T) {
	n1 := &testbed.Node{Name: "node-1", IP: netip.MustParseAddr("198.18.0.11")}
	n2 := &testbed.Node{Name: "node-2", IP: netip.MustParseAddr("198.18.0.12")}
	e := &Env{
		Via:   ViaNodePort,
		af:    v4,
		Nodes: []*testbed.Node{n1, n2},
		Pods: map[string]*testbed.Pod{
			"x/a": {Namespace: "x", Name: "a", Node: n1},
			"x/b": {Namespace: "x", Name: "b", Node: n2},
			"x/c": {Namespace: "x", Name: "c", Node: n1},
		},
		services: []*liveService{
			{spec: ModelService{Name: "s-x-b", Namespace: "x", Ports: []ServicePort{{Protocol: "TCP", Port: 80}}},
				clusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")}, backends: []string{"x/b"},
				nodePorts: map[string]int{"TCP/80": 30080}},
			{spec: ModelService{Name: "s-x-c", Namespace: "x", Ports: []ServicePort{{Protocol: "TCP", Port: 80}, {Protocol: "UDP", Port: 81}}},
				clusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.30")}, backends: []string{"x/c"},
				nodePorts: map[string]int{"TCP/80": 30081}},
		},
	}
	p := &Probe{Port: 80, Protocol: corev1.ProtocolTCP}
	for _, tc := range []struct {
		name       string
		pair       pair
		probe      *Probe
		target     string
		want       []string
		wantReason bool
	}{
		{"cross-node: own node, then the backend's", pair{"x/a", "x/b"}, p, "nodeport",
			[]string{"node-1 (own node) NodePort 198.18.0.11:30080", "node-2 (backend's node) NodePort 198.18.0.12:30080"}, false},
		{"same node: own node, then a node with neither pod", pair{"x/a", "x/c"}, p, "nodeport",
			[]string{"node-1 (own node) NodePort 198.18.0.11:30081", "node-2 NodePort 198.18.0.12:30081"}, false},
		{"from node-2", pair{"x/b", "x/c"}, p, "nodeport",
			[]string{"node-2 (own node) NodePort 198.18.0.12:30081", "node-1 (backend's node) NodePort 198.18.0.11:30081"}, false},
		{"ClusterIP", pair{"x/a", "x/b"}, p, "service", []string{"ClusterIP 10.96.0.20:80"}, false},
		{"a Service port without a NodePort", pair{"x/a", "x/c"}, &Probe{Port: 81, Protocol: corev1.ProtocolUDP}, "nodeport", nil, true},
		{"no Service", pair{"x/b", "x/a"}, p, "nodeport", nil, true},
	} {
		ds, _, reason := e.dests(tc.pair, tc.probe, tc.target)
		var got []string
		for _, d := range ds {
			got = append(got, d.String())
		}
		if !cmp.Equal(got, tc.want) || (reason != "") != tc.wantReason {
			t.Errorf("%s: dests = %q, reason %q; want %q, a reason: %v", tc.name, got, reason, tc.want, tc.wantReason)
		}
	}
}

// A pair passes only if every destination gives the expected verdict; a
// disagreement shows as the wrong verdict, with both paths in the detail.
func TestCombineDests(t *testing.T) {
	ds := []dest{{"own", netip.MustParseAddr("198.18.0.11"), 30080}, {"other", netip.MustParseAddr("198.18.0.12"), 30080}}
	yes := observation{connected: true, detail: "connected"}
	no := observation{detail: "timeout"}
	bad := observation{connected: true, invalid: true, detail: "answered by z"}
	for _, tc := range []struct {
		name        string
		obs         []observation
		want        bool
		wantConn    bool
		wantInvalid bool
	}{
		{"both connect", []observation{yes, yes}, true, true, false},
		{"both refused", []observation{no, no}, false, false, false},
		{"other node admits a forbidden pair", []observation{no, yes}, false, true, false},
		{"own node refuses an allowed pair", []observation{no, yes}, true, false, false},
		{"a wrong backend answers", []observation{yes, bad}, true, false, true},
		{"one destination", []observation{yes}, false, true, false},
	} {
		got := combineDests(tc.obs, ds[:len(tc.obs)], tc.want)
		if got.connected != tc.wantConn || got.invalid != tc.wantInvalid {
			t.Errorf("%s: connected %v invalid %v, want %v %v", tc.name, got.connected, got.invalid, tc.wantConn, tc.wantInvalid)
		}
		matches := !got.invalid && got.connected == tc.want
		agree := true
		for _, o := range tc.obs {
			agree = agree && !o.invalid && o.connected == tc.want
		}
		if matches != agree {
			t.Errorf("%s: the pair matches its expectation: %v, want %v", tc.name, matches, agree)
		}
	}
}

func TestNodePortsOf(t *testing.T) {
	svc := &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
		{Protocol: corev1.ProtocolTCP, Port: 80, NodePort: 31000},
		{Protocol: corev1.ProtocolUDP, Port: 80, NodePort: 31001},
		{Protocol: corev1.ProtocolSCTP, Port: 81},
	}}}
	want := map[string]int{"TCP/80": 31000, "UDP/80": 31001}
	if got := nodePortsOf(svc); !cmp.Equal(got, want) {
		t.Errorf("nodePortsOf = %v, want %v", got, want)
	}
}

// Explain answers the policy question: where the path refused everything
// (SCTP to a NodePort) it is held to the catalog's table, elsewhere to the
// observation.
func TestExplainBasis(t *testing.T) {
	policy := map[string]map[string]bool{"x/a": {"x/b": true}, "x/b": {"x/a": false}}
	observed := Matrix{"x/a": {"x/b": false}, "x/b": {"x/a": false}}
	for _, tc := range []struct {
		target string
		proto  corev1.Protocol
		want   Matrix
	}{
		{"nodeport", corev1.ProtocolSCTP, Matrix{"x/a": {"x/b": true}, "x/b": {"x/a": false}}},
		{"nodeport", corev1.ProtocolTCP, observed},
		{"service", corev1.ProtocolSCTP, observed},
	} {
		p := &Probe{Protocol: tc.proto, Expected: policy}
		got, _ := explainBasis(p, &ProbeResult{Target: tc.target, Observed: observed})
		if !cmp.Equal(got, tc.want) {
			t.Errorf("%s %s: basis %v, want %v", tc.target, tc.proto, got, tc.want)
		}
	}
}
