package agentapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrAgentUnavailable means nothing answered on the agent's socket.
var ErrAgentUnavailable = errors.New("agent unavailable")

// ErrEndpointNotFound means the agent does not know the endpoint.
var ErrEndpointNotFound = errors.New("endpoint not found")

// clientTimeout bounds every call. It is longer than AddTimeout so that the
// agent, not the transport, reports a slow ADD.
const clientTimeout = AddTimeout + 5*time.Second

// Client talks to the agent over its unix socket. It speaks HTTP/1.0 itself,
// one request per connection, instead of through net/http: the plugin
// execs once per pod start, and net/http's client (its TLS, HTTP/2 and
// proxy support, its transport goroutines) made the plugin binary 2.7 MB
// larger and its one request slower, for nothing a unix socket to a local
// server needs. HTTP/1.0 keeps the agent's net/http server answering with
// a plain body, never chunked, and closing the connection after it.
type Client struct {
	socket string
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client { return &Client{socket: socket} }

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Status asks whether the agent is ready. It is cheap: the plugin asks on
// every call.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, "GET", "/v1/status", nil, &st)
}

// StatusDetail is Status with what palisadectl status shows besides:
// identities, policies, the API connection and the maps' fill levels.
func (c *Client) StatusDetail(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, "GET", "/v1/status?detail=true", nil, &st)
}

// Add registers an endpoint and returns once its policy is programmed.
func (c *Client) Add(ctx context.Context, req *AddRequest) (*AddResponse, error) {
	var resp AddResponse
	return &resp, c.do(ctx, "POST", "/v1/endpoints", req, &resp)
}

// Get returns one endpoint, or ErrEndpointNotFound.
func (c *Client) Get(ctx context.Context, id string) (*Endpoint, error) {
	var ep Endpoint
	return &ep, c.do(ctx, "GET", "/v1/endpoints/"+url.PathEscape(id), nil, &ep)
}

// List returns every endpoint of the node.
func (c *Client) List(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.do(ctx, "GET", "/v1/endpoints", nil, &eps)
}

// Delete forgets an endpoint; deleting an unknown one returns ErrEndpointNotFound.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/endpoints/"+url.PathEscape(id), nil, nil)
}

// GC forgets every endpoint not listed in req.
func (c *Client) GC(ctx context.Context, req *GCRequest) (*GCResponse, error) {
	var resp GCResponse
	return &resp, c.do(ctx, "POST", "/v1/gc", req, &resp)
}

// Profile writes the agent's pprof profile kind ("profile" for CPU over d,
// or "heap", "goroutine", …) to w.
func (c *Client) Profile(ctx context.Context, kind string, d time.Duration, w io.Writer) error {
	path := "/debug/pprof/" + url.PathEscape(kind)
	if kind == "profile" || kind == "trace" {
		path += fmt.Sprintf("?seconds=%d", max(1, int(d.Seconds())))
	}
	resp, err := c.roundTrip(ctx, "GET", path, nil, d+clientTimeout)
	if err != nil {
		return err
	}
	defer resp.Close()
	if resp.StatusCode != 200 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(msg))
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("read profile %s: %w", kind, err)
	}
	return nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	}
	resp, err := c.roundTrip(ctx, method, path, body, clientTimeout)
	if err != nil {
		return err
	}
	defer resp.Close()
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

// response is an answer whose body is still on the connection.
type response struct {
	Status     string // "404 Not Found"
	StatusCode int
	Body       io.Reader
	conn       net.Conn
	stop       func() bool
}

// Close releases the connection and the context's watch on it.
func (r *response) Close() error {
	r.stop()
	return r.conn.Close()
}

// roundTrip dials the socket, sends one HTTP/1.0 request and reads the
// answer's status line and headers. A failure to dial or to get an answer
// wraps ErrAgentUnavailable. timeout bounds the whole exchange, body
// included; 0 means only ctx does (a followed flow stream).
func (c *Client) roundTrip(ctx context.Context, method, path string, body []byte, timeout time.Duration) (*response, error) {
	unavailable := func(err error) error {
		return fmt.Errorf("%w: %s %s on %s: %w", ErrAgentUnavailable, method, path, c.socket, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, unavailable(err)
	}
	if timeout > 0 {
		_ = conn.SetDeadline(time.Now().Add(timeout))
	}
	// Cancelling ctx unblocks a read or write in progress.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*response, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, unavailable(err)
	}
	// One write: request line, headers and body together.
	req := make([]byte, 0, 128+len(body))
	req = fmt.Appendf(req, "%s %s HTTP/1.0\r\nHost: agent\r\n", method, path)
	if body != nil {
		req = fmt.Appendf(req, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	req = append(append(req, "\r\n"...), body...)
	if _, err := conn.Write(req); err != nil {
		return fail(fmt.Errorf("send request: %w", err))
	}
	br := bufio.NewReaderSize(conn, maxLine)
	line, err := readLine(br)
	if err != nil {
		return fail(fmt.Errorf("read status line: %w", err))
	}
	proto, status, ok := strings.Cut(line, " ")
	code, cerr := strconv.Atoi(status[:min(3, len(status))])
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") || cerr != nil {
		return fail(fmt.Errorf("malformed status line %q", line))
	}
	length := int64(-1)
	for {
		line, err := readLine(br)
		if err != nil {
			return fail(fmt.Errorf("read headers: %w", err))
		}
		if line == "" {
			break
		}
		name, value, _ := strings.Cut(line, ":")
		if strings.EqualFold(name, "Content-Length") {
			if length, err = strconv.ParseInt(strings.TrimSpace(value), 10, 64); err != nil || length < 0 {
				return fail(fmt.Errorf("malformed header %q", line))
			}
		}
	}
	var r io.Reader = br // HTTP/1.0: the body runs to the connection's end
	if length >= 0 {
		r = io.LimitReader(br, length)
	}
	return &response{Status: status, StatusCode: code, Body: r, conn: conn, stop: stop}, nil
}

// maxLine bounds a status or header line: the agent's are short.
const maxLine = 8 << 10

func readLine(br *bufio.Reader) (string, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("line longer than %d bytes", maxLine)
		}
		return "", err
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}
