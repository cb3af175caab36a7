package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/privileged"
)

// newNetNS creates a bind-mounted netns that tb closes and unmounts.
func newNetNS(tb testing.TB) ns.NetNS {
	tb.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("close netns %s: %v", n.Path(), err)
		}
		if err := testutils.UnmountNS(n); err != nil {
			tb.Errorf("unmount netns %s: %v", n.Path(), err)
		}
	})
	return n
}

// podNet is a pod wired to a node the way bridge wires it: the veth's
// container end eth0 in the pod netns, its host end vethpal0 in the node
// netns. The node netns stands in for the host's, which tests never touch.
type podNet struct {
	node, pod ns.NetNS
	host      hostVeth
}

func newPodNet(tb testing.TB) *podNet {
	tb.Helper()
	pn := &podNet{node: newNetNS(tb), pod: newNetNS(tb)}
	err := pn.node.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "vethpal0"
		veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(pn.pod.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth vethpal0/eth0: %w", err)
		}
		l, err := netlink.LinkByName("vethpal0")
		if err != nil {
			return fmt.Errorf("find vethpal0: %w", err)
		}
		pn.host = hostVeth{Name: "vethpal0", Index: l.Attrs().Index}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		tb.Fatalf("wire pod netns to node netns: %v", err)
	}
	return pn
}

func TestPrivilegedFindHostVeth(t *testing.T) {
	privileged.Require(t)
	pn := newPodNet(t)
	err := pn.pod.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "br0"
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
	})
	if err != nil {
		t.Fatalf("add br0 to pod netns: %v", err)
	}
	_, prev, err := parseConfig(netconf(t, "1.1.0", set("prevResult", prevResult(t, "1.1.0", pn.pod.Path()))))
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	otherHost := *prev
	otherHost.Interfaces = []*current.Interface{{Name: "cni0"}, {Name: "vethother"}, {Name: "eth0", Sandbox: pn.pod.Path()}}

	tests := []struct {
		name     string
		netns    string
		ifName   string
		prev     *current.Result
		wantCode uint
		wantMsg  []string
	}{
		{name: "peer of the container veth is found in the host netns", netns: pn.pod.Path(), ifName: "eth0"},
		{name: "peer is accepted when prevResult lists it as a host interface", netns: pn.pod.Path(), ifName: "eth0", prev: prev},
		{
			name: "peer missing from prevResult's host interfaces is an error", netns: pn.pod.Path(), ifName: "eth0", prev: &otherHost,
			wantCode: types.ErrInternal, wantMsg: []string{"vethpal0", pn.pod.Path(), "not among prevResult's host interfaces"},
		},
		{
			name: "missing container interface names it and the netns", netns: pn.pod.Path(), ifName: "eth9",
			wantCode: types.ErrInternal, wantMsg: []string{"eth9", pn.pod.Path()},
		},
		{
			name: "non-veth container interface is invalid config", netns: pn.pod.Path(), ifName: "br0",
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"veth-based pod network", "br0", pn.pod.Path()},
		},
		{
			name: "gone netns is invalid netns", netns: "/var/run/netns/palisade-test-gone", ifName: "eth0",
			wantCode: types.ErrInvalidNetNS,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got hostVeth
			err := pn.node.Do(func(ns.NetNS) error {
				var err error
				got, err = findHostVeth(tt.netns, tt.ifName, tt.prev)
				return err
			})
			if tt.wantCode != 0 {
				wantCNIError(t, cniError(verbAdd, "", err), tt.wantCode, tt.wantMsg...)
				return
			}
			if err != nil {
				t.Fatalf("findHostVeth: %v", err)
			}
			if diff := cmp.Diff(pn.host, got); diff != "" {
				t.Errorf("host veth (-want +got):\n%s", diff)
			}
		})
	}
}

// addVeth adds a veth from the node netns, host end hostName there and
// container end podName in pod.
func addVeth(tb testing.TB, node, pod ns.NetNS, hostName, podName string) {
	tb.Helper()
	err := node.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = hostName
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: podName, PeerNamespace: netlink.NsFd(int(pod.Fd()))})
	})
	if err != nil {
		tb.Fatalf("add veth %s/%s: %v", hostName, podName, err)
	}
}

// The fast path takes the host veth from prevResult only when the kernel
// confirms it; a prevResult naming someone else's veth must not be attached
// to (DESIGN.md "Whose packet is it").
func TestPrivilegedHostVethFromPrev(t *testing.T) {
	privileged.Require(t)
	pn := newPodNet(t)
	other := newNetNS(t)
	addVeth(t, pn.node, other, "vethother", "eth0")   // another pod's veth
	addVeth(t, pn.node, pn.pod, "vethsecond", "eth1") // this pod's second veth
	err := pn.node.Do(func(ns.NetNS) error {
		la := netlink.NewLinkAttrs()
		la.Name = "cni0"
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la})
	})
	if err != nil {
		t.Fatalf("add cni0 to node netns: %v", err)
	}
	host := func(names ...string) []*current.Interface {
		var ifs []*current.Interface
		for _, n := range names {
			ifs = append(ifs, &current.Interface{Name: n})
		}
		return append(ifs, &current.Interface{Name: "eth0", Sandbox: pn.pod.Path()})
	}
	tests := []struct {
		name       string
		netns      string
		interfaces []*current.Interface // nil: prevResult's as bridge writes it
		wantFast   bool
		wantErr    string // of findHostVeth, after the fallback; "" for vethpal0
	}{
		{name: "bridge's prevResult is proven without entering the netns", netns: pn.pod.Path(), wantFast: true},
		{name: "the pod's veth after others is found", netns: pn.pod.Path(), interfaces: host("vethother", "vethsecond", "cni0", "vethpal0"), wantFast: true},
		{name: "another pod's veth is refused", netns: pn.pod.Path(), interfaces: host("cni0", "vethother"), wantErr: "not among prevResult's host interfaces"},
		{name: "the pod's veth of another interface is refused", netns: pn.pod.Path(), interfaces: host("vethsecond"), wantErr: "not among prevResult's host interfaces"},
		{name: "a name that does not exist is refused", netns: pn.pod.Path(), interfaces: host("vethgone"), wantErr: "not among prevResult's host interfaces"},
		{name: "no host interfaces falls back to the netns", netns: pn.pod.Path(), interfaces: host()},
		{name: "this pod's veth for another pod's netns is refused", netns: other.Path(), wantErr: "not among prevResult's host interfaces"},
	}
	for _, ver := range cniVersions {
		_, prev, err := parseConfig(netconf(t, ver, set("prevResult", prevResult(t, ver, pn.pod.Path()))))
		if err != nil {
			t.Fatalf("parseConfig %s: %v", ver, err)
		}
		for _, tt := range tests {
			t.Run(tt.name+"/"+ver, func(t *testing.T) {
				p := *prev
				if tt.interfaces != nil {
					p.Interfaces = tt.interfaces
				}
				var (
					fast    hostVeth
					fastOK  bool
					got     hostVeth
					findErr error
				)
				err := pn.node.Do(func(ns.NetNS) error {
					fast, fastOK = hostVethFromPrev(tt.netns, "eth0", &p)
					got, findErr = findHostVeth(tt.netns, "eth0", &p)
					return nil
				})
				if err != nil {
					t.Fatalf("enter node netns: %v", err)
				}
				if fastOK != tt.wantFast {
					t.Errorf("hostVethFromPrev proved %v (%+v), want %v", fastOK, fast, tt.wantFast)
				}
				if fastOK && fast != pn.host {
					t.Errorf("hostVethFromPrev = %+v, want %+v", fast, pn.host)
				}
				if tt.wantErr != "" {
					if findErr == nil || !strings.Contains(findErr.Error(), tt.wantErr) {
						t.Errorf("findHostVeth = %+v, %v; want an error containing %q", got, findErr, tt.wantErr)
					}
					return
				}
				if findErr != nil {
					t.Fatalf("findHostVeth: %v", findErr)
				}
				if got != pn.host {
					t.Errorf("findHostVeth = %+v, want %+v", got, pn.host)
				}
			})
		}
	}
}

// fakeAgent serves the agentapi routes on a unix socket from canned state
// and records what the plugin sent.
type fakeAgent struct {
	mu     sync.Mutex
	status agentapi.Status
	// older answers ADD as agents before the answer named the programs.
	older     bool
	endpoints map[string]agentapi.Endpoint
	adds      []agentapi.AddRequest
	gcs       []agentapi.GCRequest
}

// startFakeAgent serves fa on a socket in a temp dir and returns its path.
func startFakeAgent(tb testing.TB, fa *fakeAgent) string {
	tb.Helper()
	socket := filepath.Join(tb.TempDir(), "agent.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		tb.Fatalf("listen on %s: %v", socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		writeJSON(w, http.StatusOK, fa.status)
	})
	mux.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.AddRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, agentapi.Error{Code: agentapi.CodeInvalidRequest, Message: err.Error()})
			return
		}
		fa.mu.Lock()
		defer fa.mu.Unlock()
		if !fa.status.Ready {
			writeJSON(w, http.StatusServiceUnavailable, agentapi.Error{Code: agentapi.CodeNotReady, Message: "agent not ready: " + fa.status.Reason})
			return
		}
		fa.adds = append(fa.adds, req)
		ep := agentapi.Endpoint{ID: agentapi.EndpointID(req.ContainerID, req.IfName), IPs: req.IPs, Revision: 1, Current: true}
		fa.endpoints[ep.ID] = ep
		resp := agentapi.AddResponse{Endpoint: ep, BPFRoot: fa.status.BPFRoot, AttachMode: fa.status.AttachMode}
		if fa.older {
			resp = agentapi.AddResponse{Endpoint: ep}
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("GET /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		ep, ok := fa.endpoints[r.PathValue("id")]
		if !ok {
			writeJSON(w, http.StatusNotFound, agentapi.Error{Code: agentapi.CodeNotFound, Message: "no endpoint " + r.PathValue("id")})
			return
		}
		writeJSON(w, http.StatusOK, ep)
	})
	mux.HandleFunc("DELETE /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		if _, ok := fa.endpoints[r.PathValue("id")]; !ok {
			writeJSON(w, http.StatusNotFound, agentapi.Error{Code: agentapi.CodeNotFound, Message: "no endpoint " + r.PathValue("id")})
			return
		}
		delete(fa.endpoints, r.PathValue("id"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		var req agentapi.GCRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, agentapi.Error{Code: agentapi.CodeInvalidRequest, Message: err.Error()})
			return
		}
		fa.mu.Lock()
		defer fa.mu.Unlock()
		fa.gcs = append(fa.gcs, req)
		writeJSON(w, http.StatusOK, agentapi.GCResponse{})
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	tb.Cleanup(func() { _ = srv.Close() })
	return socket
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

const (
	testContainerID = "ctr1"
	testPodArgs     = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=uid-1"
)

func TestPrivilegedVerbs(t *testing.T) {
	privileged.Require(t)
	ready := &agentapi.Status{Ready: true, AttachMode: "auto"}
	notReady := &agentapi.Status{Ready: false, Reason: "kubernetes caches not synced"}
	// known makes the fake agent know the pod's endpoint as ADD left it.
	known := func(pn *podNet) agentapi.Endpoint {
		return agentapi.Endpoint{
			ID: agentapi.EndpointID(testContainerID, "eth0"), ContainerID: testContainerID, IfName: "eth0",
			HostIfName: pn.host.Name, HostIfIndex: pn.host.Index,
			IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Revision: 3, Current: true,
		}
	}
	tests := []struct {
		name     string
		versions []string                 // default cniVersions
		status   *agentapi.Status         // nil: no agent listens on the socket
		older    bool                     // the agent's ADD answer does not name the programs
		endpoint func(*agentapi.Endpoint) // non-nil: the agent knows the endpoint, tweaked
		cmd      func(*skel.CmdArgs) error
		calls    int // default 1; every call must meet the expectation
		tweaks   []func(map[string]any)
		podArgs  *string // default testPodArgs
		wantCode uint    // 0: success
		wantMsg  []string
		// Placeholders in wantMsg: {socket} and {bpfRoot}.
		then func(t *testing.T, fa *fakeAgent, log string)
	}{
		{
			name: "ADD with the agent socket missing names the socket", cmd: cmdAdd,
			wantCode: types.ErrTryAgainLater, wantMsg: []string{"{socket}", "palisade-agent DaemonSet"},
		},
		{
			name: "ADD without prevResult says to chain palisade", status: ready, cmd: cmdAdd,
			tweaks:   []func(map[string]any){without("prevResult")},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"must be chained after the main plugin"},
			then: noAdds,
		},
		{
			name: "ADD without the pod in CNI_ARGS says palisade needs the kubelet's CNI_ARGS", status: ready, cmd: cmdAdd,
			podArgs:  ptr("IgnoreUnknown=1"),
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"needs the kubelet's CNI_ARGS"},
			then: noAdds,
		},
		{
			name: "ADD while the agent is not ready gives its reason", status: notReady, cmd: cmdAdd,
			wantCode: types.ErrTryAgainLater, wantMsg: []string{"{socket}", "kubernetes caches not synced"},
			then: noAdds,
		},
		{
			name: "ADD without the agent's pinned programs fails naming them and leaves no endpoint", status: ready, cmd: cmdAdd,
			wantCode: types.ErrInternal, wantMsg: []string{"vethpal0", "{bpfRoot}/progs/pal_from_pod"},
			then: registeredThenRemoved,
		},
		{
			name: "ADD with an older agent finds the programs through its status", status: ready, older: true, cmd: cmdAdd,
			wantCode: types.ErrInternal, wantMsg: []string{"vethpal0", "{bpfRoot}/progs/pal_from_pod"},
			then: registeredThenRemoved,
		},
		{
			name: "DEL of an endpoint the agent does not know succeeds", status: ready, cmd: cmdDel,
		},
		{
			name: "DEL with the agent down succeeds and logs what it skipped", cmd: cmdDel,
			then: func(t *testing.T, _ *fakeAgent, log string) {
				if !strings.Contains(log, "next GC") || !strings.Contains(log, "level=WARN") {
					t.Errorf("log has no warning about the skipped delete:\n%s", log)
				}
			},
		},
		{
			name: "DEL twice succeeds twice and forgets the endpoint", status: ready, cmd: cmdDel, calls: 2,
			endpoint: func(*agentapi.Endpoint) {},
			then: func(t *testing.T, fa *fakeAgent, _ string) {
				if len(fa.endpoints) != 0 {
					t.Errorf("agent still has endpoints %v", fa.endpoints)
				}
			},
		},
		{
			name: "DEL without prevResult succeeds", status: ready, cmd: cmdDel,
			tweaks: []func(map[string]any){without("prevResult")},
		},
		{
			name: "CHECK with the agent down is try again later", versions: checkVersions, cmd: cmdCheck,
			wantCode: types.ErrTryAgainLater, wantMsg: []string{"{socket}"},
		},
		{
			name: "CHECK of an endpoint the agent does not know is unknown container", status: ready, versions: checkVersions, cmd: cmdCheck,
			wantCode: types.ErrUnknownContainer,
		},
		{
			name: "CHECK of an endpoint whose policy is behind fails", status: ready, versions: checkVersions, cmd: cmdCheck,
			endpoint: func(ep *agentapi.Endpoint) { ep.Current = false },
			wantCode: types.ErrInternal, wantMsg: []string{"newer one is not programmed"},
		},
		{
			name: "CHECK of an endpoint with other IPs than prevResult fails", status: ready, versions: checkVersions, cmd: cmdCheck,
			endpoint: func(ep *agentapi.Endpoint) { ep.IPs = []netip.Addr{netip.MustParseAddr("10.244.1.6")} },
			wantCode: types.ErrInternal, wantMsg: []string{"10.244.1.6", "10.244.1.5"},
		},
		{
			name: "CHECK of an endpoint registered on another interface fails", status: ready, versions: checkVersions, cmd: cmdCheck,
			endpoint: func(ep *agentapi.Endpoint) { ep.HostIfIndex = 9999 },
			wantCode: types.ErrInternal, wantMsg: []string{"ifindex 9999", "vethpal0"},
		},
		{
			name: "CHECK without programs on the host veth fails naming it", status: ready, versions: checkVersions, cmd: cmdCheck,
			endpoint: func(*agentapi.Endpoint) {},
			wantCode: types.ErrInternal, wantMsg: []string{"vethpal0", bpf.ErrNotAttached.Error()},
		},
		{
			name: "STATUS with the agent down is plugin not available", versions: []string{"1.1.0"}, cmd: cmdStatus,
			wantCode: types.ErrPluginNotAvailable, wantMsg: []string{"{socket}"},
		},
		{
			name: "STATUS while the agent is not ready is plugin not available", versions: []string{"1.1.0"}, status: notReady, cmd: cmdStatus,
			wantCode: types.ErrPluginNotAvailable, wantMsg: []string{"kubernetes caches not synced"},
		},
		{
			name: "STATUS with a ready agent succeeds", versions: []string{"1.1.0"}, status: ready, cmd: cmdStatus,
		},
		{
			name: "GC forwards the valid attachments", versions: []string{"1.1.0"}, status: ready, cmd: cmdGC,
			tweaks: []func(map[string]any){without("prevResult"), set("cni.dev/valid-attachments", []map[string]string{
				{"containerID": "ctr1", "ifname": "eth0"}, {"containerID": "ctr2", "ifname": "net1"},
			})},
			then: func(t *testing.T, fa *fakeAgent, _ string) {
				want := []agentapi.GCRequest{{Valid: []agentapi.Attachment{
					{ContainerID: "ctr1", IfName: "eth0"}, {ContainerID: "ctr2", IfName: "net1"},
				}}}
				if diff := cmp.Diff(want, fa.gcs); diff != "" {
					t.Errorf("GC requests (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "GC with an empty list of valid attachments forwards it", versions: []string{"1.1.0"}, status: ready, cmd: cmdGC,
			tweaks: []func(map[string]any){without("prevResult"), set("cni.dev/valid-attachments", []any{})},
			then: func(t *testing.T, fa *fakeAgent, _ string) {
				if diff := cmp.Diff([]agentapi.GCRequest{{Valid: []agentapi.Attachment{}}}, fa.gcs); diff != "" {
					t.Errorf("GC requests (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "GC without a list of valid attachments forgets nothing", versions: []string{"1.1.0"}, status: ready, cmd: cmdGC,
			tweaks:   []func(map[string]any){without("prevResult")},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: []string{"cni.dev/valid-attachments"},
			then: func(t *testing.T, fa *fakeAgent, _ string) {
				if len(fa.gcs) != 0 {
					t.Errorf("agent received GC requests %v", fa.gcs)
				}
			},
		},
	}
	for _, tt := range tests {
		versions := tt.versions
		if versions == nil {
			versions = cniVersions
		}
		for _, ver := range versions {
			t.Run(tt.name+"/"+ver, func(t *testing.T) {
				pn := newPodNet(t)
				bpfRoot := t.TempDir() // empty: no pinned programs to attach
				fa := &fakeAgent{endpoints: map[string]agentapi.Endpoint{}, older: tt.older}
				socket := filepath.Join(t.TempDir(), "agent.sock")
				if tt.status != nil {
					fa.status = *tt.status
					fa.status.BPFRoot = bpfRoot
					socket = startFakeAgent(t, fa)
				}
				if tt.endpoint != nil {
					ep := known(pn)
					tt.endpoint(&ep)
					fa.endpoints[ep.ID] = ep
				}
				logFile := filepath.Join(t.TempDir(), "palisade.log")
				tweaks := append([]func(map[string]any){
					set("prevResult", prevResult(t, ver, pn.pod.Path())),
					set("agentSocket", socket), set("logFile", logFile), set("logLevel", "info"),
				}, tt.tweaks...)
				podArgs := testPodArgs
				if tt.podArgs != nil {
					podArgs = *tt.podArgs
				}
				args := &skel.CmdArgs{
					ContainerID: testContainerID, Netns: pn.pod.Path(), IfName: "eth0",
					Args: podArgs, StdinData: netconf(t, ver, tweaks...),
				}

				calls := max(tt.calls, 1)
				errs := make([]error, calls)
				err := pn.node.Do(func(ns.NetNS) error {
					for i := range errs {
						errs[i] = tt.cmd(args)
					}
					return nil
				})
				if err != nil {
					t.Fatalf("enter node netns: %v", err)
				}

				for i, err := range errs {
					if tt.wantCode == 0 {
						if err != nil {
							t.Errorf("call %d: %v", i+1, err)
						}
						continue
					}
					var msgs []string
					for _, m := range tt.wantMsg {
						msgs = append(msgs, strings.NewReplacer("{socket}", socket, "{bpfRoot}", bpfRoot).Replace(m))
					}
					wantCNIError(t, err, tt.wantCode, msgs...)
				}
				if tt.then == nil {
					return
				}
				log, err := os.ReadFile(logFile)
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("read log: %v", err)
				}
				fa.mu.Lock()
				defer fa.mu.Unlock()
				tt.then(t, fa, string(log))
			})
		}
	}
}

// noAdds asserts that the agent registered nothing.
func noAdds(t *testing.T, fa *fakeAgent, _ string) {
	t.Helper()
	if len(fa.adds) != 0 {
		t.Errorf("agent received ADD requests %+v", fa.adds)
	}
}

// registeredThenRemoved asserts that the plugin registered the endpoint and
// took it back: the agent keeps nothing of a failed ADD.
func registeredThenRemoved(t *testing.T, fa *fakeAgent, _ string) {
	t.Helper()
	if len(fa.adds) != 1 {
		t.Errorf("agent received %d ADD requests, want 1: %+v", len(fa.adds), fa.adds)
	}
	if len(fa.endpoints) != 0 {
		t.Errorf("agent still has endpoints %+v", fa.endpoints)
	}
}

func ptr[T any](v T) *T { return &v }

// BenchmarkPrivilegedFindHostVeth compares the two ways ADD finds the host
// veth: proven from prevResult in the host netns, and by entering the pod's
// netns (the fallback, and the only way before).
func BenchmarkPrivilegedFindHostVeth(b *testing.B) {
	privileged.Require(b)
	pn := newPodNet(b)
	_, prev, err := parseConfig(netconf(b, "0.3.1", set("prevResult", prevResult(b, "0.3.1", pn.pod.Path()))))
	if err != nil {
		b.Fatalf("parseConfig: %v", err)
	}
	ways := []struct {
		name string
		find func() (hostVeth, error)
	}{
		{"prevResult", func() (hostVeth, error) { return findHostVeth(pn.pod.Path(), "eth0", prev) }},
		{"netns", func() (hostVeth, error) { return hostVethFromNetns(pn.pod.Path(), "eth0", prev) }},
	}
	for _, w := range ways {
		b.Run(w.name, func(b *testing.B) {
			err := pn.node.Do(func(ns.NetNS) error {
				for b.Loop() {
					hv, err := w.find()
					if err != nil {
						return err
					}
					if hv != pn.host {
						return fmt.Errorf("found %+v, want %+v", hv, pn.host)
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		})
	}
}
