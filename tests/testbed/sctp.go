package testbed

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// SCTP probe modes.
const (
	// SCTPAssociation: the kernel has SCTP; a probe sets up an association
	// and reads the server's reply, as agnhost connect does.
	SCTPAssociation = "association"
	// SCTPInitArrival: the kernel has no SCTP (socket() fails with
	// EPROTONOSUPPORT). A probe sends an SCTP INIT from a raw socket in the
	// source pod and watches, with a packet socket in the destination pod,
	// whether it arrives: the forward verdict only; no reply is checked.
	SCTPInitArrival = "init-arrival"
)

// SCTPMode is the mode this kernel allows.
func SCTPMode() string {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return SCTPInitArrival
	}
	_ = unix.Close(fd)
	return SCTPAssociation
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sctpInit builds an SCTP packet (common header and one INIT chunk) from
// srcPort to dstPort carrying initiate tag tag. The CRC32c goes in
// little-endian order, as Linux writes it (RFC 4960 appendix B).
func sctpInit(srcPort, dstPort uint16, tag uint32) []byte {
	b := make([]byte, 12+20)
	binary.BigEndian.PutUint16(b[0:], srcPort)
	binary.BigEndian.PutUint16(b[2:], dstPort)
	// Verification tag 0: only an INIT may carry it.
	chunk := b[12:]
	chunk[0] = 1 // INIT
	binary.BigEndian.PutUint16(chunk[2:], 20)
	binary.BigEndian.PutUint32(chunk[4:], tag)    // initiate tag
	binary.BigEndian.PutUint32(chunk[8:], 65536)  // a_rwnd
	binary.BigEndian.PutUint16(chunk[12:], 1)     // outbound streams
	binary.BigEndian.PutUint16(chunk[14:], 1)     // inbound streams
	binary.BigEndian.PutUint32(chunk[16:], tag^1) // initial TSN
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b, castagnoli))
	return b
}

// matchInit reports whether ip (an IPv4 packet, or an IPv6 one without
// extension headers, as the raw socket sends it) is the INIT sctpInit
// built, sent from src.
func matchInit(ip []byte, src netip.Addr, srcPort, dstPort uint16, tag uint32) bool {
	var l4 []byte
	switch {
	case src.Is4():
		if len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_SCTP || netip.AddrFrom4([4]byte(ip[12:16])) != src {
			return false
		}
		l4 = ip[int(ip[0]&0x0f)*4:]
	default:
		if len(ip) < 40 || ip[0]>>4 != 6 || ip[6] != unix.IPPROTO_SCTP || netip.AddrFrom16([16]byte(ip[8:24])) != src {
			return false
		}
		l4 = ip[40:]
	}
	return len(l4) >= 32 &&
		binary.BigEndian.Uint16(l4[0:]) == srcPort && binary.BigEndian.Uint16(l4[2:]) == dstPort &&
		l4[12] == 1 && binary.BigEndian.Uint32(l4[16:]) == tag
}

// ProbeSCTPInit sends an INIT from src to to:port and reports whether it
// reached dst's interface before the timeout.
func ProbeSCTPInit(ctx context.Context, src, dst *Pod, to netip.Addr, port int) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	// The INIT goes out in to's family, from the source's address of it.
	srcIP, ethType, family := src.IP(), uint16(unix.ETH_P_IP), unix.AF_INET
	if to.Is6() {
		var ok bool
		if srcIP, ok = src.IPv6(); !ok {
			return false, fmt.Errorf("SCTP INIT to %s: %s has no IPv6 address", to, src)
		}
		ethType, family = unix.ETH_P_IPV6, unix.AF_INET6
	}
	var capture int
	err := dst.NetNS.Do(func() error {
		var err error
		// SOCK_DGRAM: frames arrive without their link header.
		capture, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(ethType)))
		return err
	})
	if err != nil {
		return false, fmt.Errorf("open packet socket in %s: %w", dst, err)
	}
	defer unix.Close(capture)

	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	srcPort := 1024 + binary.BigEndian.Uint16(rnd[0:])%60000
	tag := binary.BigEndian.Uint32(rnd[2:]) | 1
	pkt := sctpInit(srcPort, uint16(port), tag)
	err = src.NetNS.Do(func() error {
		fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if to.Is6() {
			return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet6{Addr: to.As16()})
		}
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: to.As4()})
	})
	if err != nil {
		return false, fmt.Errorf("send SCTP INIT from %s to %s:%d: %w", src, to, port, err)
	}

	buf := make([]byte, 2048)
	for {
		deadline, _ := ctx.Deadline()
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(capture, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return false, fmt.Errorf("set packet socket timeout: %w", err)
		}
		n, _, err := unix.Recvfrom(capture, buf, 0)
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return false, fmt.Errorf("read packet socket in %s: %w", dst, err)
		}
		if matchInit(buf[:n], srcIP, srcPort, uint16(port), tag) {
			return true, nil
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ProbeSCTP probes SCTP from src to to:port, where dst is the pod behind to
// (to may be its Service address): a real association on a kernel with
// SCTP, else whether an INIT reaches dst.
func ProbeSCTP(ctx context.Context, src, dst *Pod, to netip.Addr, port int) (bool, error) {
	if SCTPMode() == SCTPAssociation {
		return ProbeSCTPAssociation(ctx, src, to, port)
	}
	return ProbeSCTPInit(ctx, src, dst, to, port)
}

// ServeSCTP listens on SCTP port in netns (kernels with SCTP only) and
// answers each association with reply. The returned function stops it.
func ServeSCTP(netns *NetNS, reply string, port int) (stop func(), err error) {
	var fd int
	err = netns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
			return err
		}
		return unix.Listen(fd, 128)
	})
	if err != nil {
		if fd > 0 {
			_ = unix.Close(fd)
		}
		return nil, fmt.Errorf("listen on SCTP %d in %s: %w", port, netns.Name(), err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, _, err := unix.Accept(fd)
			if err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
					continue
				}
				return
			}
			_, _ = unix.Write(c, []byte(reply))
			_ = unix.Close(c)
		}
	})
	return func() {
		// shutdown wakes the blocked accept; close alone does not.
		_ = unix.Shutdown(fd, unix.SHUT_RDWR)
		wg.Wait()
		_ = unix.Close(fd)
	}, nil
}

// ProbeSCTPAssociation sets up an association from src to to:port and
// reads the reply, within the probe timeout.
func ProbeSCTPAssociation(ctx context.Context, src *Pod, to netip.Addr, port int) (bool, error) {
	if to.Is6() {
		// ServeSCTP listens on IPv4 only; a kernel with SCTP to grow it
		// on was not at hand. An error, never a verdict.
		return false, fmt.Errorf("SCTP association to %s: the testbed's SCTP associations are IPv4 only", to)
	}
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var fd int
	err := src.NetNS.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_SCTP)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("open SCTP socket in %s: %w", src, err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: to.As4(), Port: port}); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return false, nil
	}
	if !waitFD(fd, unix.POLLOUT, deadline) {
		return false, nil
	}
	if soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soerr != 0 {
		return false, nil
	}
	if !waitFD(fd, unix.POLLIN, deadline) {
		return false, nil
	}
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	return err == nil && n > 0, nil
}

// waitFD polls fd for events until deadline.
func waitFD(fd int, events int16, deadline time.Time) bool {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && pfd[0].Revents&(events|unix.POLLERR|unix.POLLHUP) != 0
	}
}
