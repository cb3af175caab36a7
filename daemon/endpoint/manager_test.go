package endpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

const node = "node-1"

// calls records, in order, what the manager asked of the controller and
// the attacher.
type calls struct {
	mu  sync.Mutex
	log []string
}

func (c *calls) add(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log = append(c.log, fmt.Sprintf(format, args...))
}

func (c *calls) get() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.log)
}

type fakeProgrammer struct {
	*calls
	// own is whether ProgramNew programs on its own; waitErr is what
	// WaitProgrammed returns.
	own     bool
	waitErr map[string]error
}

func (f *fakeProgrammer) ProgramNew(ep agentapi.Endpoint) (uint64, bool, error) {
	f.add("program-new %s", ep.ID)
	if f.own {
		return 7, true, nil
	}
	return 0, false, nil
}

func (f *fakeProgrammer) Trigger() uint64 { f.add("trigger"); return 3 }

func (f *fakeProgrammer) WaitProgrammed(_ context.Context, gen uint64, id string) (uint64, error) {
	f.add("wait %d %s", gen, id)
	if err := f.waitErr[id]; err != nil {
		return 0, err
	}
	return 8, nil
}

func (f *fakeProgrammer) Forget(ifindex int, id string) error {
	f.add("forget %d %s", ifindex, id)
	return nil
}

type fakeAttacher struct {
	*calls
	attachErr map[string]error
}

func (f *fakeAttacher) Attach(ifindex int, id string) error {
	f.add("attach %d %s", ifindex, id)
	return f.attachErr[id]
}

func (f *fakeAttacher) Detach(ifindex int, id string) error {
	f.add("detach %d %s", ifindex, id)
	return nil
}

// world is a node for the manager: pods in an informer store, host
// interfaces by index.
type world struct {
	m     *Manager
	calls *calls
	prog  *fakeProgrammer
	att   *fakeAttacher
	pods  cache.Indexer
	links map[int]string
}

func newWorld(t *testing.T, eps ...agentapi.Endpoint) *world {
	t.Helper()
	reg, err := Open(filepath.Join(t.TempDir(), "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if err := reg.Put(ep); err != nil {
			t.Fatal(err)
		}
	}
	c := &calls{}
	w := &world{
		calls: c, prog: &fakeProgrammer{calls: c}, att: &fakeAttacher{calls: c},
		pods:  cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		links: map[int]string{},
	}
	w.m = &Manager{
		Log: slog.New(slog.DiscardHandler), NodeName: node, Registry: reg, Program: w.prog, Attach: w.att,
		Pods: corelisters.NewPodLister(w.pods),
		Alive: func(index int, name string) (bool, error) {
			if w.links[index] == "broken" {
				return false, errors.New("netlink says no")
			}
			return w.links[index] == name, nil
		},
	}
	return w
}

func (w *world) pod(t *testing.T, name string, phase corev1.PodPhase, nodeName string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{NodeName: nodeName},
		Status:     corev1.PodStatus{Phase: phase},
	}
	if err := w.pods.Add(p); err != nil {
		t.Fatal(err)
	}
}

func (w *world) ids() []string {
	var out []string
	for _, ep := range w.m.List() {
		out = append(out, ep.ID)
	}
	return out
}

// ep is an endpoint of pod name on host veth "veth-"+name at ifindex.
func ep(name string, ifindex int) agentapi.Endpoint {
	return agentapi.Endpoint{
		ID: "c-" + name + "_eth0", ContainerID: "c-" + name, IfName: "eth0", PodNamespace: "prod", PodName: name,
		PodUID: "uid-" + name, HostIfName: "veth-" + name, HostIfIndex: ifindex,
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, 1, byte(ifindex)})},
	}
}

func TestManagerAdd(t *testing.T) {
	web := ep("web", 4)
	tests := []struct {
		name     string
		own      bool
		waitErr  error
		wantHow  string
		wantErr  bool
		wantRev  uint64
		wantIDs  []string
		wantLog  []string
		errIsRbk bool
	}{
		{
			name: "programmed on its own", own: true, wantHow: "own", wantRev: 7, wantIDs: []string{web.ID},
			wantLog: []string{"program-new " + web.ID},
		},
		{
			name: "waits for a sync", wantHow: "sync", wantRev: 8, wantIDs: []string{web.ID},
			wantLog: []string{"program-new " + web.ID, "trigger", "wait 3 " + web.ID},
		},
		{
			// Nothing stays behind: maps cleared before the programs
			// come off, then the registry is empty.
			name: "a failed wait rolls back", waitErr: context.DeadlineExceeded, wantHow: "sync", wantErr: true,
			wantLog: []string{"program-new " + web.ID, "trigger", "wait 3 " + web.ID, "forget 4 " + web.ID, "detach 4 " + web.ID},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t)
			w.prog.own = tt.own
			w.prog.waitErr = map[string]error{web.ID: tt.waitErr}
			got, how, err := w.m.Add(context.Background(), web)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Add: err = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr && !errors.Is(err, tt.waitErr) {
				t.Errorf("Add: err = %v, does not wrap %v", err, tt.waitErr)
			}
			if how != tt.wantHow {
				t.Errorf("how = %q, want %q", how, tt.wantHow)
			}
			if !tt.wantErr && (got.Revision != tt.wantRev || !got.Current) {
				t.Errorf("endpoint revision %d current %v, want %d current", got.Revision, got.Current, tt.wantRev)
			}
			if diff := cmp.Diff(tt.wantIDs, w.ids()); diff != "" {
				t.Errorf("registered (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantLog, w.calls.get()); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}

func TestManagerRemove(t *testing.T) {
	web := ep("web", 4)
	w := newWorld(t, web)
	if err := w.m.Remove(web.ID); err != nil {
		t.Fatal(err)
	}
	if err := w.m.Remove(web.ID); err != nil {
		t.Errorf("second Remove: %v, want nil (already removed)", err)
	}
	if len(w.ids()) != 0 {
		t.Errorf("registry still has %v", w.ids())
	}
	want := []string{"forget 4 " + web.ID, "detach 4 " + web.ID}
	if diff := cmp.Diff(want, w.calls.get()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// TestManagerGCKeepsLiveEndpoints: a runtime's list of valid attachments
// may be partial (or race an ADD); an endpoint whose veth exists and whose
// pod runs here, or is not in the cache yet, must survive it.
func TestManagerGCKeepsLiveEndpoints(t *testing.T) {
	listed, running, starting := ep("listed", 4), ep("running", 5), ep("starting", 6)
	vanished, finished, moved, unsure := ep("vanished", 7), ep("finished", 8), ep("moved", 9), ep("unsure", 10)
	w := newWorld(t, listed, running, starting, vanished, finished, moved, unsure)
	for _, e := range []agentapi.Endpoint{listed, running, starting, finished, moved} {
		w.links[e.HostIfIndex] = e.HostIfName
	}
	w.links[unsure.HostIfIndex] = "broken"
	w.pod(t, "listed", corev1.PodRunning, node)
	w.pod(t, "running", corev1.PodRunning, node)
	w.pod(t, "vanished", corev1.PodRunning, node)
	w.pod(t, "finished", corev1.PodSucceeded, node)
	w.pod(t, "moved", corev1.PodRunning, "node-2")
	// "starting" has no Pod in the cache yet.

	removed, kept, err := w.m.GC(map[string]bool{listed.ID: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{finished.ID, moved.ID, vanished.ID}, removed); diff != "" {
		t.Errorf("removed (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{running.ID, starting.ID, unsure.ID}, kept); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{listed.ID, running.ID, starting.ID, unsure.ID}, w.ids()); diff != "" {
		t.Errorf("registry after GC (-want +got):\n%s", diff)
	}
	for _, c := range w.calls.get() {
		for _, live := range []agentapi.Endpoint{listed, running, starting, unsure} {
			if c == fmt.Sprintf("detach %d %s", live.HostIfIndex, live.ID) || c == fmt.Sprintf("forget %d %s", live.HostIfIndex, live.ID) {
				t.Errorf("GC touched a live endpoint: %s", c)
			}
		}
	}
}

func TestManagerReconcile(t *testing.T) {
	tests := []struct {
		name    string
		phase   corev1.PodPhase // "" is no Pod in the cache
		node    string
		link    string // the name at the endpoint's ifindex; "" none
		removed bool
		reason  string
		wantErr bool
	}{
		{name: "running pod, veth alive", phase: corev1.PodRunning, node: node, link: "veth-p", removed: false},
		{name: "pod not in the cache yet, veth alive", link: "veth-p", removed: false},
		{name: "veth gone (DEL while the agent was down)", phase: corev1.PodRunning, node: node, removed: true, reason: "interface gone"},
		{name: "veth gone, pod gone too", removed: true, reason: "interface gone"},
		{name: "ifindex now another interface", phase: corev1.PodRunning, node: node, link: "veth-other", removed: true, reason: "interface gone"},
		{name: "pod succeeded", phase: corev1.PodSucceeded, node: node, link: "veth-p", removed: true, reason: "pod finished"},
		{name: "pod failed", phase: corev1.PodFailed, node: node, link: "veth-p", removed: true, reason: "pod finished"},
		{name: "pending pod", phase: corev1.PodPending, node: node, link: "veth-p", removed: false},
		{name: "interface unreadable", phase: corev1.PodSucceeded, node: node, link: "broken", removed: false, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := ep("p", 4)
			w := newWorld(t, p)
			if tt.phase != "" {
				w.pod(t, "p", tt.phase, tt.node)
			}
			if tt.link != "" {
				w.links[4] = tt.link
			}
			res, err := w.m.Reconcile()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Reconcile: err = %v, want error %v", err, tt.wantErr)
			}
			var want []string
			if tt.removed {
				want = []string{p.ID}
			}
			if diff := cmp.Diff(want, res.Removed); diff != "" {
				t.Errorf("removed (-want +got):\n%s", diff)
			}
			if tt.removed && res.ByReason[tt.reason] != 1 {
				t.Errorf("reasons %v, want one %q", res.ByReason, tt.reason)
			}
			if got := len(w.ids()) == 0; got != tt.removed {
				t.Errorf("registry empty = %v, want %v", got, tt.removed)
			}
		})
	}
}

// TestManagerRemoveIfSparesNewADD: a decision taken on an old copy of an
// endpoint (its veth vanished) must not remove the endpoint that a new ADD
// of the same container registered since, on another veth.
func TestManagerRemoveIfSparesNewADD(t *testing.T) {
	old := ep("web", 4)
	w := newWorld(t, old)
	readded := old
	readded.HostIfName, readded.HostIfIndex = "veth-new", 11
	if err := w.m.Registry.Put(readded); err != nil {
		t.Fatal(err)
	}
	did, err := w.m.removeIf(old)
	if err != nil || did {
		t.Fatalf("removeIf(old copy) = %v, %v; want false, nil", did, err)
	}
	if got, ok := w.m.Get(old.ID); !ok || got.HostIfIndex != 11 {
		t.Errorf("registry has %+v (present %v), want the re-added endpoint", got, ok)
	}
	if c := w.calls.get(); len(c) != 0 {
		t.Errorf("calls %v, want none", c)
	}
}

func TestManagerRestoreAndReattach(t *testing.T) {
	alive, gone := ep("alive", 4), ep("gone", 5)
	w := newWorld(t, alive, gone)
	w.links[4] = alive.HostIfName
	if err := w.m.Restore(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{alive.ID}, w.ids()); diff != "" {
		t.Errorf("after Restore (-want +got):\n%s", diff)
	}
	w.att.attachErr = map[string]error{}
	if err := w.m.Reattach(); err != nil {
		t.Fatal(err)
	}
	// No maps before the first sync: Restore only removes the pins of the
	// gone interface, by ID.
	want := []string{"detach 0 " + gone.ID, "attach 4 " + alive.ID}
	if diff := cmp.Diff(want, w.calls.get()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

func TestManagerAdopt(t *testing.T) {
	good, late, unattachable := ep("good", 4), ep("late", 5), ep("unattachable", 6)
	w := newWorld(t)
	w.prog.waitErr = map[string]error{late.ID: context.DeadlineExceeded}
	w.att.attachErr = map[string]error{unattachable.ID: errors.New("no tcx")}
	got, err := w.m.Adopt(context.Background(), []agentapi.Endpoint{good, late, unattachable})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != good.ID || got[0].Revision != 8 {
		t.Errorf("adopted %+v, want only %s at revision 8", got, good.ID)
	}
	if diff := cmp.Diff([]string{good.ID}, w.ids()); diff != "" {
		t.Errorf("registry (-want +got):\n%s", diff)
	}
	// Maps first, programs second; a failure removes what it registered.
	want := []string{
		"trigger",
		"wait 3 " + good.ID, "attach 4 " + good.ID,
		"wait 3 " + late.ID, "forget 5 " + late.ID, "detach 5 " + late.ID,
		"wait 3 " + unattachable.ID, "attach 6 " + unattachable.ID, "forget 6 " + unattachable.ID, "detach 6 " + unattachable.ID,
	}
	if diff := cmp.Diff(want, w.calls.get()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}
