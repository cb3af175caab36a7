package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Modes a client announces with its first byte to the TCP server.
const (
	modeStream = 'S' // sink: read to EOF, answer with the byte count
	modeRR     = 'R' // echo every byte back
)

// maxOps bounds every loop by count as well as by time.
const maxOps = 5_000_000

// ioTimeout bounds any single wait on the peer: everything is a veth hop
// away, so an answer that has not come in this time is a failure.
const ioTimeout = 2 * time.Second

// Serve answers the load generators on l (TCP) and pc (UDP) until both are
// closed: a stream sink, a one-byte echo, accept-and-close for the
// connection loop, and a datagram echo. Serve returns at once; close l and
// pc to stop it.
func Serve(l net.Listener, pc net.PacketConn) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serveConn(c)
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

func serveConn(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return // the connection loop: connect and close
	}
	switch mode[0] {
	case modeStream:
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return
		}
		var out [8]byte
		binary.BigEndian.PutUint64(out[:], uint64(n))
		_, _ = c.Write(out[:])
	case modeRR:
		buf := make([]byte, 1)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}
}

// Dialer opens a connection; the benchmark runs it on a thread inside the
// client pod's namespace.
type Dialer func(network, address string) (net.Conn, error)

// Stream sends for d over streams parallel TCP connections and returns the
// throughput the server counted, in Gbit/s.
func Stream(dial Dialer, addr string, streams int, d time.Duration) (float64, error) {
	conns := make([]*net.TCPConn, 0, streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range streams {
		c, err := dial("tcp4", addr)
		if err != nil {
			return 0, fmt.Errorf("stream: %w", err)
		}
		conns = append(conns, c.(*net.TCPConn))
	}
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	counts := make([]uint64, streams)
	errs := make([]error, streams)
	for i, c := range conns {
		wg.Go(func() { counts[i], errs[i] = streamOne(c, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("stream: %w", err)
	}
	var total uint64
	for _, n := range counts {
		total += n
	}
	return float64(total) * 8 / elapsed.Seconds() / 1e9, nil
}

func streamOne(c *net.TCPConn, deadline time.Time) (uint64, error) {
	buf := make([]byte, 128<<10)
	buf[0] = modeStream
	if _, err := c.Write(buf[:1]); err != nil {
		return 0, err
	}
	// The write deadline ends the last blocked write on time.
	_ = c.SetWriteDeadline(deadline)
	for time.Now().Before(deadline) {
		if _, err := c.Write(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			return 0, err
		}
	}
	if err := c.CloseWrite(); err != nil {
		return 0, err
	}
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	var out [8]byte
	if _, err := io.ReadFull(c, out[:]); err != nil {
		return 0, fmt.Errorf("read the server's count: %w", err)
	}
	// The mode byte is counted by neither side.
	return binary.BigEndian.Uint64(out[:]), nil
}

// RRResult is a request/response run: transactions per second and the
// latency of each transaction.
type RRResult struct {
	Rate      float64
	Latencies []time.Duration
}

// RR sends one byte and waits for its echo over one TCP connection, for d.
func RR(dial Dialer, addr string, d time.Duration) (RRResult, error) {
	c, err := dial("tcp4", addr)
	if err != nil {
		return RRResult{}, fmt.Errorf("rr: %w", err)
	}
	defer c.Close()
	buf := []byte{modeRR}
	if _, err := c.Write(buf); err != nil {
		return RRResult{}, fmt.Errorf("rr: %w", err)
	}
	return pingPong(c, d, "rr")
}

// UDPRR is RR over UDP: one datagram out, its echo back.
func UDPRR(dial Dialer, addr string, d time.Duration) (RRResult, error) {
	c, err := dial("udp4", addr)
	if err != nil {
		return RRResult{}, fmt.Errorf("udp rr: %w", err)
	}
	defer c.Close()
	return pingPong(c, d, "udp rr")
}

func pingPong(c net.Conn, d time.Duration, what string) (RRResult, error) {
	buf := []byte{'x'}
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	deadline := start.Add(d)
	_ = c.SetDeadline(deadline.Add(ioTimeout))
	for now := start; now.Before(deadline) && len(lat) < maxOps; {
		if _, err := c.Write(buf); err != nil {
			return RRResult{}, fmt.Errorf("%s: %w", what, err)
		}
		if _, err := c.Read(buf); err != nil {
			return RRResult{}, fmt.Errorf("%s after %d transactions: %w", what, len(lat), err)
		}
		t := time.Now()
		lat = append(lat, t.Sub(now))
		now = t
	}
	return RRResult{Rate: float64(len(lat)) / time.Since(start).Seconds(), Latencies: lat}, nil
}

// CRR opens and closes TCP connections one after another for d and
// returns connections per second. Each connection completes the handshake
// and is closed by the client first.
func CRR(dial Dialer, addr string, d time.Duration) (float64, error) {
	start := time.Now()
	deadline := start.Add(d)
	n := 0
	for time.Now().Before(deadline) && n < maxOps {
		c, err := dial("tcp4", addr)
		if err != nil {
			return 0, fmt.Errorf("crr after %d connections: %w", n, err)
		}
		// RST instead of FIN: a loop of FINs would fill the client's
		// port range with TIME_WAIT sockets and measure that instead.
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
