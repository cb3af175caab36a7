// Package privileged gates tests that need root, a bpffs and network
// namespaces. Such tests are named TestPrivileged… and skip when run as an
// ordinary user, unless PALISADE_REQUIRE_PRIVILEGED=1 (set by CI), where a
// skip would hide a missing capability and so becomes a failure.
package privileged

import (
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"
)

// Require skips or fails tb unless the process runs as root. It lifts the
// memlock limit that kernels before 5.11 charge BPF maps to.
func Require(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		if err := rlimit.RemoveMemlock(); err != nil {
			tb.Fatalf("remove memlock limit: %v", err)
		}
		return
	}
	if os.Getenv("PALISADE_REQUIRE_PRIVILEGED") == "1" {
		tb.Fatal("privileged test needs root (PALISADE_REQUIRE_PRIVILEGED=1 forbids skipping)")
	}
	tb.Skip("privileged test: run as root")
}
