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

func TestFragmentsReassembleToThePacket(t *testing.T) {
	for _, p := range []Packet{
		{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: UDP, SrcPort: 5353, DstPort: 53, Payload: make([]byte, 4000)},
		{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: UDP, SrcPort: 2, DstPort: 53, Payload: make([]byte, 4000)},
	} {
		frags := p.Fragments(1480, 0x1234)
		if len(frags) != 3 {
			t.Fatalf("%s: %d fragments of a 4 008-byte datagram at 1 480 bytes each, want 3", p.Src, len(frags))
		}
		for i, f := range frags {
			frag, first := IsFragment(f)
			if !frag || first != (i == 0) || !IPv4HeaderOK(f) {
				t.Errorf("%s fragment %d: fragment %v, first %v, header ok %v", p.Src, i, frag, first, IPv4HeaderOK(f))
			}
		}
		// Out of order, as a receiver may get them.
		whole, err := Reassemble([][]byte{frags[2], frags[0], frags[1]})
		if err != nil {
			t.Fatalf("%s: %v", p.Src, err)
		}
		// Identification aside (IPv4 carries it in the header), the
		// reassembled frame is the packet.
		if want := p.Frame(); len(whole) != len(want) || string(whole[34:]) != string(want[34:]) || Decode(whole) != Decode(want) {
			t.Errorf("%s: reassembled frame differs from the packet", p.Src)
		}
		if _, err := Reassemble(frags[:2]); err == nil {
			t.Errorf("%s: reassembly without the last fragment succeeded", p.Src)
		}
		if _, err := Reassemble(frags[1:]); err == nil {
			t.Errorf("%s: reassembly without the first fragment succeeded", p.Src)
		}
	}
}
