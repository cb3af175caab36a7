package inspect

import (
	"testing"

	"github.com/palisade-cni/palisade/daemon/policy"
)

// Release drops the View only once the agent's Result has moved on, and
// the next Get builds one of the current Result.
func TestSnapshotsRelease(t *testing.T) {
	r1, r2 := &policy.Result{}, &policy.Result{}
	cur, builds := r1, 0
	s := &Snapshots{
		Result: func() *policy.Result { return cur },
		Build: func(res *policy.Result) *View {
			builds++
			return NewView(res, nil, nil, nil, "node-1")
		},
	}
	steps := []struct {
		name       string
		result     *policy.Result
		get        bool
		wantView   *policy.Result // the Result of the kept View; nil for none
		wantBuilds int
	}{
		{"first get builds", r1, true, r1, 1},
		{"release with the same result keeps the view", r1, false, r1, 1},
		{"get again reuses it", r1, true, r1, 1},
		{"release after a new result drops it", r2, false, nil, 1},
		{"get builds for the new result", r2, true, r2, 2},
	}
	for _, st := range steps {
		cur = st.result
		if st.get {
			if v := s.Get(); v == nil || v.Result != st.result {
				t.Fatalf("%s: Get returned a View of the wrong Result", st.name)
			}
		} else {
			s.Release()
		}
		var kept *policy.Result
		if s.view != nil {
			kept = s.view.Result
		}
		if kept != st.wantView || builds != st.wantBuilds {
			t.Errorf("%s: kept view of %p after %d builds, want %p after %d", st.name, kept, builds, st.wantView, st.wantBuilds)
		}
	}
}
