package inspect

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/daemon/policy"
)

// BenchmarkViewIndexes measures what a View of 10 000 pods and 8 000
// ipBlock prefixes costs to build and keep: the index by address, built
// for every View (flows read it), and the indexes by name and identity
// palisadectl's requests build on first use. Run: go test -run '^$'
// -bench ViewIndexes ./daemon/inspect
func BenchmarkViewIndexes(b *testing.B) {
	var pods []*corev1.Pod
	res := &policy.Result{IPCache: map[netip.Prefix]uint32{}}
	for i := range 10000 {
		ip := netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(1 + i%250)})
		pods = append(pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", i%100), Name: fmt.Sprintf("pod-%d", i)},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: ip.String()}}}})
		res.IPCache[netip.PrefixFrom(ip, 32)] = uint32(1000 + i%300)
	}
	for i := range 8000 {
		res.IPCache[netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + i/256), byte(i % 256), 0}), 24)] = uint32(5000 + i)
	}
	b.Run("by-address", func(b *testing.B) {
		var v *View
		for b.Loop() {
			v = NewView(res, pods, nil, nil, "node-1")
		}
		v = nil
		before := heapAlloc()
		v = NewView(res, pods, nil, nil, "node-1")
		b.ReportMetric(float64(heapAlloc()-before)/1e6, "MB-kept")
		runtime.KeepAlive(v)
	})
	b.Run("by-name-and-identity", func(b *testing.B) {
		var v *View
		for b.Loop() {
			v = NewView(res, pods, nil, nil, "node-1")
			v.Describe(1000)
			v.Pod("ns-1/pod-1")
		}
		v = NewView(res, pods, nil, nil, "node-1")
		before := heapAlloc()
		v.Describe(1000)
		v.Pod("ns-1/pod-1")
		b.ReportMetric(float64(heapAlloc()-before)/1e6, "MB-kept")
		runtime.KeepAlive(v)
	})
}

// heapAlloc is the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
