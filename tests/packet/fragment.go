package packet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Fragments returns the packet as IP fragments, each an Ethernet frame
// carrying at most chunk bytes of what follows the IP header (chunk is
// rounded down to a multiple of 8, as fragment offsets count 8-byte
// units), all with the identification id (16 bits of it for IPv4). This
// is what a sender whose MTU is smaller than the packet puts on the wire:
// only the first fragment carries the transport header. A packet that
// fits in one chunk is still fragmented: one fragment, offset 0, no more.
func (p Packet) Fragments(chunk int, id uint32) [][]byte {
	if p.HopByHop {
		panic("packet: fragmenting behind a hop-by-hop header is not supported")
	}
	chunk &^= 7
	if chunk <= 0 {
		panic(fmt.Sprintf("packet: fragment chunk %d is smaller than 8 bytes", chunk))
	}
	whole := p.IP()
	hl, proto := 20, p.Proto
	if !p.Src.Is4() {
		hl = 40
	}
	head, data := whole[:hl], whole[hl:]
	var out [][]byte
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		more := end < len(data)
		if p.Src.Is4() {
			out = append(out, frame4(head, data[off:end], uint16(id), off, more))
		} else {
			out = append(out, frame6(head, proto, data[off:end], id, off, more))
		}
	}
	return out
}

func frame4(head, part []byte, id uint16, off int, more bool) []byte {
	ip := append([]byte(nil), head...)
	binary.BigEndian.PutUint16(ip[2:], uint16(len(head)+len(part)))
	binary.BigEndian.PutUint16(ip[4:], id)
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], fo)
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip))
	return ethernet(0x0800, append(ip, part...))
}

func frame6(head []byte, proto uint8, part []byte, id uint32, off int, more bool) []byte {
	ip := append([]byte(nil), head...)
	ip[6] = 44 // fragment header
	fh := make([]byte, 8)
	fh[0] = proto
	fo := uint16(off)
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], fo)
	binary.BigEndian.PutUint32(fh[4:], id)
	binary.BigEndian.PutUint16(ip[4:], uint16(len(fh)+len(part)))
	return ethernet(0x86dd, append(append(ip, fh...), part...))
}

func ethernet(etherType uint16, ip []byte) []byte {
	eth := make([]byte, 14)
	binary.BigEndian.PutUint16(eth[12:], etherType)
	return append(eth, ip...)
}

// Reassemble joins fragments made by Fragments (in any order, as a program
// may have rewritten them) back into one frame, taking the addresses from
// the first fragment's header as a receiver does. It fails when the
// fragments' addresses disagree, when one is missing, or when one is not
// a fragment.
func Reassemble(frags [][]byte) ([]byte, error) {
	type piece struct {
		off  int
		more bool
		data []byte
	}
	var head []byte
	var proto uint8
	var pieces []piece
	var addrs []byte
	for i, f := range frags {
		ip := f[14:]
		var pc piece
		var h, a []byte
		if ip[0]>>4 == 4 {
			hl := int(ip[0]&0x0f) * 4
			ip = ip[:binary.BigEndian.Uint16(ip[2:])]
			fo := binary.BigEndian.Uint16(ip[6:])
			pc = piece{off: int(fo&0x1fff) * 8, more: fo&0x2000 != 0, data: ip[hl:]}
			h, a, proto = ip[:hl], ip[12:20], ip[9]
		} else {
			ip = ip[:40+int(binary.BigEndian.Uint16(ip[4:]))]
			if ip[6] != 44 {
				return nil, fmt.Errorf("frame %d has no fragment header", i)
			}
			fo := binary.BigEndian.Uint16(ip[42:])
			pc = piece{off: int(fo &^ 7), more: fo&1 != 0, data: ip[48:]}
			h, a, proto = ip[:40], ip[8:40], ip[40]
		}
		if addrs != nil && string(addrs) != string(a) {
			return nil, fmt.Errorf("fragment %d has other addresses than fragment 0", i)
		}
		addrs = a
		if pc.off == 0 {
			head = append([]byte(nil), h...)
		}
		pieces = append(pieces, pc)
	}
	if head == nil {
		return nil, fmt.Errorf("no first fragment")
	}
	var data []byte
	complete := false
	for len(pieces) > 0 {
		found := false
		for i, pc := range pieces {
			if pc.off != len(data) {
				continue
			}
			data = append(data, pc.data...)
			complete = !pc.more
			pieces = append(pieces[:i], pieces[i+1:]...)
			found = true
			if complete && len(pieces) > 0 {
				return nil, fmt.Errorf("%d fragments after the last one", len(pieces))
			}
			break
		}
		if !found {
			return nil, fmt.Errorf("no fragment at offset %d", len(data))
		}
	}
	if !complete {
		return nil, fmt.Errorf("no last fragment")
	}
	if head[0]>>4 == 4 {
		binary.BigEndian.PutUint16(head[2:], uint16(len(head)+len(data)))
		binary.BigEndian.PutUint16(head[6:], 0)
		head[10], head[11] = 0, 0
		binary.BigEndian.PutUint16(head[10:], Checksum(head))
		return ethernet(0x0800, append(head, data...)), nil
	}
	head[6] = proto
	binary.BigEndian.PutUint16(head[4:], uint16(len(data)))
	return ethernet(0x86dd, append(head, data...)), nil
}

// IsFragment reports whether an IPv4 frame is a fragment (offset or more
// fragments set) or an IPv6 frame carries a fragment header, and whether
// it is the first one (offset 0).
func IsFragment(frame []byte) (frag, first bool) {
	ip := frame[14:]
	if ip[0]>>4 == 4 {
		fo := binary.BigEndian.Uint16(ip[6:])
		return fo&0x3fff != 0, fo&0x1fff == 0
	}
	if ip[6] != 44 {
		return false, false
	}
	return true, binary.BigEndian.Uint16(ip[42:])&^7 == 0
}

// IPv4HeaderOK reports whether an IPv4 frame's header checksum verifies
// (always true for IPv6, which has none).
func IPv4HeaderOK(frame []byte) bool {
	ip := frame[14:]
	if ip[0]>>4 != 4 {
		return true
	}
	return Checksum(ip[:int(ip[0]&0x0f)*4]) == 0
}

// Addrs reads the source and destination of any IP frame, fragment or not.
func Addrs(frame []byte) Decoded {
	ip := frame[14:]
	var d Decoded
	if ip[0]>>4 == 4 {
		d.Src, d.Dst = addr(ip[12:16]), addr(ip[16:20])
	} else {
		d.Src, d.Dst = addr(ip[8:24]), addr(ip[24:40])
	}
	return d
}

func addr(b []byte) netip.Addr {
	if len(b) == 4 {
		return netip.AddrFrom4([4]byte(b))
	}
	return netip.AddrFrom16([16]byte(b))
}
