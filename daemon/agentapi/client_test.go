package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve runs h with net/http's server, as the agent does, on a unix socket
// and returns a client for it.
func serve(t *testing.T, h http.Handler) *Client {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return NewClient(socket)
}

// The client speaks HTTP/1.0 to net/http's server: every answer shape the
// agent produces must come through, large bodies (which net/http would
// chunk for HTTP/1.1) included.
func TestClientAgainstNetHTTPServer(t *testing.T) {
	many := make([]Endpoint, 2000) // ~300 KB of JSON, written in many chunks
	for i := range many {
		many[i] = Endpoint{ID: fmt.Sprintf("ctr%d/eth0", i), PodNamespace: "default", PodName: fmt.Sprintf("web-%d", i)}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(many)
	})
	mux.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req AddRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(AddResponse{Endpoint: Endpoint{ID: EndpointID(req.ContainerID, req.IfName)}, BPFRoot: "/sys/fs/bpf/x"})
	})
	mux.HandleFunc("GET /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(Error{Code: CodeNotFound, Message: "no endpoint " + r.PathValue("id")})
	})
	mux.HandleFunc("DELETE /v1/endpoints/{id}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(Error{Code: CodeNotReady, Message: "caches not synced"})
	})
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		for i := range 3 {
			_ = json.NewEncoder(w).Encode(Flow{Pod: r.URL.Query().Get("pod"), Verdict: fmt.Sprint(i)})
			w.(http.Flusher).Flush()
		}
	})
	c := serve(t, mux)
	ctx := context.Background()

	tests := []struct {
		name string
		call func() error
	}{
		{"large body without Content-Length", func() error {
			got, err := c.List(ctx)
			if err != nil {
				return err
			}
			if len(got) != len(many) || got[len(got)-1].PodName != many[len(many)-1].PodName {
				return fmt.Errorf("got %d endpoints, last %+v", len(got), got[len(got)-1])
			}
			return nil
		}},
		{"request body reaches the server", func() error {
			resp, err := c.Add(ctx, &AddRequest{ContainerID: "ctr1", IfName: "eth0"})
			if err != nil {
				return err
			}
			if resp.Endpoint.ID != EndpointID("ctr1", "eth0") || resp.BPFRoot != "/sys/fs/bpf/x" {
				return fmt.Errorf("answer %+v", resp)
			}
			return nil
		}},
		{"404 with NotFound is ErrEndpointNotFound", func() error {
			if _, err := c.Get(ctx, "ctr9/eth0"); !errors.Is(err, ErrEndpointNotFound) {
				return fmt.Errorf("Get = %v, want ErrEndpointNotFound", err)
			}
			return nil
		}},
		{"204 without a body", func() error { return c.Delete(ctx, "ctr1/eth0") }},
		{"error code comes through", func() error {
			var apiErr *Error
			if _, err := c.Status(ctx); !errors.As(err, &apiErr) || apiErr.Code != CodeNotReady {
				return fmt.Errorf("Status = %v, want a NotReady error", err)
			}
			return nil
		}},
		{"flow stream", func() error {
			var got []string
			err := c.Flows(ctx, FlowFilter{Pod: "default/web"}, func(f *Flow) error {
				got = append(got, f.Pod+":"+f.Verdict)
				return nil
			})
			if want := "default/web:0 default/web:1 default/web:2"; strings.Join(got, " ") != want {
				return fmt.Errorf("flows %v, want %s (err %v)", got, want, err)
			}
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestClientUnavailable(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	c := serve(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	tests := []struct {
		name   string
		client *Client
	}{
		{"nothing listens", NewClient(filepath.Join(t.TempDir(), "none.sock"))},
		{"cancelled while the agent holds the request", c},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			if _, err := tt.client.Status(ctx); !errors.Is(err, ErrAgentUnavailable) {
				t.Errorf("Status = %v, want ErrAgentUnavailable", err)
			}
		})
	}
}
