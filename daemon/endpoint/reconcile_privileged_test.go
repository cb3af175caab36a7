package endpoint_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/controller/controllertest"
	"github.com/palisade-cni/palisade/daemon/datapath"
	"github.com/palisade-cni/palisade/daemon/endpoint"
	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/tests/kernel"
)

// inNetns runs the kernel side of the manager (link checks, attach,
// detach) in the test's network namespace, where its veths are.
type inNetns struct {
	netns ns.NetNS
	att   endpoint.BPFAttacher
}

func (n inNetns) Attach(ifindex int, id string) error {
	return n.netns.Do(func(ns.NetNS) error { return n.att.Attach(ifindex, id) })
}

func (n inNetns) Detach(ifindex int, id string) error {
	return n.netns.Do(func(ns.NetNS) error { return n.att.Detach(ifindex, id) })
}

func (n inNetns) alive(index int, name string) (alive bool, err error) {
	err = n.netns.Do(func(ns.NetNS) error {
		alive, err = endpoint.KernelLinkAlive(index, name)
		return err
	})
	return alive, err
}

func (n inNetns) attached(t *testing.T, ifindex int) bool {
	t.Helper()
	var err error
	if derr := n.netns.Do(func(ns.NetNS) error { err = bpf.Attached(ifindex); return nil }); derr != nil {
		t.Fatal(derr)
	}
	if err != nil && !errors.Is(err, bpf.ErrNotAttached) {
		t.Fatal(err)
	}
	return err == nil
}

// TestPrivilegedReconcile runs the manager over the real datapath and real
// veths: a GC whose list omits every endpoint removes none that is in use,
// and a reconcile then reclaims, programs and pins included, exactly the
// endpoints of a finished pod and of a vanished veth.
func TestPrivilegedReconcile(t *testing.T) {
	netns, ifindexes := kernel.NetNSWithVeths(t, 4)
	root := fmt.Sprintf("/sys/fs/bpf/palisade-test-%08x", rand.Uint32())
	objs, err := bpf.Load(bpf.LoadOptions{Root: root, Rejudge: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		objs.Close()
		if err := bpf.Unpin(root); err != nil {
			t.Error(err)
		}
	})
	writer, err := datapath.New(objs)
	if err != nil {
		t.Fatal(err)
	}
	cluster, stores := controllertest.NewCluster()
	if err := stores.Namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}}); err != nil {
		t.Fatal(err)
	}
	reg, err := endpoint.Open(filepath.Join(t.TempDir(), "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ctrl := controller.New(controller.Config{
		Log: log, NodeName: "node-1", Cluster: cluster, Registry: reg, Datapath: writer, Alloc: identity.NewAllocator(),
		NodeIPs: func() ([]netip.Addr, error) { return nil, nil }, Persist: func(*identity.Allocator) error { return nil },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { ctrl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	k := inNetns{netns: netns, att: endpoint.BPFAttacher{Root: root, Mode: bpf.AttachAuto}}
	m := &endpoint.Manager{Log: log, NodeName: "node-1", Registry: reg, Program: ctrl, Attach: k, Pods: cluster.Pods, Alive: k.alive}

	names := []string{"keep", "finish", "vanish", "unlisted"}
	pods := map[string]*corev1.Pod{}
	var eps []agentapi.Endpoint
	for i, name := range names {
		ip := netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)})
		pods[name] = &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name, UID: types.UID("uid-" + name)},
			Spec:       corev1.PodSpec{NodeName: "node-1"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip.String()}}},
		}
		if err := stores.Pods.Add(pods[name]); err != nil {
			t.Fatal(err)
		}
		eps = append(eps, agentapi.Endpoint{
			ID: "c-" + name + "_eth0", ContainerID: "c-" + name, IfName: "eth0", PodNamespace: "prod", PodName: name,
			PodUID: "uid-" + name, HostIfName: fmt.Sprintf("pal-ep%d", i), HostIfIndex: ifindexes[i], IPs: []netip.Addr{ip},
		})
	}
	actx, acancel := context.WithTimeout(ctx, time.Minute)
	defer acancel()
	adopted, err := m.Adopt(actx, eps)
	if err != nil || len(adopted) != len(eps) {
		t.Fatalf("adopted %d of %d: %v", len(adopted), len(eps), err)
	}
	for _, ep := range eps {
		if !k.attached(t, ep.HostIfIndex) {
			t.Fatalf("%s not attached after adoption", ep.ID)
		}
	}

	// A runtime's GC that lists nothing: every veth lives, every pod runs.
	removed, kept, err := m.GC(map[string]bool{})
	if err != nil || len(removed) != 0 || len(kept) != len(eps) {
		t.Fatalf("GC with an empty list: removed %v kept %v err %v; want all kept", removed, kept, err)
	}

	finished := pods["finish"].DeepCopy()
	finished.Status.Phase = corev1.PodSucceeded
	if err := stores.Pods.Update(finished); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByIndex(ifindexes[2])
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	// With TCX (attach mode auto on the kernels the tests need), the links
	// are pinned by endpoint ID: they must be there now, and gone after.
	if pins, _ := filepath.Glob(filepath.Join(root, "links", eps[2].ID+"*")); len(pins) == 0 {
		t.Fatalf("no link pins for %s before the reconcile", eps[2].ID)
	}
	res, err := m.Reconcile()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{eps[1].ID, eps[2].ID}; fmt.Sprint(res.Removed) != fmt.Sprint(want) {
		t.Errorf("reconcile removed %v, want %v", res.Removed, want)
	}
	entries, err := objs.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	for i, ep := range eps {
		gone := i == 1 || i == 2
		if _, ok := m.Get(ep.ID); ok == gone {
			t.Errorf("%s registered = %v, want %v", ep.ID, ok, !gone)
		}
		if _, ok := entries[ep.HostIfIndex]; ok == gone {
			t.Errorf("%s endpoint map entry present = %v, want %v", ep.ID, ok, !gone)
		}
		if i != 2 && k.attached(t, ep.HostIfIndex) == gone {
			t.Errorf("%s programs attached = %v, want %v", ep.ID, !gone, !gone)
		}
		pins, _ := filepath.Glob(filepath.Join(root, "links", ep.ID+"*"))
		if gone && len(pins) > 0 {
			t.Errorf("%s left pins %v", ep.ID, pins)
		}
	}
	if _, err := os.Stat(root); err != nil {
		t.Fatal(err)
	}
}
