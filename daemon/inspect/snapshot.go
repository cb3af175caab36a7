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

// Release drops the View of a Result the agent has replaced; call it after
// every policy sync. Without it the View would keep its Result (the
// previous compile's address sets and compiler, several MB at 10 000
// pods) alive until the next flow or request, which may never come.
func (s *Snapshots) Release() {
	res := s.Result()
	s.mu.Lock()
	defer s.mu.Unlock()
	if res != s.last {
		s.last, s.view = nil, nil
	}
}
