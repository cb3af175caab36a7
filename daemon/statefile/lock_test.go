package statefile

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestLockRefusesASecondHolder(t *testing.T) {
	dir := t.TempDir()
	first, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to an open file: a second open in this process
	// conflicts as a second agent's would.
	_, err = Lock(dir)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Lock: err = %v, want ErrLocked", err)
	}
	if pid := strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), "pid "+pid) {
		t.Errorf("error %q does not name the holder's pid %s", err, pid)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after the holder let go: %v", err)
	}
	again.Close()
}

// TestLockWaitOutlastsAStoppingHolder: LockWait gets the lock once the
// holder lets go within the wait, and still refuses a holder that stays.
func TestLockWaitOutlastsAStoppingHolder(t *testing.T) {
	dir := t.TempDir()
	held, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockWait(dir, 300*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("LockWait with the holder staying: err = %v, want ErrLocked", err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		held.Close()
		close(released)
	}()
	got, err := LockWait(dir, 10*time.Second)
	if err != nil {
		t.Fatalf("LockWait while the holder stops: %v", err)
	}
	got.Close()
	<-released
}
