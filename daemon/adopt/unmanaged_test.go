package adopt

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/endpoint"
)

func registryWith(t *testing.T, ips ...string) *endpoint.Manager {
	t.Helper()
	reg, err := endpoint.Open(filepath.Join(t.TempDir(), "endpoints.json"))
	if err != nil {
		t.Fatal(err)
	}
	for i, ip := range ips {
		ep := agentapi.Endpoint{ID: "ep" + string(rune('a'+i)), IPs: []netip.Addr{netip.MustParseAddr(ip)}}
		if err := reg.Put(ep); err != nil {
			t.Fatal(err)
		}
	}
	return &endpoint.Manager{Registry: reg}
}

func TestUnmanaged(t *testing.T) {
	reg := registryWith(t, "10.244.1.9", "fd00::9")
	now := metav1.Now()
	tests := []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"a running pod no endpoint holds", makePod(), true},
		{"a pod whose address an endpoint holds", makePod(func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.9"}} }), false},
		{"a dual-stack pod whose IPv6 address an endpoint holds", makePod(func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::9"}}
		}), false},
		{"a pod of another node", makePod(func(p *corev1.Pod) { p.Spec.NodeName = "node-2" }), false},
		{"a host-network pod", makePod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), false},
		{"a pending pod", makePod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), false},
		{"a finished pod", makePod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), false},
		{"a pod without addresses yet", makePod(func(p *corev1.Pod) { p.Status.PodIPs = nil }), false},
		{"a pod being deleted", makePod(func(p *corev1.Pod) { p.DeletionTimestamp = &now }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Unmanaged([]*corev1.Pod{tt.pod}, node, reg)
			if (len(got) == 1) != tt.want {
				t.Errorf("unmanaged: %v, want %v", len(got) == 1, tt.want)
			}
		})
	}
}

// TestSweeperGrace: a pod counts as unmanaged only once it has run without
// an endpoint for the grace, and stops counting once an endpoint holds it.
func TestSweeperGrace(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	bare := makePod()
	other := makePod(func(p *corev1.Pod) {
		p.Name, p.UID, p.Status.PodIPs = "api", types.UID("uid-2"), []corev1.PodIP{{IP: "10.244.1.6"}}
	})
	for _, p := range []*corev1.Pod{bare, other} {
		if err := idx.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	reg := registryWith(t)
	s := &Sweeper{
		Config: Config{
			Log: slog.New(slog.DiscardHandler), NodeName: node, CacheDir: t.TempDir(), // an empty cache: nothing to adopt
			Endpoints: reg, Pods: corelisters.NewPodLister(idx),
		},
		Grace: 5 * time.Second,
	}
	ctx := context.Background()
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at     time.Duration
		before func()
		want   int
	}{
		{at: 0, want: 0},               // both first seen
		{at: 4 * time.Second, want: 0}, // inside the grace
		{at: 5 * time.Second, want: 2}, // past it, and the cache has neither
		{at: 6 * time.Second, want: 1, before: func() {
			if err := reg.Registry.Put(agentapi.Endpoint{ID: "api", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.6")}}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, st := range steps {
		if st.before != nil {
			st.before()
		}
		if got := s.Sweep(ctx, t0.Add(st.at)); got != st.want {
			t.Errorf("at %v: %d unmanaged, want %d", st.at, got, st.want)
		}
	}
}
