package agentapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
)

// Policy returns the compiled policy of a local pod, named "namespace/name".
func (c *Client) Policy(ctx context.Context, pod string) (*PodPolicy, error) {
	var out PodPolicy
	return &out, c.do(ctx, "GET", "/v1/policy?pod="+url.QueryEscape(pod), nil, &out)
}

// Explain asks for the verdict on a flow, one Explanation per port.
func (c *Client) Explain(ctx context.Context, req *ExplainRequest) ([]Explanation, error) {
	var out []Explanation
	return out, c.do(ctx, "POST", "/v1/explain", req, &out)
}

// Flows calls fn with each flow the filter selects: the recent ones, then,
// with Follow, new ones until ctx ends or fn returns an error. The stream is
// newline-delimited JSON, so it has no overall timeout.
func (c *Client) Flows(ctx context.Context, filter FlowFilter, fn func(*Flow) error) error {
	q := url.Values{}
	if filter.Pod != "" {
		q.Set("pod", filter.Pod)
	}
	if filter.Verdict != "" {
		q.Set("verdict", filter.Verdict)
	}
	if filter.Follow {
		q.Set("follow", "true")
	}
	resp, err := c.roundTrip(ctx, "GET", "/v1/flows?"+q.Encode(), nil, 0)
	if err != nil {
		return err
	}
	defer resp.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		apiErr := &Error{Code: CodeInternal, Message: string(data)}
		_ = json.Unmarshal(data, apiErr)
		return apiErr
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var f Flow
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return fmt.Errorf("decode flow: %w", err)
		}
		if err := fn(&f); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(ctx.Err(), context.Canceled) && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("read flows: %w", err)
	}
	return nil
}
