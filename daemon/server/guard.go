package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// Limits of the agent socket. Its callers are the plugin and palisadectl,
// whose requests are a few KiB; anything larger, or slower, is a bug or an
// attack on a root daemon that every pod start waits for.
const (
	// MaxRequestBytes bounds a request body: a GC lists every attachment
	// of the node, ~100 bytes each, so 1 MiB is ~10 000 pods.
	MaxRequestBytes = 1 << 20
	maxHeaderBytes  = 64 << 10
	headerTimeout   = 5 * time.Second
	// requestTimeout bounds reading a request and writing its answer. It
	// covers an ADD, which the agent may hold for agentapi.AddTimeout. It
	// is set per request, not on the http.Server, whose ReadTimeout would
	// also cancel the streams below.
	requestTimeout = agentapi.AddTimeout + 20*time.Second
	idleTimeout    = time.Minute
)

type peerKey struct{}

// peer is what the kernel says about a connection's other end.
type peer struct {
	uid uint32
	pid int32
	err error
}

// connContext records the peer's credentials (SO_PEERCRED): the kernel's
// word on who connected, whatever the socket's mode lets through.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, peerKey{}, peerOf(c))
}

func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{err: fmt.Errorf("connection is not a unix socket (%T)", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{err: fmt.Errorf("raw connection: %w", err)}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{err: fmt.Errorf("raw connection: %w", err)}
	}
	if credErr != nil {
		return peer{err: fmt.Errorf("read peer credentials: %w", credErr)}
	}
	return peer{uid: cred.Uid, pid: cred.Pid}
}

// guard admits only root's requests, bounds their bodies and gives each
// a write deadline, except the routes that stream (streams).
func (s *Server) guard(next http.Handler, streams func(*http.Request) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(peerKey{}).(peer)
		switch {
		case !ok:
			// Served without connContext (a test's handler): no peer to check.
		case p.err != nil:
			s.Log.Warn("Agent socket request refused: peer unknown", "error", p.err)
			writeError(w, http.StatusForbidden, agentapi.CodeForbidden, "peer credentials unreadable: "+p.err.Error())
			return
		case p.uid != 0:
			s.Log.Warn("Agent socket request refused: not root", "uid", p.uid, "pid", p.pid, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, agentapi.CodeForbidden, fmt.Sprintf("uid %d may not use the agent socket: root only", p.uid))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		if !streams(r) {
			// Best effort: a ResponseWriter without deadlines (a test
			// recorder) serves without them.
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Now().Add(requestTimeout))
			_ = rc.SetWriteDeadline(time.Now().Add(requestTimeout))
		}
		next.ServeHTTP(w, r)
	})
}

// streaming names the routes that outlive requestTimeout on purpose: flows
// with follow, and CPU profiles and traces.
func streaming(r *http.Request) bool {
	switch r.URL.Path {
	case "/v1/flows":
		return r.URL.Query().Get("follow") == "true"
	case "/debug/pprof/profile", "/debug/pprof/trace":
		return true
	}
	return false
}
