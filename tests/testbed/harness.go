package testbed

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// Harness is a TB for running the testbed outside `go test`: the long-lived
// testbed of scripts/testbed. Cleanups run last-registered first on Close,
// as testing runs them; Fatal ends the function given to Run, which returns
// the failure.
type Harness struct {
	name string
	dir  string
	out  io.Writer
	// OnRecord, when set, learns of every namespace ("netns") and process
	// ("pid") the testbed creates, so that a supervisor can remove them
	// should this process die without running its cleanups.
	OnRecord func(kind, value string)

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	tmp      int
}

// errHarnessFatal is what Fatal panics with, for Run to recover.
var errHarnessFatal = errors.New("testbed harness: fatal")

// NewHarness returns a Harness named name keeping its temporary files under
// dir and writing its log to out.
func NewHarness(name, dir string, out io.Writer) *Harness {
	return &Harness{name: name, dir: dir, out: out}
}

// Run calls fn and turns a Fatal inside it into an error.
func (h *Harness) Run(fn func(tb TB)) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if r != errHarnessFatal { //nolint:errorlint // identity of the sentinel value
				panic(r)
			}
			err = fmt.Errorf("%s: failed (see the log above)", h.name)
		}
	}()
	fn(h)
	if h.Failed() {
		return fmt.Errorf("%s: failed (see the log above)", h.name)
	}
	return nil
}

// Close runs the cleanups, newest first.
func (h *Harness) Close() {
	for {
		h.mu.Lock()
		if len(h.cleanups) == 0 {
			h.mu.Unlock()
			return
		}
		fn := h.cleanups[len(h.cleanups)-1]
		h.cleanups = h.cleanups[:len(h.cleanups)-1]
		h.mu.Unlock()
		fn()
	}
}

// Helper is a no-op: there is no test framework to report caller lines to.
func (h *Harness) Helper() {}

// Cleanup registers fn for Close.
func (h *Harness) Cleanup(fn func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanups = append(h.cleanups, fn)
}

// Error logs and marks the harness failed.
func (h *Harness) Error(args ...any) { h.fail(fmt.Sprint(args...)) }

// Errorf logs and marks the harness failed.
func (h *Harness) Errorf(format string, args ...any) { h.fail(fmt.Sprintf(format, args...)) }

// Fatal is Error, then ends the function given to Run.
func (h *Harness) Fatal(args ...any) {
	h.fail(fmt.Sprint(args...))
	panic(errHarnessFatal)
}

// Fatalf is Errorf, then ends the function given to Run.
func (h *Harness) Fatalf(format string, args ...any) {
	h.fail(fmt.Sprintf(format, args...))
	panic(errHarnessFatal)
}

// Failed reports whether Error or Fatal was called.
func (h *Harness) Failed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed
}

// Logf writes a timestamped line to the log.
func (h *Harness) Logf(format string, args ...any) {
	fmt.Fprintf(h.out, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// Name is the harness's name.
func (h *Harness) Name() string { return h.name }

// TempDir returns a new directory under the harness's dir; it is removed on
// Close.
func (h *Harness) TempDir() string {
	h.mu.Lock()
	h.tmp++
	dir := filepath.Join(h.dir, "tmp", strconv.Itoa(h.tmp))
	h.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.Fatalf("create temp dir: %v", err)
	}
	h.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (h *Harness) fail(msg string) {
	h.mu.Lock()
	h.failed = true
	h.mu.Unlock()
	fmt.Fprintf(h.out, "%s ERROR %s\n", time.Now().Format("15:04:05.000"), msg)
}

// Record passes kind and value to OnRecord.
func (h *Harness) Record(kind, value string) {
	if h.OnRecord != nil {
		h.OnRecord(kind, value)
	}
}

// record tells a TB that keeps a record (Harness) of a namespace or process
// the testbed created.
func record(tb TB, kind, value string) {
	if r, ok := tb.(interface{ Record(kind, value string) }); ok {
		r.Record(kind, value)
	}
}
