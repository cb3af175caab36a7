package conformance

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// Via is the way every probe of a run reaches its destination pod
// (scripts/conformance --via; README "Conformance" says what each means).
type Via string

// The three ways.
const (
	// ViaClusterIP probes the destination's Service ClusterIP, or its pod
	// IP where the catalog's probe says target: pod.
	ViaClusterIP Via = "clusterip"
	// ViaPod probes the destination pod's IP on every probe.
	ViaPod Via = "pod"
	// ViaNodePort makes every Service type NodePort and probes each pair
	// twice, on the NodePort of two node addresses: the client's own
	// node's and the next node's (nodePortNodes). A probe with target: pod
	// still goes to the pod IP.
	ViaNodePort Via = "nodeport"
)

// ParseVia parses --via; "" is the default, clusterip.
func ParseVia(s string) (Via, error) {
	switch v := Via(s); v {
	case "":
		return ViaClusterIP, nil
	case ViaClusterIP, ViaPod, ViaNodePort:
		return v, nil
	}
	return "", fmt.Errorf("--via %q: want clusterip, pod or nodeport", s)
}

// WithVia makes Setup create the model's Services for via: type NodePort
// for nodeport, ClusterIP otherwise.
func WithVia(v Via) SetupOption {
	return func(e *Env) { e.Via = v }
}

// serviceType is the type the runner gives every Service it creates.
func (e *Env) serviceType() corev1.ServiceType {
	if e.Via == ViaNodePort {
		return corev1.ServiceTypeNodePort
	}
	return corev1.ServiceTypeClusterIP
}

// targetOf is where a probe goes: "pod", "service" (the ClusterIP) or
// "nodeport", from the run's Via and the probe's own target.
func (e *Env) targetOf(p *Probe) string {
	switch {
	case p.Target == "pod" || e.Via == ViaPod:
		return "pod"
	case e.Via == ViaNodePort:
		return "nodeport"
	}
	return "service"
}

// expectVia is the expected result of a pair whose policy verdict is
// policy, on a probe of proto to target. It equals the policy verdict
// except on the one path Palisade refuses whatever the policy says:
// SCTP to a NodePort. SCTP's checksum covers the ports, and a NodePort
// always differs from the backend's port, so the veth cannot translate
// it; left to kube-proxy it would reach the backend masqueraded as a
// node, past the backend's policy, so Palisade drops it (docs/design.md,
// "Services: translate before judging").
func expectVia(target string, proto corev1.Protocol, policy bool) bool {
	if pathRefuses(target, proto) {
		return false
	}
	return policy
}

// pathRefuses reports whether Palisade drops every probe of proto to
// target before policy is consulted (expectVia says why).
func pathRefuses(target string, proto corev1.Protocol) bool {
	return target == "nodeport" && proto == corev1.ProtocolSCTP
}

// dest is one address and port a probe of a pair is sent to.
type dest struct {
	what string
	addr netip.Addr
	port int
}

func (d dest) String() string { return fmt.Sprintf("%s %s:%d", d.what, d.addr, d.port) }

// nodePortNodes are the nodes whose address a NodePort probe from a pod on
// node index own (into nodes) goes to: its own node and the next one in
// node order. Pods are spread round-robin, so with two nodes the second is
// the backend's node for a cross-node pair and a node holding neither pod
// for a same-node pair; with three, every combination occurs. One node: its
// own alone.
func nodePortNodes(own, nodes int) []int {
	if nodes < 2 {
		return []int{own}
	}
	return []int{own, (own + 1) % nodes}
}

// dests are where a probe of pair pp goes, and the pods allowed to answer
// it; a reason instead when no Service leads to the destination.
func (e *Env) dests(pp pair, p *Probe, target string) ([]dest, []string, string) {
	dst := e.Pods[pp.to]
	if target == "pod" {
		ip, ok := e.podIP(pp.to)
		if !ok {
			return nil, nil, fmt.Sprintf("%s has no %s address", pp.to, e.af)
		}
		return []dest{{"pod IP", ip, p.Port}}, []string{pp.to}, ""
	}
	ls, ok := e.serviceOf(pp.to, p.Port, p.Protocol)
	if !ok {
		return nil, nil, fmt.Sprintf("no Service leads to %s on %s/%d", pp.to, p.Protocol, p.Port)
	}
	if target == "service" {
		ip, ok := ls.clusterIPOf(e.af)
		if !ok {
			return nil, nil, fmt.Sprintf("Service %s/%s has no %s ClusterIP (%v)", ls.spec.Namespace, ls.spec.Name, e.af, ls.clusterIPs)
		}
		return []dest{{"ClusterIP", ip, p.Port}}, ls.backends, ""
	}
	np := ls.nodePorts[servicePortKey(p.Protocol, p.Port)]
	if np == 0 {
		return nil, nil, fmt.Sprintf("Service %s/%s has no NodePort for %s/%d", ls.spec.Namespace, ls.spec.Name, p.Protocol, p.Port)
	}
	src := e.Pods[pp.from]
	own := 0
	for i, n := range e.Nodes {
		if n == src.Node {
			own = i
		}
	}
	var out []dest
	for i, idx := range nodePortNodes(own, len(e.Nodes)) {
		n := e.Nodes[idx]
		what := fmt.Sprintf("%s (own node) NodePort", n.Name)
		if i > 0 {
			what = fmt.Sprintf("%s NodePort", n.Name)
			if n == dst.Node {
				what = fmt.Sprintf("%s (backend's node) NodePort", n.Name)
			}
		}
		ip := n.IP
		if e.af == v6 {
			if ip = n.IP6; !ip.IsValid() {
				return nil, nil, fmt.Sprintf("node %s has no IPv6 address for a NodePort", n.Name)
			}
		}
		out = append(out, dest{what, ip, np})
	}
	return out, ls.backends, ""
}

// servicePortKey keys a Service's NodePorts by its port.
func servicePortKey(proto corev1.Protocol, port int) string {
	return fmt.Sprintf("%s/%d", proto, port)
}

// nodePortsOf reads the NodePorts the API server gave a Service.
func nodePortsOf(svc *corev1.Service) map[string]int {
	out := map[string]int{}
	for _, sp := range svc.Spec.Ports {
		if sp.NodePort != 0 {
			out[servicePortKey(sp.Protocol, int(sp.Port))] = int(sp.NodePort)
		}
	}
	return out
}

// combineDests is a pair's observation from its destinations' ones: the common
// verdict when they agree; when they differ, the verdict that is not want
// (so the cell shows the deviation), and the detail names each path.
func combineDests(obs []observation, ds []dest, want bool) observation {
	out := obs[0]
	if len(obs) == 1 {
		return out
	}
	agree := true
	var detail string
	for i, o := range obs {
		agree = agree && o.connected == obs[0].connected && !o.invalid
		if i > 0 {
			detail += "; "
		}
		detail += fmt.Sprintf("%s: %s", ds[i], o.detail)
	}
	out.detail = detail
	if agree {
		return out
	}
	out.invalid = false
	out.connected = !want
	for _, o := range obs {
		if o.invalid {
			out.invalid = true
		}
	}
	return out
}

// probeDest probes one destination of a pair.
func (e *Env) probeDest(pp pair, p *Probe, d dest, backends []string) observation {
	src, dst := e.Pods[pp.from], e.Pods[pp.to]
	if p.Protocol == corev1.ProtocolSCTP {
		return e.probeSCTP(src, dst, d.addr, d.port)
	}
	v := testbed.Probe(context.Background(), src, d.addr, d.port, p.Protocol)
	o := observation{connected: v.Outcome == testbed.Connected, detail: fmt.Sprintf("%s via %s:%d", v, d.addr, d.port)}
	if o.connected && !containsPodName(backends, v.Reply) {
		o.invalid = true
		o.detail = fmt.Sprintf("answered by %q, not by a backend of %s:%d (%v)", v.Reply, d.addr, d.port, backends)
	}
	return o
}

// explainBasis is what explain's verdicts are compared with: the probe's
// observation, except where the path decided before policy (expectVia).
// Explain answers the policy question, pod to pod, so on such a path it is
// compared with the catalog's policy table; the probe itself has already
// checked that the path refused every pair.
func explainBasis(p *Probe, pr *ProbeResult) (observed, expected Matrix) {
	if !pathRefuses(pr.Target, p.Protocol) {
		return pr.Observed, pr.Expected
	}
	policy := Matrix{}
	for from, row := range pr.Observed {
		for to := range row {
			v, _ := p.want(from, to)
			policy.set(from, to, v)
		}
	}
	return policy, policy
}

// viaNote is the report's line on where probes go.
func viaNote(v Via) string {
	switch v {
	case ViaPod:
		return "note: --via pod: every probe goes to the destination pod's IP"
	case ViaNodePort:
		return "note: --via nodeport: every Service is type NodePort (externalTrafficPolicy Cluster); each pair is probed on the NodePort of " +
			"its source's own node's address and of the next node's, and must give the expected verdict on both; " +
			"SCTP to a NodePort is dropped by Palisade whatever the policy (docs/design.md), so its expected table is all 0"
	}
	return "note: --via clusterip: probes go to the destination's Service ClusterIP (or its pod IP where the probe says target: pod)"
}
