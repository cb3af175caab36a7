package bpf

import (
	"net/netip"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

func TestPortPrefixesCoverExactlyTheRange(t *testing.T) {
	ranges := []PortRange{
		{1, 1}, {80, 80}, {0, 65535}, {1, 65535}, {0, 0xfffe}, {32000, 32768},
		{1024, 2047}, {1023, 2048}, {5000, 5001}, {65535, 65535}, {3, 17},
	}
	for _, r := range ranges {
		covered := map[uint32]int{}
		for _, pp := range portPrefixes(r.First, r.Last) {
			span := uint32(1) << (16 - pp.bits)
			if uint32(pp.port)%span != 0 {
				t.Errorf("range %v: block %d/%d is not aligned", r, pp.port, pp.bits)
			}
			for p := uint32(pp.port); p < uint32(pp.port)+span; p++ {
				covered[p]++
			}
		}
		for p := uint32(0); p <= 0xffff; p++ {
			want := 0
			if p >= uint32(r.First) && p <= uint32(r.Last) {
				want = 1
			}
			if covered[p] != want {
				t.Fatalf("range %v: port %d covered %d times, want %d", r, p, covered[p], want)
			}
		}
	}
}

func TestPolicyKeysPrefixLengths(t *testing.T) {
	tests := []struct {
		name  string
		proto uint8
		r     PortRange
		want  []uint32
	}{
		{"no protocol means every protocol and port", 0, PortRange{}, []uint32{32}},
		{"protocol without ports means every port", 6, PortRange{}, []uint32{40}},
		{"the full range is every port", 6, PortRange{0, 65535}, []uint32{40}},
		{"one port is a full-length key", 17, PortRange{53, 53}, []uint32{64}},
		{"an aligned block is one key", 6, PortRange{1024, 2047}, []uint32{54}},
		{"an unaligned pair is two keys", 6, PortRange{5001, 5002}, []uint32{64, 64}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys, err := PolicyKeys(300, tt.proto, tt.r)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint32
			for _, k := range keys {
				got = append(got, k.Prefixlen)
				if k.Identity != 300 || k.Proto != tt.proto {
					t.Errorf("key %+v lost identity or protocol", k)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("prefix lengths (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPolicyKeysRejectNonsense(t *testing.T) {
	if _, err := PolicyKeys(1, 0, PortRange{80, 80}); err == nil {
		t.Error("ports without a protocol were accepted")
	}
	if _, err := PolicyKeys(1, 6, PortRange{90, 80}); err == nil {
		t.Error("an empty range was accepted")
	}
}

func TestPolicyKeyPortIsNetworkOrder(t *testing.T) {
	keys, err := PolicyKeys(1, 6, PortRange{0x1f90, 0x1f90})
	if err != nil {
		t.Fatal(err)
	}
	raw := (*[2]byte)(unsafe.Pointer(&keys[0].PortNet))
	if raw[0] != 0x1f || raw[1] != 0x90 {
		t.Errorf("port 8080 stored as % x, want 1f 90", raw[:])
	}
	if keys[0].Port() != 8080 {
		t.Errorf("Port() = %d, want 8080", keys[0].Port())
	}
}

func TestIPCacheKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"10.244.1.7/32", "10.0.0.0/8", "0.0.0.0/0", "fd00::1/128", "fd00::/64"} {
		p := netip.MustParsePrefix(s)
		k := NewIPCacheKey(p)
		if got := k.Prefix(); got != p {
			t.Errorf("%s round-tripped to %s", p, got)
		}
		if p.Addr().Is4() && k.Prefixlen != uint32(96+p.Bits()) {
			t.Errorf("%s: IPv4 prefix length %d, want %d", p, k.Prefixlen, 96+p.Bits())
		}
	}
}

// The C structs and their generated Go mirrors must agree byte for byte.
func TestLayoutSizes(t *testing.T) {
	sizes := map[string][2]uintptr{
		"policy_key":    {unsafe.Sizeof(PolicyKey{}), 20},
		"ipcache_key":   {unsafe.Sizeof(IPCacheKey{}), 20},
		"ct_key":        {unsafe.Sizeof(CTKey{}), 40},
		"endpoint_info": {unsafe.Sizeof(EndpointInfo{}), 24 + 16*4},
	}
	for name, s := range sizes {
		if s[0] != s[1] {
			t.Errorf("%s is %d bytes, want %d", name, s[0], s[1])
		}
	}
}

func TestEndpointAddrsRoundTrip(t *testing.T) {
	addrs := []netip.Addr{subjectIP, subject6}
	var info EndpointInfo
	if err := info.SetAddrs(addrs); err != nil {
		t.Fatal(err)
	}
	if got := info.Addresses(); !cmp.Equal(got, addrs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Errorf("addresses %v, want %v", got, addrs)
	}
	if info.Addrs[0] != netip.AddrFrom16(subjectIP.As16()).As16() || info.Addrs[0][10] != 0xff {
		t.Errorf("IPv4 stored as %x, want IPv4-mapped", info.Addrs[0])
	}
	tooMany := make([]netip.Addr, MaxEndpointAddrs+1)
	for i := range tooMany {
		tooMany[i] = netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 1)})
	}
	if err := info.SetAddrs(tooMany); err == nil {
		t.Errorf("%d addresses accepted, want an error", len(tooMany))
	}
}
