package inspect

import (
	"sync"

	"github.com/palisade-cni/palisade/daemon/policy"
)

// Snapshots hands out Views of the agent's live state, indexing again only
// when the compiled policy changed: every policy sync produces a new Result,
// and the registry and pods that matter change only with one.
type Snapshots struct {
	// Result returns the last compiled policy, nil before the first.
	Result func() *policy.Result
	// Build indexes a View of res.
	Build func(res *policy.Result) *View

	mu   sync.Mutex
	last *policy.Result
	view *View
}

// Get returns the current View, nil before the first policy sync.
func (s *Snapshots) Get() *View {
	res := s.Result()
	if res == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if res != s.last {
		s.last, s.view = res, s.Build(res)
	}
	return s.view
}
