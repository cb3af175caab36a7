package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// EchoPortPrefix marks a TCP containerPort whose responder keeps the
// connection open: it writes the pod's name and a newline, then echoes what
// it reads until the peer closes. Tests use it for long-lived flows.
const EchoPortPrefix = "echo"

// Serve makes the pod look like a running workload once CNIAdd succeeded:
// it answers on every containerPort inside the sandbox (see Listen) and
// writes the pod's IP and readiness to its status.
func (p *Pod) Serve(tb TB) {
	tb.Helper()
	if !p.IP().IsValid() {
		tb.Fatalf("serve pod %s: no successful CNI ADD yet", p)
	}
	p.Listen(tb)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := p.writeRunning(ctx); err != nil {
		tb.Fatal(err)
	}
}

// Listen starts the responders on every containerPort, with the pod's name
// as the reply (TCP: written on accept, then closed, or echoed on for an
// EchoPortPrefix port; UDP: sent back for each datagram). It may run before
// CNIAdd, so that a test can probe from the instant ADD returns. SCTP
// ports are served where the kernel has SCTP; where it has not (this
// machine's), ProbeSCTP watches for the INIT arriving instead.
// Cleanup closes the sockets and waits for the responders. A second call
// does nothing.
func (p *Pod) Listen(tb TB) {
	tb.Helper()
	p.mu.Lock()
	listening := p.listening
	p.listening = true
	p.mu.Unlock()
	if listening {
		return
	}
	stop, err := startResponders(p.NetNS, p.spec, p.udpAddrs(), func(format string, args ...any) { tb.Logf(format, args...) })
	if err != nil {
		tb.Fatalf("serve pod %s: %v", p, err)
	}
	tb.Cleanup(stop)
}

// startResponders serves pod's containerPorts inside netns, UDP on udpAddrs
// (nil: every address); stop closes the sockets and waits for the
// responder goroutines.
func startResponders(netns *NetNS, pod *corev1.Pod, udpAddrs []netip.Addr, logf func(string, ...any)) (stop func(), err error) {
	var closers []io.Closer
	var wg sync.WaitGroup
	stop = func() {
		for _, c := range closers {
			_ = c.Close()
		}
		wg.Wait()
	}
	reply := []byte(pod.Name)
	seen := map[string]bool{}
	for _, c := range pod.Spec.Containers {
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
				l, err := netns.Listen("tcp", addr) // both families: dual-stack pods
				if err != nil {
					stop()
					return nil, err
				}
				closers = append(closers, l)
				echo := strings.HasPrefix(port.Name, EchoPortPrefix)
				wg.Go(func() { serveTCP(l, reply, echo) })
			case corev1.ProtocolUDP:
				addrs := []string{addr}
				if udpAddrs != nil {
					addrs = nil
					for _, a := range udpAddrs {
						addrs = append(addrs, net.JoinHostPort(a.String(), strconv.Itoa(int(port.ContainerPort))))
					}
				}
				for _, addr := range addrs {
					c, err := netns.ListenPacket("udp", addr)
					if err != nil {
						stop()
						return nil, err
					}
					closers = append(closers, c)
					wg.Go(func() { serveUDP(c, reply) })
				}
			case corev1.ProtocolSCTP:
				if SCTPMode() != SCTPAssociation {
					logf("pod %s/%s: SCTP port %d: no SCTP sockets on this kernel; ProbeSCTP watches for INIT arrival", pod.Namespace, pod.Name, port.ContainerPort)
					continue
				}
				stopSCTP, err := ServeSCTP(netns, pod.Name, int(port.ContainerPort))
				if err != nil {
					stop()
					return nil, err
				}
				closers = append(closers, closeFunc(stopSCTP))
			default:
				logf("pod %s/%s: not serving %s port %d: no %s sockets on this kernel", pod.Namespace, pod.Name, proto, port.ContainerPort, proto)
			}
		}
	}
	return stop, nil
}

// serveTCP answers each connection with reply until l is closed; with echo,
// it then echoes the connection back until the peer closes it.
func serveTCP(l net.Listener, reply []byte, echo bool) {
	// Open echo connections end with the listener, so that stopping the
	// pod never waits for a peer to hang up.
	var conns sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		conns.Wait()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("testbed responder stopped", "addr", l.Addr(), "err", err)
			}
			return
		}
		if !echo {
			_, _ = c.Write(reply)
			_ = c.Close()
			continue
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		conns.Go(func() {
			defer func() {
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				_ = c.Close()
			}()
			if _, err := c.Write(append(reply, '\n')); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		})
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
		started := true
		cur.Status.Phase = corev1.PodRunning
		cur.Status.HostIP = p.Node.IP.String()
		cur.Status.HostIPs = []corev1.HostIP{{IP: p.Node.IP.String()}}
		cur.Status.PodIP = ip
		cur.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		// A dual-stack pod reports both, IPv4 first as the kubelet
		// orders them on an IPv4-primary cluster: agents and the
		// EndpointSlice controller read the IPv6 address from here.
		if ip6, ok := p.IPv6(); ok {
			cur.Status.PodIPs = append(cur.Status.PodIPs, corev1.PodIP{IP: ip6.String()})
		}
		cur.Status.StartTime = &now
		cur.Status.Conditions = nil
		cur.Status.ContainerStatuses = nil
		for _, c := range cur.Spec.Containers {
			cur.Status.ContainerStatuses = append(cur.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, Ready: true, Started: &started,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			})
		}
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

// closeFunc adapts a stop function to io.Closer.
type closeFunc func()

func (f closeFunc) Close() error { f(); return nil }

// ServeEcho accepts TCP connections inside the pod on port and echoes back
// what they send until the test ends: a connection a test keeps open to
// see whether the datapath lets it live.
func (p *Pod) ServeEcho(tb TB, port int) {
	tb.Helper()
	l, err := p.NetNS.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		tb.Fatalf("pod %s: echo on tcp/%d: %v", p, port, err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
}
