package conformance

import (
	"errors"
	"fmt"
	"sync"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// scope is a testbed.TB whose cleanups run when the runner says so, not
// when the test ends: a pod or Service that a case deletes (delete_pod,
// delete_namespace) or that only lives for one case (create_pod) is torn
// down by closing its scope. A Fatal inside do comes back as an error, so
// a step that cannot be done fails the case, not the whole run.
type scope struct {
	testbed.TB // the test: logs, temporary directories, name

	mu       sync.Mutex
	cleanups []func()
	errs     []error
	closed   bool
}

func newScope(tb testbed.TB) *scope { return &scope{TB: tb} }

type scopeFatal struct{ err error }

func (s *scope) Helper() {}

func (s *scope) Cleanup(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, fn)
}

func (s *scope) Error(args ...any) { s.addErr(errors.New(fmt.Sprint(args...))) }

func (s *scope) Errorf(format string, args ...any) { s.addErr(fmt.Errorf(format, args...)) }

func (s *scope) Fatal(args ...any) { panic(scopeFatal{errors.New(fmt.Sprint(args...))}) }

func (s *scope) Fatalf(format string, args ...any) { panic(scopeFatal{fmt.Errorf(format, args...)}) }

func (s *scope) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.errs) > 0
}

func (s *scope) addErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err)
}

// do runs fn in the scope; a Fatal in fn ends it and is returned.
func (s *scope) do(fn func(tb testbed.TB)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(scopeFatal)
			if !ok {
				panic(r)
			}
			err = f.err
		}
	}()
	fn(s)
	return nil
}

// close runs the cleanups, last registered first, once, and returns the
// errors they reported (and any reported before).
func (s *scope) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	fns := s.cleanups
	s.cleanups = nil
	s.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		// A Fatal inside a cleanup must not stop the others.
		_ = s.do(func(testbed.TB) { fns[i]() })
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}
