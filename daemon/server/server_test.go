package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/controller/controllertest"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/identity"
)

const node = "node-1"

type agent struct {
	dp     *controllertest.Datapath
	pods   cache.Indexer
	client *agentapi.Client
	socket string
	links  map[int]string
}

// startAgent serves a Server over a controller that writes to a fake
// datapath, with the cluster fed through informer stores.
func startAgent(t *testing.T, pprof bool) *agent {
	t.Helper()
	a := &agent{dp: &controllertest.Datapath{}, links: map[int]string{}}
	cluster, stores := controllertest.NewCluster()
	a.pods = stores.Pods
	if err := stores.Namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	reg, err := endpoint.Open(filepath.Join(t.TempDir(), "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ctrl := controller.New(controller.Config{
		Log: log, NodeName: node, Cluster: cluster, Registry: reg, Datapath: a.dp, Alloc: identity.NewAllocator(),
		NodeIPs: func() ([]netip.Addr, error) { return nil, nil },
		Persist: func(*identity.Allocator) error { return nil },
	})
	var linksMu sync.Mutex
	mgr := &endpoint.Manager{
		Log: log, NodeName: node, Registry: reg, Program: ctrl, Attach: a.dp, Pods: cluster.Pods,
		Alive: func(index int, name string) (bool, error) {
			linksMu.Lock()
			defer linksMu.Unlock()
			return a.links[index] == name, nil
		},
	}
	srv := &Server{
		Log: log, Version: "test", BPFRoot: "/sys/fs/bpf/test", AttachMode: "auto", Endpoints: mgr, Controller: ctrl,
		Ready: func() (bool, string) { return ctrl.Synced(), "first sync" }, Pprof: pprof,
	}
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	a.socket = filepath.Join(dir, "run", "agent.sock")
	served := make(chan error, 1)
	go ctrl.Run(ctx)
	go func() { served <- srv.Serve(ctx, a.socket) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	a.client = agentapi.NewClient(a.socket)
	waitFor(t, "the first sync and the socket", func() bool {
		st, err := a.client.Status(context.Background())
		return err == nil && st.Ready
	})
	return a
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *agent) addPod(t *testing.T, name string, phase corev1.PodPhase) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
	if err := a.pods.Add(p); err != nil {
		t.Fatal(err)
	}
}

func addRequest(name string, ifindex int) *agentapi.AddRequest {
	return &agentapi.AddRequest{
		ContainerID: "c-" + name, IfName: "eth0", PodNamespace: "prod", PodName: name, PodUID: "uid-" + name,
		HostIfName: "veth-" + name, HostIfIndex: ifindex, IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 1, byte(ifindex)})},
	}
}

// TestServerAddWritesBeforeAnswering: the answer to ADD comes only once
// the pod's policy is in the maps (written on its own from the last sync),
// and the sync that follows writes it again with the rest.
func TestServerAddWritesBeforeAnswering(t *testing.T) {
	a := startAgent(t, false)
	a.addPod(t, "web", corev1.PodRunning)
	resp, err := a.client.Add(context.Background(), addRequest("web", 4))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Endpoint.Current || resp.BPFRoot != "/sys/fs/bpf/test" {
		t.Errorf("answer %+v: want a current endpoint and the bpf root", resp)
	}
	answered := a.dp.Calls()
	if !slices.Contains(answered, fmt.Sprintf("apply-endpoint %d c-web_eth0", resp.Endpoint.Revision)) {
		t.Errorf("answered before the endpoint's policy was written: writes %v", answered)
	}
	waitFor(t, "the sync after the ADD", func() bool {
		return slices.ContainsFunc(a.dp.Calls(), func(c string) bool { return strings.HasPrefix(c, "apply ") && strings.Contains(c, "c-web_eth0") })
	})
	calls := a.dp.Calls()
	own := slices.Index(calls, fmt.Sprintf("apply-endpoint %d c-web_eth0", resp.Endpoint.Revision))
	sync := slices.IndexFunc(calls, func(c string) bool { return strings.HasPrefix(c, "apply ") && strings.Contains(c, "c-web_eth0") })
	if own > sync {
		t.Errorf("the whole sync wrote before the endpoint's own write: %v", calls)
	}
}

// TestServerAddOfUnknownPodLeavesNothing: an ADD whose pod never shows up
// fails with PodUnknown and removes what it registered (the error of that
// removal used to be dropped).
func TestServerAddOfUnknownPodLeavesNothing(t *testing.T) {
	a := startAgent(t, false)
	_, err := a.client.Add(context.Background(), addRequest("ghost", 5))
	var apiErr *agentapi.Error
	if !errors.As(err, &apiErr) || apiErr.Code != agentapi.CodePodUnknown {
		t.Fatalf("ADD of an unknown pod: %v, want %s", err, agentapi.CodePodUnknown)
	}
	eps, err := a.client.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 0 {
		t.Errorf("endpoints after the failed ADD: %v", eps)
	}
	calls := a.dp.Calls()
	rm, det := slices.Index(calls, "remove 5"), slices.Index(calls, "detach 5 c-ghost_eth0")
	if rm < 0 || det < 0 || rm > det {
		t.Errorf("want the maps cleared, then the programs detached: %v", calls)
	}
}

func TestServerDeleteAndGC(t *testing.T) {
	a := startAgent(t, false)
	ctx := context.Background()
	for i, name := range []string{"web", "db", "done"} {
		a.addPod(t, name, corev1.PodRunning)
		req := addRequest(name, 10+i)
		if _, err := a.client.Add(ctx, req); err != nil {
			t.Fatal(err)
		}
		a.links[req.HostIfIndex] = req.HostIfName
	}
	if err := a.client.Delete(ctx, "c-web_eth0"); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Delete(ctx, "c-web_eth0"); !errors.Is(err, agentapi.ErrEndpointNotFound) {
		t.Errorf("second DELETE: %v, want not found", err)
	}
	// "done"'s veth went away; "db" still runs: a GC listing neither
	// removes only "done".
	delete(a.links, 12)
	gc, err := a.client.GC(ctx, &agentapi.GCRequest{Valid: []agentapi.Attachment{}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"c-done_eth0"}; !slices.Equal(gc.Removed, want) {
		t.Errorf("GC removed %v, want %v", gc.Removed, want)
	}
	eps, err := a.client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].ID != "c-db_eth0" {
		t.Errorf("endpoints after GC: %+v, want only c-db_eth0", eps)
	}
}

func rawRequest(t *testing.T, socket, method, path string, body io.Reader) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}, Timeout: 30 * time.Second}
	req, err := http.NewRequest(method, "http://agent"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSocketLimits(t *testing.T) {
	a := startAgent(t, false)
	big := bytes.Repeat([]byte(" "), MaxRequestBytes+1)
	code, body := rawRequest(t, a.socket, http.MethodPost, "/v1/gc", bytes.NewReader(big))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, string(agentapi.CodeTooLarge)) {
		t.Errorf("oversized body: %d %s, want 413 %s", code, body, agentapi.CodeTooLarge)
	}
	if code, _ := rawRequest(t, a.socket, http.MethodGet, "/debug/pprof/heap", nil); code != http.StatusNotFound {
		t.Errorf("pprof without --pprof: %d, want 404", code)
	}
	withPprof := startAgent(t, true)
	if code, _ := rawRequest(t, withPprof.socket, http.MethodGet, "/debug/pprof/heap", nil); code != http.StatusOK {
		t.Errorf("pprof with --pprof: %d, want 200", code)
	}
}

// clientEnv makes the test binary, re-run as a child, one request's client.
const clientEnv = "PALISADE_TEST_SOCKET_CLIENT"

// TestHelperSocketClient is the child of TestPrivilegedSocketRefusesNonRoot;
// it prints the status code of GET /v1/status.
func TestHelperSocketClient(t *testing.T) {
	socket := os.Getenv(clientEnv)
	if socket == "" {
		t.Skip("helper process only")
	}
	code, body := rawRequest(t, socket, http.MethodGet, "/v1/status", nil)
	fmt.Printf("STATUS %d %s\n", code, strings.TrimSpace(body))
}

// TestPrivilegedSocketRefusesNonRoot: even when the socket's mode lets an
// unprivileged process connect, the agent answers only root (SO_PEERCRED).
func TestPrivilegedSocketRefusesNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("PALISADE_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("privileged test needs root")
		}
		t.Skip("privileged test: run as root")
	}
	a := startAgent(t, false)
	// Loosen what Serve restricted, as a misconfigured hostPath might,
	// and the test's own directories up to the temporary root.
	for p := a.socket; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	// The child runs this test binary, from where it may read it.
	bin := filepath.Join(t.TempDir(), "client.test")
	exe, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	for p := filepath.Dir(bin); p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run := func(uid uint32) string {
		cmd := exec.Command(bin, "-test.run=^TestHelperSocketClient$", "-test.v")
		cmd.Env = append(os.Environ(), clientEnv+"="+a.socket)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		return string(out)
	}
	if out := run(65534); !strings.Contains(out, "STATUS 403") || !strings.Contains(out, "root only") {
		t.Errorf("uid 65534 got:\n%s\nwant 403, root only", out)
	}
	if out := run(0); !strings.Contains(out, "STATUS 200") {
		t.Errorf("root got:\n%s\nwant 200", out)
	}
	var st agentapi.Status
	if _, body := rawRequest(t, a.socket, http.MethodGet, "/v1/status", nil); json.Unmarshal([]byte(body), &st) != nil || !st.Ready {
		t.Errorf("root in-process status: %s", body)
	}
}
