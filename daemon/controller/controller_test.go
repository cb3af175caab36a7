package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/controller/controllertest"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/identity"
)

// localNode is the node the fixture's controller runs on.
const localNode = "node-1"

type fixture struct {
	c        *Controller
	dp       *controllertest.Datapath
	stores   *controllertest.Stores
	reg      *endpoint.Registry
	failures atomic.Int32
}

func newFixture(t *testing.T, dp *controllertest.Datapath) *fixture {
	t.Helper()
	cluster, stores := controllertest.NewCluster()
	reg, err := endpoint.Open(filepath.Join(t.TempDir(), "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dp: dp, stores: stores, reg: reg}
	f.c = New(Config{
		Log: slog.New(slog.DiscardHandler), NodeName: localNode, Cluster: cluster, Registry: reg, Datapath: dp,
		Alloc: identity.NewAllocator(), NodeIPs: func() ([]netip.Addr, error) { return nil, nil },
		Persist:   func(*identity.Allocator) error { return nil },
		OnFailure: func(error) { f.failures.Add(1) },
	})
	if err := stores.Namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	return f
}

// start runs the sync loop until the test ends.
func (f *fixture) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// local registers a Running pod of this node with an endpoint.
func (f *fixture) local(t *testing.T, name string, ifindex int) agentapi.Endpoint {
	t.Helper()
	ip := netip.AddrFrom4([4]byte{10, 244, 1, byte(ifindex)})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, UID: types.UID("uid-" + name), Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: localNode},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip.String()}}},
	}
	if err := f.stores.Pods.Add(pod); err != nil {
		t.Fatal(err)
	}
	ep := agentapi.Endpoint{ID: name + "_eth0", PodNamespace: "prod", PodName: name, PodUID: string(pod.UID),
		HostIfName: "veth-" + name, HostIfIndex: ifindex, IPs: []netip.Addr{ip}}
	if err := f.reg.Put(ep); err != nil {
		t.Fatal(err)
	}
	return ep
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

func (f *fixture) waitCall(t *testing.T, call string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("write %q (have %v)", call, f.dp.Calls()), func() bool { return slices.Contains(f.dp.Calls(), call) })
}

// TestControllerFollowsStores: every store change that alters the
// compiled state writes one new revision, in order, with the policy the
// change asks for; a change that alters nothing writes nothing.
func TestControllerFollowsStores(t *testing.T) {
	f := newFixture(t, &controllertest.Datapath{})
	web := f.local(t, "web", 4)
	f.start(t)
	f.waitCall(t, "apply 1 [web_eth0]")
	if ep, _ := f.dp.Endpoint(web.ID); ep.IngressIsolated {
		t.Fatal("web isolated before any policy")
	}

	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if err := f.stores.Policies.Add(deny); err != nil {
		t.Fatal(err)
	}
	f.c.Trigger()
	f.waitCall(t, "apply 2 [web_eth0]")
	if ep, _ := f.dp.Endpoint(web.ID); !ep.IngressIsolated || len(ep.Ingress) != 0 {
		t.Errorf("after deny: %+v, want ingress isolated with no rule", ep)
	}

	// Nothing changed: a sync writes no revision.
	gen := f.c.Trigger()
	if _, err := f.c.WaitProgrammed(context.Background(), gen, web.ID); err != nil {
		t.Fatal(err)
	}
	db := f.local(t, "db", 5)
	f.c.Trigger()
	f.waitCall(t, "apply 3 [db_eth0 web_eth0]")
	want := []string{"apply 1 [web_eth0]", "apply 2 [web_eth0]", "apply 3 [db_eth0 web_eth0]"}
	if got := f.dp.Calls(); !slices.Equal(got, want) {
		t.Errorf("writes %v, want %v", got, want)
	}

	// Forget clears the endpoint at once, ahead of the sync that drops it.
	if _, _, err := f.reg.Delete(db.ID); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Forget(db.HostIfIndex, db.ID); err != nil {
		t.Fatal(err)
	}
	f.waitCall(t, "apply 4 [web_eth0]")
	calls := f.dp.Calls()
	if rm, ap := slices.Index(calls, "remove 5"), slices.Index(calls, "apply 4 [web_eth0]"); rm < 0 || rm > ap {
		t.Errorf("want remove 5 before apply 4: %v", calls)
	}
}

// TestControllerProgramNewBeforeSync: a new endpoint's own write comes
// before the whole sync that includes it.
func TestControllerProgramNewBeforeSync(t *testing.T) {
	f := newFixture(t, &controllertest.Datapath{})
	f.local(t, "web", 4)
	f.start(t)
	f.waitCall(t, "apply 1 [web_eth0]")
	db := f.local(t, "db", 5)
	rev, done, err := f.c.ProgramNew(db)
	if err != nil || !done || rev != 1 {
		t.Fatalf("ProgramNew = %d, %v, %v; want 1, true, nil", rev, done, err)
	}
	f.waitCall(t, "apply 2 [db_eth0 web_eth0]")
	calls := f.dp.Calls()
	if own, whole := slices.Index(calls, "apply-endpoint 1 db_eth0"), slices.Index(calls, "apply 2 [db_eth0 web_eth0]"); own < 0 || own > whole {
		t.Errorf("want the endpoint's own write first: %v", calls)
	}
}

// TestControllerRecoversPanics: a sync that panics is counted as a failure
// and retried; the loop lives on and the next sync programs.
func TestControllerRecoversPanics(t *testing.T) {
	f := newFixture(t, &controllertest.Datapath{PanicOnApply: 2})
	web := f.local(t, "web", 4)
	f.start(t)
	gen := f.c.Trigger()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := f.c.WaitProgrammed(ctx, gen, web.ID); err != nil {
		t.Fatalf("endpoint not programmed after the panics: %v", err)
	}
	if n := f.failures.Load(); n != 2 {
		t.Errorf("%d failures counted, want 2", n)
	}
	if pending, _ := f.c.Progress(); pending {
		t.Error("sync loop still pending after a successful sync")
	}
	if calls := f.dp.Calls(); len(calls) != 1 || !strings.HasPrefix(calls[0], "apply 1 ") {
		t.Errorf("writes %v, want one apply of revision 1", calls)
	}
}

// TestControllerSyncsServicesWhenTheirInputsChange: a sync after a change
// no Service, EndpointSlice, Node, pod address nor own address was part of
// skips the Services' sync; after a change to any of them it runs again
// and writes what the change asks for.
func TestControllerSyncsServicesWhenTheirInputsChange(t *testing.T) {
	f := newFixture(t, &controllertest.Datapath{})
	var own atomic.Pointer[[]netip.Addr]
	own.Store(&[]netip.Addr{})
	f.c.nodeIPs = func() ([]netip.Addr, error) { return *own.Load(), nil }
	timings := make(chan SyncTimings, 16)
	f.c.onSync = func(st SyncTimings) { timings <- st }
	f.local(t, "web", 4)
	f.start(t)
	// sync triggers one sync and returns whether its Services' sync ran.
	sync := func() bool {
		t.Helper()
		f.c.Trigger()
		select {
		case st := <-timings:
			return st.Services
		case <-time.After(30 * time.Second):
			t.Fatal("timed out waiting for a sync")
			return false
		}
	}
	if first := <-timings; !first.Services {
		t.Fatal("the first sync skipped the Services' sync")
	}
	svcIP, gw := netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("10.244.2.1")
	hasEntry := func(n int) func() bool {
		return func() bool {
			e := f.dp.Services()
			return len(e) == 1 && e[0].Addr == svcIP && len(e[0].Backends) == n
		}
	}
	hasAddr := func(a netip.Addr, want bool) func() bool {
		return func() bool { return slices.Contains(f.dp.NodeAddrs(), a) == want }
	}
	for _, tc := range []struct {
		name   string
		change func() error
		done   func() bool
	}{
		{"service added", func() error {
			return f.stores.Services.Add(&corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web"},
				Spec: corev1.ServiceSpec{ClusterIP: svcIP.String(), ClusterIPs: []string{svcIP.String()},
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
			})
		}, hasEntry(0)},
		{"endpointslice added", func() error {
			return f.stores.EndpointSlices.Add(&discoveryv1.EndpointSlice{
				ObjectMeta:  metav1.ObjectMeta{Namespace: "prod", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.4"}}},
				Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(80)), Protocol: ptr(corev1.ProtocolTCP)}},
			})
		}, hasEntry(1)},
		{"node added", func() error {
			return f.stores.Nodes.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"},
				Spec: corev1.NodeSpec{PodCIDR: "10.244.2.0/24"}})
		}, hasAddr(gw, true)},
		{"a pod takes a node address", func() error {
			return f.stores.Pods.Add(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "squat"},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: gw.String()}}}})
		}, hasAddr(gw, false)},
		{"own address added", func() error {
			own.Store(&[]netip.Addr{netip.MustParseAddr("198.18.0.1")})
			return nil
		}, hasAddr(netip.MustParseAddr("198.18.0.1"), true)},
	} {
		if sync() {
			t.Fatalf("before %s: a sync with nothing changed ran the Services' sync", tc.name)
		}
		if err := tc.change(); err != nil {
			t.Fatal(err)
		}
		if !sync() {
			t.Errorf("%s: the Services' sync was skipped", tc.name)
		}
		if !tc.done() {
			t.Errorf("%s: not written: services %+v, node addresses %v", tc.name, f.dp.Services(), f.dp.NodeAddrs())
		}
	}
}

func ptr[T any](v T) *T { return &v }
