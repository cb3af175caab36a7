package k8s

import (
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestPodHandlerCountsAddressChanges: the pods' handler moves the
// pod-address count for an add, a delete and an update of the addresses
// or host networking, not for a label or phase change; it signals a sync
// for every change but one of the resourceVersion alone.
func TestPodHandlerCountsAddressChanges(t *testing.T) {
	base := func() *corev1.Pod {
		p := kubeletPod()
		p.Spec.HostNetwork = false
		p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.5"}}
		return p
	}
	for _, tc := range []struct {
		name         string
		tweak        func(*corev1.Pod)
		count, syncs uint64
	}{
		{"address changed", func(p *corev1.Pod) { p.Status.PodIPs[0].IP = "10.244.1.6" }, 1, 1},
		{"address added", func(p *corev1.Pod) { p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::5"}) }, 1, 1},
		{"host networking", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, 1, 1},
		{"label changed", func(p *corev1.Pod) { p.Labels = map[string]string{"app": "db"} }, 0, 1},
		{"phase changed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, 0, 1},
		{"resourceVersion alone", func(p *corev1.Pod) { p.ResourceVersion = "43" }, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var counter, syncs atomic.Uint64
			h := handler(func() { syncs.Add(1) }, &counter, PodAddrsDiffer)
			old, cur := base(), base()
			tc.tweak(cur)
			h.OnUpdate(old, cur)
			if counter.Load() != tc.count || syncs.Load() != tc.syncs {
				t.Errorf("count %d, syncs %d; want %d, %d", counter.Load(), syncs.Load(), tc.count, tc.syncs)
			}
		})
	}
	var counter, syncs atomic.Uint64
	h := handler(func() { syncs.Add(1) }, &counter, PodAddrsDiffer)
	h.OnAdd(base(), false)
	h.OnDelete(base())
	if counter.Load() != 2 || syncs.Load() != 2 {
		t.Errorf("add and delete: count %d, syncs %d; want 2, 2", counter.Load(), syncs.Load())
	}
}
