package bench

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParsePhases(t *testing.T) {
	tests := []struct {
		name    string
		log     string
		want    map[string][]time.Duration
		wantErr bool
	}{
		{
			name: "two ADDs among other lines",
			log: `time=2026-12-06T01:40:00.000Z level=INFO msg="Endpoint registered" invocation=ab endpoint=c/eth0 revision=3
time=2026-12-06T01:40:00.001Z level=INFO msg="Programs attached" invocation=ab endpoint=c/eth0 ifname=veth1 ifindex=7 mode=tcx vethLookup=312.5µs register=2.1ms attach=850µs
time=2026-12-06T01:40:01.001Z level=INFO msg="Programs attached" invocation=cd endpoint=d/eth0 ifname=veth2 ifindex=8 mode=tcx vethLookup=290µs register=1.9ms attach=1.2ms
`,
			want: map[string][]time.Duration{
				"vethLookup": {312500 * time.Nanosecond, 290 * time.Microsecond},
				"register":   {2100 * time.Microsecond, 1900 * time.Microsecond},
				"attach":     {850 * time.Microsecond, 1200 * time.Microsecond},
			},
		},
		{
			name:    "a plugin without phase logging",
			log:     `time=2026-12-06T01:40:00.001Z level=INFO msg="Programs attached" endpoint=c/eth0 ifname=veth1 ifindex=7 mode=tcx` + "\n",
			wantErr: true,
		},
		{
			name:    "a malformed time",
			log:     `level=INFO msg="Programs attached" vethLookup=soon register=1ms attach=1ms` + "\n",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePhases(tt.log)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParsePhases error = %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); !tt.wantErr && diff != "" {
				t.Errorf("phases (-want +got):\n%s", diff)
			}
		})
	}
}
