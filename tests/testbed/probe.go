package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ProbeTimeout bounds a probe: the connect (TCP) or the wait for an answer
// (UDP), and then the read of the reply. Everything in the testbed is a veth
// hop away, so an answer that has not come in 500 ms is not coming.
const ProbeTimeout = 500 * time.Millisecond

// probeParallelism bounds ProbeMatrix: each probe holds an OS thread locked
// into a namespace for up to ProbeTimeout.
const probeParallelism = 32

// Outcome is how a probe ended.
type Outcome string

const (
	// Connected: the TCP handshake completed, or a UDP answer came back.
	Connected Outcome = "connected"
	// Refused: a TCP RST or an ICMP port unreachable came back.
	Refused Outcome = "refused"
	// TimedOut: nothing came back within ProbeTimeout (a policy drop).
	TimedOut Outcome = "timed-out"
	// Failed: anything else, such as no route; Verdict.Err says what.
	Failed Outcome = "failed"
)

// Verdict is the result of one probe.
type Verdict struct {
	Outcome Outcome
	// Reply is what the peer sent: a testbed pod answers with its name.
	Reply string
	// Err is the error behind any Outcome but Connected, or a failed read
	// of the reply after a TCP connect.
	Err error
}

func (v Verdict) String() string {
	switch {
	case v.Outcome == Connected && v.Err == nil:
		return fmt.Sprintf("%s (%q)", v.Outcome, v.Reply)
	case v.Err != nil:
		return fmt.Sprintf("%s (%v)", v.Outcome, v.Err)
	default:
		return string(v.Outcome)
	}
}

// Probe connects from inside the pod's sandbox to to:port over proto (TCP or
// UDP) and reads the answer. For SCTP use ProbeSCTP, which also needs the
// destination pod: on a kernel without SCTP it watches for the INIT there.
func Probe(ctx context.Context, from *Pod, to netip.Addr, port int, proto corev1.Protocol) Verdict {
	return probeFrom(ctx, from.NetNS, to, port, proto)
}

// Probe connects from the node's own namespace, as the kubelet's probes
// and node-local agents do; see Probe.
func (n *Node) Probe(ctx context.Context, to netip.Addr, port int, proto corev1.Protocol) Verdict {
	return probeFrom(ctx, n.NetNS, to, port, proto)
}

func probeFrom(ctx context.Context, netns *NetNS, to netip.Addr, port int, proto corev1.Protocol) Verdict {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	addr := net.JoinHostPort(to.String(), strconv.Itoa(port))
	var v Verdict
	err := netns.Do(func() error {
		switch proto {
		case corev1.ProtocolTCP, "":
			v = probeTCP(ctx, addr)
		case corev1.ProtocolUDP:
			v = probeUDP(ctx, addr)
		default:
			v = Verdict{Outcome: Failed, Err: fmt.Errorf("probe %s %s: unsupported protocol", proto, addr)}
		}
		return nil
	})
	if err != nil {
		return Verdict{Outcome: Failed, Err: fmt.Errorf("probe %s %s: %w", proto, addr, err)}
	}
	return v
}

func probeTCP(ctx context.Context, addr string) Verdict {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return failure(err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetReadDeadline(deadline)
	b, err := io.ReadAll(io.LimitReader(c, 1024))
	if err != nil {
		err = fmt.Errorf("read reply from %s: %w", addr, err)
	}
	return Verdict{Outcome: Connected, Reply: string(b), Err: err}
}

func probeUDP(ctx context.Context, addr string) Verdict {
	var d net.Dialer
	// A connected UDP socket is what makes the kernel report an ICMP port
	// unreachable as ECONNREFUSED on the next read.
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return failure(err)
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write([]byte("probe")); err != nil {
		return failure(err)
	}
	buf := make([]byte, 1024)
	n, err := c.Read(buf)
	if err != nil {
		return failure(err)
	}
	return Verdict{Outcome: Connected, Reply: string(buf[:n])}
}

func failure(err error) Verdict {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return Verdict{Outcome: Refused, Err: err}
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return Verdict{Outcome: TimedOut, Err: err}
	default:
		return Verdict{Outcome: Failed, Err: err}
	}
}

// ProbeSpec names one probe of a matrix.
type ProbeSpec struct {
	From     *Pod
	To       netip.Addr
	Port     int
	Protocol corev1.Protocol
}

func (s ProbeSpec) String() string {
	return fmt.Sprintf("%s -> %s/%s:%d", s.From, s.Protocol, s.To, s.Port)
}

// ProbeMatrix runs the probes in parallel and returns their verdicts in the
// same order.
func ProbeMatrix(ctx context.Context, probes []ProbeSpec) []Verdict {
	out := make([]Verdict, len(probes))
	sem := make(chan struct{}, probeParallelism)
	var wg sync.WaitGroup
	for i, s := range probes {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = Probe(ctx, s.From, s.To, s.Port, s.Protocol)
		})
	}
	wg.Wait()
	return out
}
