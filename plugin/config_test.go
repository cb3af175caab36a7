package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// cniVersions are the versions palisade supports; every netconf test runs
// over all of them.
var cniVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// checkVersions are those whose configs allow CHECK (skel refuses it for
// 0.3.x before palisade's code runs; TestVersionGates shows that).
var checkVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// testSandbox is the pod netns path in fixtures that never enter it.
const testSandbox = "/var/run/netns/pod"

// prevResult is what bridge (flannel's delegate) hands the next plugin: the
// bridge, the host veth, the container interface and its address, in
// version ver, as the raw JSON object a netconf carries.
func prevResult(tb testing.TB, ver, sandbox string) map[string]any {
	tb.Helper()
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: "cni0", Mac: "0a:58:0a:f4:01:01"},
			{Name: "vethpal0", Mac: "0a:58:0a:f4:01:02"},
			{Name: "eth0", Mac: "0a:58:0a:f4:01:05", Sandbox: sandbox},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(2),
			Address:   net.IPNet{IP: net.IPv4(10, 244, 1, 5).To4(), Mask: net.CIDRMask(24, 32)},
			Gateway:   net.IPv4(10, 244, 1, 1).To4(),
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4(10, 244, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}}},
	}
	conv, err := r.GetAsVersion(ver)
	if err != nil {
		tb.Fatalf("convert fixture result to %s: %v", ver, err)
	}
	var buf bytes.Buffer
	if err := conv.PrintTo(&buf); err != nil {
		tb.Fatalf("encode fixture result: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		tb.Fatalf("decode fixture result: %v", err)
	}
	return m
}

// netconf builds palisade's netconf as the runtime passes it, chained after
// bridge, then applies tweaks.
func netconf(tb testing.TB, ver string, tweaks ...func(map[string]any)) []byte {
	tb.Helper()
	m := map[string]any{
		"cniVersion": ver,
		"name":       "cbr0",
		"type":       "palisade",
		"prevResult": prevResult(tb, ver, testSandbox),
	}
	for _, tw := range tweaks {
		tw(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		tb.Fatalf("encode netconf: %v", err)
	}
	return b
}

func set(key string, v any) func(map[string]any) {
	return func(m map[string]any) { m[key] = v }
}

func without(key string) func(map[string]any) {
	return func(m map[string]any) { delete(m, key) }
}

func TestParseConfigPrevResult(t *testing.T) {
	for _, ver := range cniVersions {
		t.Run(ver, func(t *testing.T) {
			in := netconf(t, ver)
			conf, prev, err := parseConfig(in)
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			t.Run("prevResult is parsed into the current result type", func(t *testing.T) {
				if prev == nil {
					t.Fatal("prevResult = nil")
				}
				got, err := containerIPs(prev, "eth0")
				if err != nil {
					t.Fatalf("containerIPs: %v", err)
				}
				if diff := cmp.Diff([]netip.Addr{netip.MustParseAddr("10.244.1.5")}, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("container IPs (-want +got):\n%s", diff)
				}
			})
			t.Run("prevResult passes through unchanged in the netconf's version", func(t *testing.T) {
				// What types.PrintResult(prev, conf.CNIVersion) writes to stdout.
				out, err := prev.GetAsVersion(conf.CNIVersion)
				if err != nil {
					t.Fatalf("convert prevResult back to %s: %v", conf.CNIVersion, err)
				}
				var buf bytes.Buffer
				if err := out.PrintTo(&buf); err != nil {
					t.Fatalf("print: %v", err)
				}
				var got map[string]any
				if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
					t.Fatalf("decode output: %v", err)
				}
				if diff := cmp.Diff(prevResult(t, ver, testSandbox), got); diff != "" {
					t.Errorf("result differs from prevResult (-in +out):\n%s", diff)
				}
			})
		})
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		stdin   []byte
		want    *Conf // compared on the fields below; nil when an error is wanted
		wantErr string
	}{
		{
			name:  "defaults apply when agentSocket and logLevel are unset",
			stdin: netconf(t, "1.1.0"),
			want:  &Conf{AgentSocket: agentapi.DefaultSocket, LogLevel: "warn", level: slog.LevelWarn},
		},
		{
			name: "explicit settings are kept",
			stdin: netconf(t, "1.1.0", set("agentSocket", "/run/other/agent.sock"),
				set("logLevel", "debug"), set("logFile", "/var/log/palisade.log")),
			want: &Conf{AgentSocket: "/run/other/agent.sock", LogLevel: "debug", LogFile: "/var/log/palisade.log", level: slog.LevelDebug},
		},
		{
			name:  "missing prevResult is no parse error, ADD rejects it instead",
			stdin: netconf(t, "1.1.0", without("prevResult")),
			want:  &Conf{AgentSocket: agentapi.DefaultSocket, LogLevel: "warn", level: slog.LevelWarn},
		},
		{
			name:    "unknown logLevel is rejected",
			stdin:   netconf(t, "1.1.0", set("logLevel", "verbose")),
			wantErr: `unknown logLevel "verbose": use debug, info, warn or error`,
		},
		{
			name:    "relative agentSocket is rejected",
			stdin:   netconf(t, "1.1.0", set("agentSocket", "agent.sock")),
			wantErr: `agentSocket "agent.sock" must be an absolute path`,
		},
		{
			name:    "malformed JSON says the netconf does not parse",
			stdin:   []byte(`{"cniVersion": "1.1.0", "type": "palisade",`),
			wantErr: "parse palisade netconf from stdin: unexpected end of JSON input",
		},
		{
			name: "malformed prevResult is rejected",
			stdin: netconf(t, "1.1.0", set("prevResult", map[string]any{
				"cniVersion": "1.1.0", "ips": []any{map[string]any{"address": "10.244.1.500/24"}},
			})),
			wantErr: "parse prevResult: ",
		},
		{
			name: "a prevResult IP without an address is rejected, not printed back as <nil>",
			stdin: netconf(t, "0.4.0", set("prevResult", map[string]any{
				"cniVersion": "0.4.0", "ips": []any{map[string]any{"version": "4"}},
			})),
			wantErr: "prevResult ips[0] has no address",
		},
		{
			name: "a prevResult route without a dst is rejected",
			stdin: netconf(t, "1.0.0", set("prevResult", map[string]any{
				"cniVersion": "1.0.0", "routes": []any{map[string]any{}},
			})),
			wantErr: "prevResult routes[0] has no dst",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, prev, err := parseConfig(tt.stdin)
			if tt.wantErr != "" {
				var ce *configError
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseConfig error = %v, want a config error containing %q", err, tt.wantErr)
				}
				if conf != nil || prev != nil {
					t.Errorf("parseConfig returned a config with its error")
				}
				return
			}
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			got := &Conf{AgentSocket: conf.AgentSocket, LogLevel: conf.LogLevel, LogFile: conf.LogFile, level: conf.level}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(Conf{})); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

// TestChainedVerbsDemandPrevResult runs ADD and CHECK on a netconf without
// prevResult; both stop before touching a netns or the agent.
func TestChainedVerbsDemandPrevResult(t *testing.T) {
	const want = `palisade must be chained after the main plugin: add {"type":"palisade"} after flannel and portmap in the conflist`
	for _, ver := range cniVersions {
		for name, cmd := range map[string]func(*skel.CmdArgs) error{"ADD": cmdAdd, "CHECK": cmdCheck} {
			t.Run(ver+"/"+name, func(t *testing.T) {
				err := cmd(&skel.CmdArgs{
					ContainerID: "ctr", Netns: testSandbox, IfName: "eth0",
					Args:      "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
					StdinData: netconf(t, ver, without("prevResult")),
				})
				wantCNIError(t, err, types.ErrInvalidNetworkConfig, want)
			})
		}
	}
}

func TestParsePodArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    string
		want    string // namespace/name/uid
		wantErr string
	}{
		{
			name: "kubelet's CNI_ARGS give the pod identity",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=ctr;K8S_POD_UID=u1",
			want: "default/web/u1",
		},
		{
			name: "unknown keys are allowed with IgnoreUnknown",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;EXTRA=1",
			want: "default/web/",
		},
		{
			name:    "missing pod name says palisade needs the kubelet's CNI_ARGS",
			args:    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default",
			wantErr: "palisade enforces Kubernetes NetworkPolicy and needs the kubelet's CNI_ARGS",
		},
		{
			name:    "no CNI_ARGS at all is the same error",
			args:    "",
			wantErr: "palisade enforces Kubernetes NetworkPolicy and needs the kubelet's CNI_ARGS",
		},
		{
			name:    "malformed CNI_ARGS is rejected",
			args:    "K8S_POD_NAME",
			wantErr: "parse CNI_ARGS",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pa, err := parsePodArgs(tt.args)
			if tt.wantErr != "" {
				var ce *configError
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parsePodArgs error = %v, want a config error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePodArgs: %v", err)
			}
			got := pa.pod() + "/" + string(pa.K8S_POD_UID)
			if got != tt.want {
				t.Errorf("pod = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestContainerIPs(t *testing.T) {
	ipc := func(addr string, iface *int) *current.IPConfig {
		p := netip.MustParsePrefix(addr)
		return &current.IPConfig{Interface: iface, Address: net.IPNet{
			IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		}}
	}
	ifaces := []*current.Interface{{Name: "cni0"}, {Name: "vethpal0"}, {Name: "eth0", Sandbox: testSandbox}}
	tests := []struct {
		name    string
		ips     []*current.IPConfig
		want    []string
		wantErr string
	}{
		{
			name: "addresses of the container interface are the pod's",
			ips:  []*current.IPConfig{ipc("10.244.1.5/24", current.Int(2)), ipc("fd00::5/64", current.Int(2))},
			want: []string{"10.244.1.5", "fd00::5"},
		},
		{
			name: "addresses of host interfaces are not the pod's",
			ips:  []*current.IPConfig{ipc("10.244.1.1/24", current.Int(0)), ipc("10.244.1.5/24", current.Int(2))},
			want: []string{"10.244.1.5"},
		},
		{
			name: "addresses without an interface index count as the pod's",
			ips:  []*current.IPConfig{ipc("10.244.1.5/24", nil)},
			want: []string{"10.244.1.5"},
		},
		{
			name: "IPv4-mapped addresses are unmapped",
			ips:  []*current.IPConfig{{Interface: current.Int(2), Address: net.IPNet{IP: net.ParseIP("10.244.1.5"), Mask: net.CIDRMask(24, 32)}}},
			want: []string{"10.244.1.5"},
		},
		{
			name:    "no address for the container interface is an error",
			ips:     []*current.IPConfig{ipc("10.244.1.1/24", current.Int(0)), ipc("10.244.1.9/24", current.Int(7))},
			wantErr: "prevResult assigns no IP address to eth0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := containerIPs(&current.Result{Interfaces: ifaces, IPs: tt.ips}, "eth0")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("containerIPs error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("containerIPs: %v", err)
			}
			var gotS []string
			for _, a := range got {
				gotS = append(gotS, a.String())
			}
			if diff := cmp.Diff(tt.want, gotS); diff != "" {
				t.Errorf("IPs (-want +got):\n%s", diff)
			}
		})
	}
}

// wantCNIError asserts that err is a *types.Error with code and a message
// containing each of msgs.
func wantCNIError(tb testing.TB, err error, code uint, msgs ...string) {
	tb.Helper()
	var ce *types.Error
	if !errors.As(err, &ce) {
		tb.Fatalf("error = %v (%T), want a *types.Error with code %d", err, err, code)
	}
	if ce.Code != code {
		tb.Errorf("code = %d, want %d (msg %q, details %q)", ce.Code, code, ce.Msg, ce.Details)
	}
	for _, m := range msgs {
		if !strings.Contains(ce.Msg, m) {
			tb.Errorf("message %q does not contain %q (details %q)", ce.Msg, m, ce.Details)
		}
	}
}
