package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ErrAgentUnavailable means nothing answered on the agent's socket.
var ErrAgentUnavailable = errors.New("agent unavailable")

// ErrEndpointNotFound means the agent does not know the endpoint.
var ErrEndpointNotFound = errors.New("endpoint not found")

// clientTimeout bounds every call. It is longer than AddTimeout so that the
// agent, not the transport, reports a slow ADD.
const clientTimeout = AddTimeout + 5*time.Second

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: clientTimeout}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Status asks whether the agent is ready. It is cheap: the plugin asks on
// every call.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// StatusDetail is Status with what palisadectl status shows besides:
// identities, policies, the API connection and the maps' fill levels.
func (c *Client) StatusDetail(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, http.MethodGet, "/v1/status?detail=true", nil, &st)
}

// Add registers an endpoint and returns once its policy is programmed.
func (c *Client) Add(ctx context.Context, req *AddRequest) (*AddResponse, error) {
	var resp AddResponse
	return &resp, c.do(ctx, http.MethodPost, "/v1/endpoints", req, &resp)
}

// Get returns one endpoint, or ErrEndpointNotFound.
func (c *Client) Get(ctx context.Context, id string) (*Endpoint, error) {
	var ep Endpoint
	return &ep, c.do(ctx, http.MethodGet, "/v1/endpoints/"+url.PathEscape(id), nil, &ep)
}

// List returns every endpoint of the node.
func (c *Client) List(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &eps)
}

// Delete forgets an endpoint; deleting an unknown one returns ErrEndpointNotFound.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/endpoints/"+url.PathEscape(id), nil, nil)
}

// GC forgets every endpoint not listed in req.
func (c *Client) GC(ctx context.Context, req *GCRequest) (*GCResponse, error) {
	var resp GCResponse
	return &resp, c.do(ctx, http.MethodPost, "/v1/gc", req, &resp)
}

// Profile writes the agent's pprof profile kind ("profile" for CPU over d,
// or "heap", "goroutine", …) to w.
func (c *Client) Profile(ctx context.Context, kind string, d time.Duration, w io.Writer) error {
	path := "/debug/pprof/" + url.PathEscape(kind)
	if kind == "profile" || kind == "trace" {
		path += fmt.Sprintf("?seconds=%d", max(1, int(d.Seconds())))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return fmt.Errorf("build GET %s: %w", path, err)
	}
	hc := *c.hc
	hc.Timeout = d + clientTimeout
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: GET %s on %s: %w", ErrAgentUnavailable, path, c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(msg))
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("read profile %s: %w", kind, err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return fmt.Errorf("build %s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s %s on %s: %w", ErrAgentUnavailable, method, path, c.socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read answer to %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		apiErr := &Error{Code: CodeInternal, Message: string(bytes.TrimSpace(data))}
		_ = json.Unmarshal(data, apiErr)
		if apiErr.Code == CodeNotFound {
			return fmt.Errorf("%w: %w", ErrEndpointNotFound, apiErr)
		}
		return apiErr
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return nil
}
