package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/events"
	"github.com/palisade-cni/palisade/daemon/inspect"
)

// Inspect is what palisadectl's routes read.
type Inspect struct {
	// Views returns a snapshot of the compiled policy; nil before the first sync.
	Views func() *inspect.View
	// MapEntries reads a pod's policy map back from the kernel.
	MapEntries inspect.MapReader
	// Flows holds the recent verdict events and streams new ones.
	Flows *events.Hub
	// Status adds the agent-wide details to a status answer.
	Status func(*agentapi.Status)
}

func (s *Server) inspectRoutes(mux *http.ServeMux) {
	if s.Inspect == nil {
		return
	}
	mux.HandleFunc("GET /v1/policy", s.podPolicy)
	mux.HandleFunc("POST /v1/explain", s.explain)
	mux.HandleFunc("GET /v1/flows", s.flows)
}

func (s *Server) statusDetail(st *agentapi.Status) {
	if s.Inspect != nil && s.Inspect.Status != nil {
		s.Inspect.Status(st)
	}
}

func (s *Server) endpointDetail(ep *agentapi.Endpoint) {
	if s.Inspect == nil {
		return
	}
	v := s.Inspect.Views()
	if v == nil {
		return
	}
	if pol, ok := v.Result.Endpoints[ep.ID]; ok {
		ep.Identity, ep.IngressIsolated, ep.EgressIsolated, ep.Policies = pol.Identity, pol.IngressIsolated, pol.EgressIsolated, pol.Policies
	}
}

// view returns the snapshot, or answers 503 when there is none yet.
func (s *Server) view(w http.ResponseWriter) *inspect.View {
	v := s.Inspect.Views()
	if v == nil {
		writeError(w, http.StatusServiceUnavailable, agentapi.CodeNotReady, "the agent has not compiled any policy yet; try again once palisadectl status says ready")
	}
	return v
}

func (s *Server) podPolicy(w http.ResponseWriter, r *http.Request) {
	pod := r.URL.Query().Get("pod")
	if !strings.Contains(pod, "/") {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalidRequest, "name the pod as namespace/name")
		return
	}
	v := s.view(w)
	if v == nil {
		return
	}
	pp, err := v.PodPolicy(pod, s.Inspect.MapEntries)
	var nl *inspect.ErrNotLocal
	switch {
	case errors.As(err, &nl):
		writeError(w, http.StatusNotFound, agentapi.CodeNotFound, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, agentapi.CodeInternal, err.Error())
		return
	}
	pp.Revision, _ = s.Controller.Status(pp.EndpointID)
	writeJSON(w, http.StatusOK, pp)
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	var req agentapi.ExplainRequest
	if !decode(w, r, &req) {
		return
	}
	v := s.view(w)
	if v == nil {
		return
	}
	xs, err := v.Explain(req)
	if err != nil {
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalidRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, xs)
}

// flows streams newline-delimited JSON: the recent flows that match, then,
// with follow=true, new ones until the client goes away.
func (s *Server) flows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	filter := agentapi.FlowFilter{Pod: q.Get("pod"), Verdict: q.Get("verdict"), Follow: q.Get("follow") == "true"}
	switch filter.Verdict {
	case "", agentapi.FlowAllowed, agentapi.FlowDropped:
	default:
		writeError(w, http.StatusBadRequest, agentapi.CodeInvalidRequest, "verdict must be allowed or dropped")
		return
	}
	// Subscribe before reading the recent flows, so none falls between.
	var live <-chan agentapi.Flow
	if filter.Follow {
		ch, cancel := s.Inspect.Flows.Subscribe()
		defer cancel()
		live = ch
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	for _, f := range s.Inspect.Flows.Recent(filter) {
		if enc.Encode(f) != nil {
			return
		}
	}
	if flusher != nil {
		flusher.Flush()
	}
	if !filter.Follow {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case f := <-live:
			if !filter.Match(&f) {
				continue
			}
			if enc.Encode(f) != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}
