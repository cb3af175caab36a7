// Package packet builds Ethernet frames with IPv4 or IPv6 and TCP, UDP,
// SCTP or ICMP headers, with correct checksums, for tests that run the
// datapath programs through BPF_PROG_TEST_RUN; and reads back what a
// program rewrote.
package packet

import (
	"encoding/binary"
	"net/netip"
)

// Protocol numbers.
const (
	ICMP   uint8 = 1
	TCP    uint8 = 6
	UDP    uint8 = 17
	ICMPv6 uint8 = 58
	SCTP   uint8 = 132
)

// TCP flags.
const (
	FIN uint8 = 0x01
	SYN uint8 = 0x02
	RST uint8 = 0x04
	ACK uint8 = 0x10
)

// Packet describes one packet. For ICMP echo, SrcPort is the identifier.
type Packet struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16
	TCPFlags         uint8
	ICMPType         uint8
	// Payload follows the transport header; for an ICMP error, the quoted
	// IP packet.
	Payload []byte
	// HopByHop puts an IPv6 hop-by-hop options header (Router Alert, as
	// MLD sends) before the transport header.
	HopByHop bool
	// HopLimit is the IPv4 TTL or IPv6 hop limit; 0 means 64.
	HopLimit uint8
}

// ARP operations.
const (
	ARPRequest uint16 = 1
	ARPReply   uint16 = 2
)

// ARP returns an ARP frame for IPv4 over Ethernet from senderMAC, claiming
// senderIP (0.0.0.0 for a probe) and asking for or answering targetIP.
func ARP(op uint16, senderMAC [6]byte, senderIP, targetIP netip.Addr) []byte {
	f := make([]byte, 14+28)
	for i := range 6 {
		f[i] = 0xff
	}
	copy(f[6:], senderMAC[:])
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:], senderMAC[:])
	s, t := senderIP.As4(), targetIP.As4()
	copy(a[14:], s[:])
	copy(a[24:], t[:])
	return f
}

func (p Packet) hopLimit() uint8 {
	if p.HopLimit == 0 {
		return 64
	}
	return p.HopLimit
}

// Frame returns the packet as an Ethernet frame.
func (p Packet) Frame() []byte {
	eth := make([]byte, 14)
	if p.Src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	}
	return append(eth, p.IP()...)
}

// IP returns the packet from its IP header on.
func (p Packet) IP() []byte {
	l4 := p.transport()
	if p.Src.Is4() {
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8] = p.hopLimit()
		ip[9] = p.Proto
		s, d := p.Src.As4(), p.Dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], Checksum(ip))
		p.fillChecksum(pseudoHeader(ip[12:20], p.Proto, len(l4)), l4)
		return append(ip, l4...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	ip[6] = p.Proto
	ip[7] = p.hopLimit()
	s, d := p.Src.As16(), p.Dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	p.fillChecksum(pseudoHeader(ip[8:40], p.Proto, len(l4)), l4)
	if p.HopByHop {
		// next header, length 0 (8 bytes), Router Alert option, PadN.
		hop := []byte{p.Proto, 0, 5, 2, 0, 0, 1, 0}
		ip[6] = 0
		l4 = append(hop, l4...)
	}
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	return append(ip, l4...)
}

func (p Packet) transport() []byte {
	var l4 []byte
	switch p.Proto {
	case TCP:
		l4 = make([]byte, 20)
		l4[12] = 5 << 4
		l4[13] = p.TCPFlags
	case UDP:
		l4 = make([]byte, 8)
	case SCTP:
		l4 = make([]byte, 12)
	case ICMP, ICMPv6:
		l4 = make([]byte, 8)
		l4[0] = p.ICMPType
		binary.BigEndian.PutUint16(l4[4:], p.SrcPort)
		return append(l4, p.Payload...)
	default:
		return append([]byte(nil), p.Payload...)
	}
	binary.BigEndian.PutUint16(l4[0:], p.SrcPort)
	binary.BigEndian.PutUint16(l4[2:], p.DstPort)
	l4 = append(l4, p.Payload...)
	if p.Proto == UDP {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	}
	return l4
}

// fillChecksum writes the transport checksum of l4 where its protocol has
// one covering the pseudo header.
func (p Packet) fillChecksum(pseudo, l4 []byte) {
	switch p.Proto {
	case TCP:
		binary.BigEndian.PutUint16(l4[16:], Checksum(pseudo, l4))
	case UDP:
		binary.BigEndian.PutUint16(l4[6:], Checksum(pseudo, l4))
	case ICMPv6:
		binary.BigEndian.PutUint16(l4[2:], Checksum(pseudo, l4))
	case ICMP:
		binary.BigEndian.PutUint16(l4[2:], Checksum(l4))
	}
}

func pseudoHeader(addrs []byte, proto uint8, length int) []byte {
	ph := append([]byte(nil), addrs...)
	if len(addrs) == 8 {
		return append(ph, 0, proto, byte(length>>8), byte(length))
	}
	return append(ph, byte(length>>24), byte(length>>16), byte(length>>8), byte(length), 0, 0, 0, proto)
}

// Checksum is the Internet checksum of the concatenated parts.
func Checksum(parts ...[]byte) uint16 {
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var sum uint32
	for i := 0; i < len(all); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(all[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Decoded is what a test reads back from a frame a program rewrote.
type Decoded struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	// ChecksumsOK is true when the IP (IPv4) and TCP/UDP checksums verify.
	ChecksumsOK bool
}

// Decode reads the addresses, ports and checksum validity of a TCP or UDP
// frame.
func Decode(frame []byte) Decoded {
	ip := frame[14:]
	var d Decoded
	var l4, pseudo []byte
	var proto uint8
	if ip[0]>>4 == 4 {
		hl := int(ip[0]&0x0f) * 4
		ip = ip[:int(binary.BigEndian.Uint16(ip[2:]))]
		l4, proto = ip[hl:], ip[9]
		d.Src, d.Dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		pseudo = pseudoHeader(ip[12:20], proto, len(l4))
		d.ChecksumsOK = Checksum(ip[:hl]) == 0
	} else {
		ip = ip[:40+int(binary.BigEndian.Uint16(ip[4:]))]
		l4, proto = ip[40:], ip[6]
		d.Src, d.Dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		pseudo = pseudoHeader(ip[8:40], proto, len(l4))
		d.ChecksumsOK = true
	}
	d.SrcPort, d.DstPort = binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
	if proto == TCP || proto == UDP {
		d.ChecksumsOK = d.ChecksumsOK && Checksum(pseudo, l4) == 0
	}
	return d
}
