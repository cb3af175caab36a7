package testbed

import (
	"context"
	"net/http"
	"time"
)

// httpClientIn is an HTTP client whose connections are opened inside netns.
func httpClientIn(netns *NetNS) *http.Client {
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{DialContext: netns.DialContext, DisableKeepAlives: true},
	}
}

func newGet(ctx context.Context, url string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}
