package bench

import (
	"slices"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{"0-1\n", []int{0, 1}, false},
		{"0", []int{0}, false},
		{"0-2,5,7-8", []int{0, 1, 2, 5, 7, 8}, false},
		{"", nil, true},
		{"3-1", nil, true},
		{"x", nil, true},
	}
	for _, tt := range tests {
		got, err := parseCPUList(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("parseCPUList(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestStatPPid(t *testing.T) {
	tests := []struct {
		stat string
		want int
	}{
		{"1234 (etcd) S 77 1234 1234 0 -1", 77},
		// A command holding spaces and parentheses.
		{"99 (a) b (c)) R 5 99 99 0", 5},
	}
	for _, tt := range tests {
		if got, err := statPPid(tt.stat); err != nil || got != tt.want {
			t.Errorf("statPPid(%q) = %v, %v; want %v", tt.stat, got, err, tt.want)
		}
	}
	if _, err := statPPid("garbage"); err == nil {
		t.Error("statPPid(garbage): want an error")
	}
}

func TestCgroupPath(t *testing.T) {
	text := "9:name=systemd:/\n6:freezer:/fz\n4:memory:/process_api/x\n3:cpuset,cpu:/cs\n0::/\n"
	tests := []struct{ controller, want string }{
		{"freezer", "/fz"}, {"cpuset", "/cs"}, {"cpu", "/cs"}, {"blkio", ""},
	}
	for _, tt := range tests {
		if got := cgroupPath(text, tt.controller); got != tt.want {
			t.Errorf("cgroupPath(%s) = %q, want %q", tt.controller, got, tt.want)
		}
	}
}

func TestParseSoftirqs(t *testing.T) {
	text := "                    CPU0       CPU1\n          HI:          0          0\n      NET_RX:       9785      11782\n"
	got, err := parseSoftirqs(text, "NET_RX")
	if err != nil || !slices.Equal(got, []uint64{9785, 11782}) {
		t.Errorf("parseSoftirqs = %v, %v; want [9785 11782]", got, err)
	}
	if _, err := parseSoftirqs(text, "NET_TX"); err == nil {
		t.Error("no NET_TX row: want an error")
	}
}

func TestTargetVerdict(t *testing.T) {
	tests := []struct {
		name  string
		s     Summary
		bound float64
		upper bool
		want  string
	}{
		{"rate met", Summary{Ratio: 0.99, RatioLo: 0.975, RatioHi: 1.0}, 0.97, false, "met"},
		{"rate missed", Summary{Ratio: 0.90, RatioLo: 0.88, RatioHi: 0.92}, 0.97, false, "missed by 7.2 %"},
		{"rate unresolved", Summary{Ratio: 0.97, RatioLo: 0.95, RatioHi: 0.99}, 0.97, false, "unresolved"},
		{"p99 met", Summary{Ratio: 1.0, RatioLo: 0.98, RatioHi: 1.03}, 1.05, true, "met"},
		{"p99 missed", Summary{Ratio: 1.10, RatioLo: 1.07, RatioHi: 1.12}, 1.05, true, "missed by 4.8 %"},
		{"p99 unresolved", Summary{Ratio: 1.04, RatioLo: 1.02, RatioHi: 1.06}, 1.05, true, "unresolved"},
		{"no data", Summary{}, 0.97, false, "no data"},
	}
	for _, tt := range tests {
		if got := targetVerdict(tt.s, tt.bound, tt.upper); got != tt.want {
			t.Errorf("%s: targetVerdict = %q, want %q", tt.name, got, tt.want)
		}
	}
}
