package bench

import (
	"net"
	"testing"
	"time"
)

// TestLoadOverLoopback runs every generator against Serve on loopback: each
// must move traffic and report it, and a dead server must be an error.
func TestLoadOverLoopback(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	Serve(l, pc)
	t.Cleanup(func() { l.Close(); pc.Close() })
	tcp, udp := l.Addr().String(), pc.LocalAddr().String()
	const d = 100 * time.Millisecond

	for _, streams := range []int{1, 4} {
		gbps, err := Stream(net.Dial, tcp, streams, d)
		if err != nil || gbps <= 0 {
			t.Errorf("Stream(%d) = %v, %v; want > 0 Gbit/s", streams, gbps, err)
		}
	}
	rr, err := RR(net.Dial, tcp, d)
	if err != nil || rr.Rate <= 0 || len(rr.Latencies) == 0 {
		t.Errorf("RR = %v/s with %d latencies, %v", rr.Rate, len(rr.Latencies), err)
	}
	urr, err := UDPRR(net.Dial, udp, d)
	if err != nil || urr.Rate <= 0 {
		t.Errorf("UDPRR = %v/s, %v", urr.Rate, err)
	}
	crr, err := CRR(net.Dial, tcp, d)
	if err != nil || crr <= 0 {
		t.Errorf("CRR = %v/s, %v", crr, err)
	}

	l.Close()
	pc.Close()
	if _, err := CRR(net.Dial, tcp, d); err == nil {
		t.Error("CRR against a closed listener: want an error")
	}
	if _, err := UDPRR(net.Dial, udp, d); err == nil {
		t.Error("UDPRR against a closed socket: want an error")
	}
}
