// Package server serves the agent's local API on a root-only unix socket:
// the CNI plugin registers and removes endpoints through it, and palisadectl
// reads it. Handlers are thin: they validate, call the registry and the
// controller, and write JSON.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/controller"
	"github.com/palisade-cni/palisade/daemon/endpoint"
)

// Server is the local API.
type Server struct {
	Log        *slog.Logger
	Version    string
	BPFRoot    string
	AttachMode bpf.AttachMode
	// Endpoints owns every endpoint's life; the server only translates.
	Endpoints  *endpoint.Manager
	Controller *controller.Controller
	// Ready reports whether the agent accepts endpoints, and why not.
	Ready func() (bool, string)
	// Pprof serves /debug/pprof/ (--pprof).
	Pprof bool
	// Inspect serves palisadectl's routes (inspect.go); nil serves none.
	Inspect *Inspect
	// OnAdd, if set, learns how long each successful ADD took to program
	// and how: "own" (the endpoint compiled on its own) or "sync" (it
	// waited for a whole sync).
	OnAdd func(how string, d time.Duration)
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("POST /v1/endpoints", s.add)
	mux.HandleFunc("GET /v1/endpoints", s.list)
	mux.HandleFunc("GET /v1/endpoints/{id}", s.get)
	mux.HandleFunc("DELETE /v1/endpoints/{id}", s.delete)
	mux.HandleFunc("POST /v1/gc", s.gc)
	s.inspectRoutes(mux)
	if s.Pprof {
		// Profiles expose the agent's memory: served only when asked for,
		// and only here, on the root-only socket.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return s.guard(mux, streaming)
}

// Serve listens on socket until ctx ends. The socket's directory is made
// 0700 and the socket 0600: only root may talk to the agent.
func (s *Server) Serve(ctx context.Context, socket string) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Chmod(filepath.Dir(socket), 0o700); err != nil {
		return fmt.Errorf("restrict socket directory: %w", err)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", socket, err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("restrict socket %s: %w", socket, err)
	}
	srv := &http.Server{
		Handler: s.Handler(), ConnContext: connContext, MaxHeaderBytes: maxHeaderBytes,
		ReadHeaderTimeout: headerTimeout, IdleTimeout: idleTimeout,
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil {
			s.Log.Warn("Agent socket not shut down cleanly", "error", err)
		}
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", socket, err)
	}
	return nil
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	ready, reason := s.Ready()
	st := agentapi.Status{
		Version: s.Version, Ready: ready, Reason: reason, BPFRoot: s.BPFRoot,
		AttachMode: string(s.AttachMode), Endpoints: len(s.Endpoints.List()), Revision: s.Controller.Revision(),
	}
	if r.URL.Query().Get("detail") == "true" {
		s.statusDetail(&st)
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) add(w http.ResponseWriter, r *http.Request) {
	var req agentapi.AddRequest
	if !decode(w, r, &req) {
		return
	}
	if msg := validate(&req); msg != "" {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalidRequest, msg)
		return
	}
	if ready, reason := s.Ready(); !ready {
		writeError(w, http.StatusServiceUnavailable, agentapi.CodeNotReady, "agent not ready: "+reason)
		return
	}
	ep := agentapi.Endpoint{
		ID: agentapi.EndpointID(req.ContainerID, req.IfName), ContainerID: req.ContainerID, IfName: req.IfName,
		Netns: req.Netns, PodNamespace: req.PodNamespace, PodName: req.PodName, PodUID: req.PodUID,
		HostIfName: req.HostIfName, HostIfIndex: req.HostIfIndex, IPs: req.IPs,
	}
	log := s.Log.With("endpoint", ep.ID, "pod", ep.PodNamespace+"/"+ep.PodName, "ifname", ep.HostIfName)
	ctx, cancel := context.WithTimeout(r.Context(), agentapi.AddTimeout)
	defer cancel()
	start := time.Now()
	ep, how, err := s.Endpoints.Add(ctx, ep)
	if err != nil {
		// The manager left nothing behind: the runtime will call DEL and
		// retry.
		msg := fmt.Sprintf("policy for pod %s/%s not programmed within %s: %v", ep.PodNamespace, ep.PodName, agentapi.AddTimeout, err)
		status, code := http.StatusGatewayTimeout, agentapi.CodeTimeout
		switch {
		case how == "":
			status, code, msg = http.StatusInternalServerError, agentapi.CodeInternal, err.Error()
		case errors.Is(err, controller.ErrPodUnknown):
			code = agentapi.CodePodUnknown
			msg = fmt.Sprintf("pod %s/%s (uid %q) is not in the agent's view of the API server; check that the agent can reach the API server", ep.PodNamespace, ep.PodName, ep.PodUID)
		}
		if errors.Is(err, endpoint.ErrRollback) {
			// Half state: say so, whatever else went wrong.
			log.Error("Endpoint not removed after its failed ADD", "error", err)
		} else {
			log.Warn("Endpoint not programmed", "error", err)
		}
		writeError(w, status, code, msg)
		return
	}
	if s.OnAdd != nil {
		s.OnAdd(how, time.Since(start))
	}
	log.Info("Endpoint added", "revision", ep.Revision, "ips", ep.IPs, "programmed", how)
	writeJSON(w, http.StatusOK, agentapi.AddResponse{Endpoint: ep, BPFRoot: s.BPFRoot, AttachMode: string(s.AttachMode)})
}

func validate(req *agentapi.AddRequest) string {
	switch {
	case req.ContainerID == "" || req.IfName == "":
		return "containerID and ifName are required"
	case req.PodNamespace == "" || req.PodName == "":
		return "podNamespace and podName are required"
	case req.HostIfIndex <= 0:
		return "hostIfIndex must be positive"
	case len(req.IPs) == 0:
		return "at least one IP is required"
	}
	if err := bpf.CheckEndpointAddrs(req.IPs); err != nil {
		return "pod has " + err.Error()
	}
	return ""
}

func (s *Server) withStatus(ep agentapi.Endpoint) agentapi.Endpoint {
	ep.Revision, ep.Current = s.Controller.Status(ep.ID)
	s.endpointDetail(&ep)
	return ep
}

func (s *Server) list(w http.ResponseWriter, _ *http.Request) {
	eps := s.Endpoints.List()
	for i := range eps {
		eps[i] = s.withStatus(eps[i])
	}
	writeJSON(w, http.StatusOK, eps)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) {
	ep, ok := s.Endpoints.Get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, "no endpoint "+r.PathValue("id"))
		return
	}
	writeJSON(w, http.StatusOK, s.withStatus(ep))
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	ep, ok := s.Endpoints.Get(r.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, "no endpoint "+r.PathValue("id"))
		return
	}
	if err := s.Endpoints.Remove(ep.ID); err != nil {
		s.Log.Error("Endpoint not removed", "endpoint", ep.ID, "error", err)
		writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, err.Error())
		return
	}
	s.Log.Info("Endpoint removed", "endpoint", ep.ID, "pod", ep.PodNamespace+"/"+ep.PodName)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req agentapi.GCRequest
	if !decode(w, r, &req) {
		return
	}
	valid := map[string]bool{}
	for _, a := range req.Valid {
		valid[agentapi.EndpointID(a.ContainerID, a.IfName)] = true
	}
	removed, kept, err := s.Endpoints.GC(valid)
	resp := agentapi.GCResponse{Removed: removed}
	if len(kept) > 0 {
		s.Log.Warn("Garbage collection kept endpoints the runtime did not list: their interface exists and their pod runs here",
			"kept", kept)
	}
	if err != nil {
		s.Log.Error("Garbage collection incomplete", "removed", removed, "error", err)
		writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, err.Error())
		return
	}
	s.Log.Info("Garbage collected", "removed", resp.Removed)
	writeJSON(w, http.StatusOK, resp)
}

// decode reads a request's JSON body into v, answering the error itself
// when it cannot.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	err := json.NewDecoder(r.Body).Decode(v)
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, agentapi.CodeTooLarge,
			fmt.Sprintf("request body over %d bytes", tooLarge.Limit))
	default:
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalidRequest, "decode request: "+err.Error())
	}
	return false
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code agentapi.ErrorCode, msg string) {
	writeJSON(w, status, agentapi.Error{Code: code, Message: msg})
}
