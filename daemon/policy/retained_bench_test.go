package policy

import (
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/palisade-cni/palisade/daemon/identity"
)

// BenchmarkCompileRetained measures the heap a Result keeps while the
// agent holds it until the next sync, at 10 000 pods x 1 000 policies:
// issue 19 bounds the agent's RSS, and a compiler kept for the next
// compile to patch is most of what the agent holds besides its caches.
// "full" holds a Result compiled from scratch, "again" one compiled with
// it as Previous, "pod-relabelled" one that patched a changed pod's
// address. retained-B is HeapAlloc after a GC while holding the Result,
// less HeapAlloc after a GC with the State and allocator alone. Run:
// go test -run '^$' -bench CompileRetained -benchtime=3x ./daemon/policy
func BenchmarkCompileRetained(b *testing.B) {
	s := scaleState(10000, 1000)
	steps := []struct {
		name string
		next func(s State, prev *Result) State
	}{
		{"full", func(s State, _ *Result) State { return s }},
		{"again", func(s State, prev *Result) State { s.Previous = prev; return s }},
		{"pod-relabelled", func(s State, prev *Result) State {
			s.Pods = slices.Clone(s.Pods)
			p := s.Pods[len(s.Pods)/2].DeepCopy()
			p.Labels["tier"] = "relabelled"
			s.Pods[len(s.Pods)/2] = p
			s.Previous = prev
			return s
		}},
	}
	for i, step := range steps {
		b.Run(fmt.Sprintf("pods=10000/policies=1000/%s", step.name), func(b *testing.B) {
			var retained uint64
			for b.Loop() {
				alloc := identity.NewAllocator()
				base := heapAlloc()
				var res Result
				for _, st := range steps[:i+1] {
					prev := res
					res = Compile(st.next(s, &prev), alloc)
				}
				retained = heapAlloc() - base
				runtime.KeepAlive(res)
				runtime.KeepAlive(alloc)
			}
			b.ReportMetric(float64(retained), "retained-B")
		})
	}
}

// heapAlloc returns the live heap after a full collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
