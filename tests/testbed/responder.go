package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// Serve makes the pod look like a running workload once CNIAdd succeeded:
// it writes the pod's IP and readiness to its status and answers on every
// containerPort inside the sandbox, with the pod's name as the reply (TCP:
// written on accept, then closed; UDP: sent back for each datagram). SCTP
// ports are skipped: this kernel has no SCTP sockets (see DESIGN.md).
// Cleanup closes the sockets and waits for the responders.
func (p *Pod) Serve(tb testing.TB) {
	tb.Helper()
	if !p.IP().IsValid() {
		tb.Fatalf("serve pod %s: no successful CNI ADD yet", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := p.writeRunning(ctx); err != nil {
		tb.Fatal(err)
	}
	var closers []io.Closer
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		for _, c := range closers {
			_ = c.Close()
		}
		wg.Wait()
	})
	reply := []byte(p.Name)
	seen := map[string]bool{}
	for _, c := range p.spec.Spec.Containers {
		for _, port := range c.Ports {
			proto := port.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(int(port.ContainerPort)))
			key := string(proto) + "/" + addr
			if seen[key] {
				continue
			}
			seen[key] = true
			switch proto {
			case corev1.ProtocolTCP:
				l, err := p.NetNS.Listen("tcp4", addr)
				if err != nil {
					tb.Fatalf("serve pod %s: %v", p, err)
				}
				closers = append(closers, l)
				wg.Go(func() { serveTCP(l, reply) })
			case corev1.ProtocolUDP:
				c, err := p.NetNS.ListenPacket("udp4", addr)
				if err != nil {
					tb.Fatalf("serve pod %s: %v", p, err)
				}
				closers = append(closers, c)
				wg.Go(func() { serveUDP(c, reply) })
			default:
				tb.Logf("pod %s: not serving %s port %d: no %s sockets on this kernel", p, proto, port.ContainerPort, proto)
			}
		}
	}
}

// serveTCP answers each connection with reply until l is closed.
func serveTCP(l net.Listener, reply []byte) {
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("testbed responder stopped", "addr", l.Addr(), "err", err)
			}
			return
		}
		_, _ = c.Write(reply)
		_ = c.Close()
	}
}

// serveUDP echoes reply to each datagram's sender until c is closed.
func serveUDP(c net.PacketConn, reply []byte) {
	buf := make([]byte, 2048)
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("testbed responder stopped", "addr", c.LocalAddr(), "err", err)
			}
			return
		}
		_, _ = c.WriteTo(reply, from)
	}
}

// writeRunning writes what a kubelet reports once the sandbox is up: the
// pod's IPs, phase Running and the Ready conditions.
func (p *Pod) writeRunning(ctx context.Context) error {
	pods := p.Node.cp.Client.CoreV1().Pods(p.Namespace)
	ip := p.IP().String()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status.Phase = corev1.PodRunning
		cur.Status.HostIP = p.Node.IP.String()
		cur.Status.HostIPs = []corev1.HostIP{{IP: p.Node.IP.String()}}
		cur.Status.PodIP = ip
		cur.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		cur.Status.StartTime = &now
		cur.Status.Conditions = nil
		for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{
				Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now,
			})
		}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("write status of pod %s: %w", p, err)
	}
	return nil
}
