package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

func TestParseTo(t *testing.T) {
	for _, tt := range []struct {
		in           string
		target       string
		port         uint16
		proto, error string
	}{
		{in: "prod/backend", target: "prod/backend"},
		{in: "prod/backend:6379", target: "prod/backend", port: 6379},
		{in: "prod/backend:53/udp", target: "prod/backend", port: 53, proto: "UDP"},
		{in: "10.244.1.5:80/TCP", target: "10.244.1.5", port: 80, proto: "TCP"},
		{in: "fd00::5", target: "fd00::5"},
		{in: "[fd00::5]:443", target: "fd00::5", port: 443},
		{in: "prod/backend:http", error: "write PORT/PROTOCOL"},
		{in: "prod/backend:70000", error: "port must be 1-65535"},
	} {
		target, port, proto, err := parseTo(tt.in)
		if tt.error != "" {
			if err == nil || !strings.Contains(err.Error(), tt.error) {
				t.Errorf("parseTo(%q) error %v, want %q", tt.in, err, tt.error)
			}
			continue
		}
		if err != nil || target != tt.target || port != tt.port || proto != tt.proto {
			t.Errorf("parseTo(%q) = %q %d %q %v, want %q %d %q", tt.in, target, port, proto, err, tt.target, tt.port, tt.proto)
		}
	}
}

// fakeAgent answers on a unix socket with canned JSON and records requests.
func fakeAgent(t *testing.T, routes map[string]any) (string, *[]string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	mux := http.NewServeMux()
	for pattern, body := range routes {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			seen = append(seen, r.Method+" "+r.URL.RequestURI())
			if e, ok := body.(agentapi.Error); ok {
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(e)
				return
			}
			if fs, ok := body.([]agentapi.Flow); ok {
				for _, f := range fs {
					_ = json.NewEncoder(w).Encode(f)
				}
				return
			}
			_ = json.NewEncoder(w).Encode(body)
		})
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock, &seen
}

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCommands(t *testing.T) {
	sock, seen := fakeAgent(t, map[string]any{
		"GET /v1/status": agentapi.Status{Version: "v1", Ready: true, AttachMode: "tcx", Endpoints: 2, NodeName: "node-1", APIConnected: true,
			Maps: []agentapi.MapFill{{Map: "ipcache", Entries: 5, Capacity: 10}}},
		"GET /v1/endpoints": []agentapi.Endpoint{{ID: "c1_eth0", HostIfIndex: 7, PodNamespace: "prod", PodName: "backend", Adopted: true, HostIfName: "veth1", Revision: 3, Current: true,
			Identity: 300, IngressIsolated: true, Policies: []string{"prod/deny"}}},
		"POST /v1/explain": []agentapi.Explanation{{
			From: agentapi.Peer{Pod: "prod/frontend", IP: "10.244.1.11"}, To: agentapi.Peer{Pod: "prod/backend", IP: "10.244.1.10"},
			Protocol: "TCP", Port: 6379,
			Ingress: &agentapi.DirectionVerdict{Pod: "prod/backend", Reason: "no policy allows it", Fix: "add x to y",
				Policies: []agentapi.PolicyVerdict{{Policy: "prod/deny", Rules: []agentapi.RuleVerdict{}}}},
		}},
		"GET /v1/policy": agentapi.Error{Code: agentapi.CodeNotFound, Message: "pod lab/x runs on node node-2, not on node-1"},
		"GET /v1/flows": []agentapi.Flow{{Verdict: "dropped", Direction: "ingress", Pod: "prod/backend", Protocol: "TCP",
			Source:      agentapi.FlowPeer{IP: "10.244.1.11", Port: 40000, Pod: "prod/frontend"},
			Destination: agentapi.FlowPeer{IP: "10.244.1.10", Port: 6379, Pod: "prod/backend"}, Summary: "no policy allows"}},
	})
	for _, tt := range []struct {
		args     []string
		code     int
		out, err []string // substrings
		request  string
	}{
		{args: []string{"status"}, out: []string{"Ready:", "yes", "Map ipcache:", "5 / 10 (50.0%)", "connected"}, request: "GET /v1/status?detail=true"},
		{args: []string{"status", "-o", "json"}, out: []string{`"attachMode": "tcx"`}, request: "GET /v1/status?detail=true"},
		{args: []string{"endpoints"}, out: []string{"prod/backend", "veth1", "isolated", "open", "prod/deny", "adopted"}, request: "GET /v1/endpoints"},
		{args: []string{"explain", "--from", "prod/frontend", "--to", "prod/backend:6379/TCP"},
			out: []string{"TCP/6379: DENIED", "no policy allows it", "To allow it: add x to y", "only isolates"}, request: "POST /v1/explain"},
		{args: []string{"policy", "lab/x", "-o", "json"}, code: 1, err: []string{"runs on node node-2"}, request: "GET /v1/policy?pod=lab%2Fx"},
		{args: []string{"flows", "--verdict", "drop", "--pod", "prod/backend"}, out: []string{"dropped", "prod/frontend 10.244.1.11:40000", "no policy allows"},
			request: "GET /v1/flows?pod=prod%2Fbackend&verdict=dropped"},
		{args: []string{"explain", "--from", "prod/frontend"}, code: 2, err: []string{"both --from and --to are required"}},
		{args: []string{"flows", "--verdict", "maybe"}, code: 2, err: []string{`--verdict "maybe"`}},
		{args: []string{"status", "-o", "yaml"}, out: []string{"attachMode: tcx", "nodeName: node-1"}, request: "GET /v1/status?detail=true"},
		{args: []string{"-o", "json", "status"}, out: []string{`"attachMode": "tcx"`}, request: "GET /v1/status?detail=true"},
		{args: []string{"status", "--output=wide"}, out: []string{"BPF root:", "Socket:"}, request: "GET /v1/status?detail=true"},
		{args: []string{"status", "-o", "xml"}, code: 2, err: []string{`-o "xml": use table, wide, json, yaml`}},
		{args: []string{"status", "extra"}, code: 2, err: []string{`unexpected "extra"`}},
		{args: []string{"endpoints", "-o", "wide"}, out: []string{"ENDPOINT", "IFINDEX", "c1_eth0"}, request: "GET /v1/endpoints"},
		{args: []string{"endpoints", "-o", "yaml"}, out: []string{"podName: backend", "hostIfName: veth1"}, request: "GET /v1/endpoints"},
		{args: []string{"version", "-o", "json"}, out: []string{`"client": "dev"`, `"agent": "v1"`}, request: "GET /v1/status"},
		{args: []string{"version", "--client"}, out: []string{"Client: dev"}},
		{args: []string{"completion", "bash"}, out: []string{"bash completion", "palisadectl"}},
		{args: []string{"--help"}, out: []string{"Available Commands:", "status", "explain", "completion", "version", "--output"}},
		{args: []string{"explain", "--help"}, out: []string{"--all-nodes", "--from"}},
		{args: []string{}, code: 2, err: []string{"name a command"}},
		{args: []string{"status", "--bogus"}, code: 2, err: []string{"unknown flag: --bogus"}},
		{args: []string{"policy"}, code: 2, err: []string{"name one pod as NAMESPACE/POD"}},
		{args: []string{"frobnicate"}, code: 2, err: []string{`unknown command "frobnicate"`, "--help"}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			*seen = nil
			code, out, errOut := runCLI(append(tt.args, "--socket", sock)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tt.code, errOut)
			}
			for _, s := range tt.out {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tt.err {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut)
				}
			}
			var want []string
			if tt.request != "" {
				want = []string{tt.request}
			}
			if diff := cmp.Diff(want, *seen); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAgentDown(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	code, _, errOut := runCLI("status", "--socket", sock)
	if code != exitError || !strings.Contains(errOut, "no palisade-agent answers on "+sock) || !strings.Contains(errOut, "are you root") {
		t.Errorf("exit %d, stderr %q: want 1 and a message naming the socket and what to check", code, errOut)
	}
}

// TestNotReady checks the exit code that tells "the agent is not ready"
// from an error, after the status was printed.
func TestNotReady(t *testing.T) {
	sock, _ := fakeAgent(t, map[string]any{
		"GET /v1/status": agentapi.Status{Version: "v1", Ready: false, Reason: "waiting for the first policy sync", NodeName: "node-1"},
	})
	for _, format := range []string{"table", "json"} {
		code, out, errOut := runCLI("status", "-o", format, "--socket", sock)
		if code != exitNotReady {
			t.Errorf("-o %s: exit %d, want %d", format, code, exitNotReady)
		}
		if !strings.Contains(out, "waiting for the first policy sync") {
			t.Errorf("-o %s: output lacks the reason:\n%s", format, out)
		}
		if !strings.Contains(errOut, "not ready") {
			t.Errorf("-o %s: stderr lacks 'not ready': %q", format, errOut)
		}
	}
}
