package health

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestProbes(t *testing.T) {
	t0 := time.Unix(10000, 0)
	tests := []struct {
		name              string
		pending           bool
		lastDone          time.Duration // before now
		apiDown           time.Duration // before now; 0: answering
		ready             bool
		wantLive, wantRdy int
		wantMsg           string
	}{
		{name: "idle and synced long ago", lastDone: time.Hour, ready: true, wantLive: 200, wantRdy: 200},
		{name: "pending, synced recently", pending: true, lastDone: time.Minute, ready: true, wantLive: 200, wantRdy: 200},
		{name: "pending and stalled", pending: true, lastDone: 4 * time.Minute, ready: true, wantLive: 503, wantRdy: 503, wantMsg: "pending work"},
		{name: "API down within the grace", lastDone: time.Second, apiDown: 10 * time.Second, ready: true, wantLive: 200, wantRdy: 200},
		{name: "API down past the grace", lastDone: time.Second, apiDown: 31 * time.Second, ready: true, wantLive: 200, wantRdy: 503, wantMsg: "API server unreachable"},
		{name: "not ready yet", ready: false, wantLive: 200, wantRdy: 503, wantMsg: "caches"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Checker{
				Stall: DefaultStall, APIGrace: DefaultAPIGrace, Now: func() time.Time { return t0 },
				Progress: func() (bool, time.Time) { return tt.pending, t0.Add(-tt.lastDone) },
				APIDown: func() (time.Time, string) {
					if tt.apiDown == 0 {
						return time.Time{}, ""
					}
					return t0.Add(-tt.apiDown), "GET https://api: <error>"
				},
				Ready: func() (bool, string) { return tt.ready, "waiting for the Kubernetes caches to sync" },
			}
			h := c.Handler(nil)
			var msgs string
			for path, want := range map[string]int{"/healthz": tt.wantLive, "/readyz": tt.wantRdy} {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
				if rec.Code != want {
					t.Errorf("%s: %d %q, want %d", path, rec.Code, rec.Body.String(), want)
				}
				msgs += rec.Body.String()
			}
			if !strings.Contains(msgs, tt.wantMsg) {
				t.Errorf("answers %q do not say %q", msgs, tt.wantMsg)
			}
		})
	}
}
