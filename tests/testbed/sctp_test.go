package testbed

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"testing"
)

func TestSCTPInit(t *testing.T) {
	// The CRC32c check value of "123456789" (RFC 3720 B.4).
	if got := crc32.Checksum([]byte("123456789"), castagnoli); got != 0xe3069283 {
		t.Fatalf("crc32c = %#x", got)
	}
	pkt := sctpInit(40000, 80, 0xabcd0001)
	sum := binary.LittleEndian.Uint32(pkt[8:])
	zeroed := bytes.Clone(pkt)
	copy(zeroed[8:12], []byte{0, 0, 0, 0})
	if crc32.Checksum(zeroed, castagnoli) != sum {
		t.Error("checksum field is not the CRC32c of the packet")
	}
	src := netip.MustParseAddr("10.244.1.5")
	ip := make([]byte, 20)
	ip[0], ip[9] = 0x45, 132
	copy(ip[12:], src.AsSlice())
	ip = append(ip, pkt...)
	if !matchInit(ip, src, 40000, 80, 0xabcd0001) {
		t.Error("the INIT built does not match itself")
	}
	for name, ok := range map[string]bool{
		"other tag":    matchInit(ip, src, 40000, 80, 0xabcd0003),
		"other port":   matchInit(ip, src, 40000, 81, 0xabcd0001),
		"other source": matchInit(ip, netip.MustParseAddr("10.244.1.6"), 40000, 80, 0xabcd0001),
		"truncated":    matchInit(ip[:40], src, 40000, 80, 0xabcd0001),
	} {
		if ok {
			t.Errorf("%s matched", name)
		}
	}
}

// TestSCTPInit6: an IPv6 INIT (fixed header, no extension headers) matches
// by the source's IPv6 address, and an IPv4 packet never matches an IPv6
// source.
func TestSCTPInit6(t *testing.T) {
	pkt := sctpInit(40000, 80, 0xabcd0001)
	src := netip.MustParseAddr("fd00:10:244:1::5")
	ip := make([]byte, 40)
	ip[0], ip[6] = 0x60, 132
	copy(ip[8:], src.AsSlice())
	ip = append(ip, pkt...)
	v4 := make([]byte, 20)
	v4[0], v4[9] = 0x45, 132
	v4 = append(v4, pkt...)
	for _, tc := range []struct {
		name string
		ip   []byte
		src  netip.Addr
		want bool
	}{
		{"itself", ip, src, true},
		{"other source", ip, netip.MustParseAddr("fd00:10:244:1::6"), false},
		{"IPv4 packet", v4, src, false},
		{"truncated", ip[:60], src, false},
	} {
		if got := matchInit(tc.ip, tc.src, 40000, 80, 0xabcd0001); got != tc.want {
			t.Errorf("%s: matched %v, want %v", tc.name, got, tc.want)
		}
	}
}
