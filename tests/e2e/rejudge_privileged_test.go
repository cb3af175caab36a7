package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// roundTrip sends a line on c and reports whether it came back in time.
func roundTrip(c net.Conn, r *bufio.Reader, line string) bool {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		return false
	}
	got, err := r.ReadString('\n')
	return err == nil && got == line+"\n"
}

// TestPrivilegedPolicyChangeOnOpenConnection opens a TCP connection that a
// policy then forbids. With --rejudge (the default) the datapath re-judges
// the flow and cuts it; with --rejudge=false established flows keep going.
func TestPrivilegedPolicyChangeOnOpenConnection(t *testing.T) {
	for _, tt := range []struct {
		rejudge  bool
		survives bool
	}{{true, false}, {false, true}} {
		t.Run(fmt.Sprintf("rejudge=%v", tt.rejudge), func(t *testing.T) {
			env := newOneNodeArgs(t, fmt.Sprintf("--rejudge=%v", tt.rejudge))
			env.backend.ServeEcho(t, 7000)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := env.frontend.NetNS.DialContext(ctx, "tcp", fmt.Sprintf("%s:7000", env.backend.IP()))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			if !roundTrip(c, r, "before") {
				t.Fatal("the connection does not work before the policy")
			}
			// backend-access admits frontends on TCP 6379 only: port 7000 is
			// now forbidden, for new connections and, re-judged, open ones.
			env.cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
			eventually(t, expect{env.frontend, env.backend, 8080, "TCP", testbed.TimedOut})
			if got := roundTrip(c, r, "after"); got != tt.survives {
				t.Errorf("open connection after the deny: works=%v, want %v", got, tt.survives)
			}
		})
	}
}
