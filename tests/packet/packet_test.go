package packet

import (
	"net/netip"
	"testing"
)

func TestFramesDecodeWithValidChecksums(t *testing.T) {
	for _, p := range []Packet{
		{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: TCP, SrcPort: 1234, DstPort: 80, TCPFlags: SYN},
		{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: UDP, SrcPort: 5353, DstPort: 53, Payload: []byte("q")},
		{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: TCP, SrcPort: 1, DstPort: 443},
		{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: UDP, SrcPort: 2, DstPort: 53},
	} {
		d := Decode(p.Frame())
		if d.Src != p.Src || d.Dst != p.Dst || d.SrcPort != p.SrcPort || d.DstPort != p.DstPort || !d.ChecksumsOK {
			t.Errorf("%+v decoded as %+v", p, d)
		}
		f := p.Frame()
		f[len(f)-1] ^= 0xff // corrupt the last byte
		if p.Proto == TCP && Decode(f).ChecksumsOK {
			t.Errorf("%+v: a corrupted frame passed the checksum", p)
		}
	}
}
