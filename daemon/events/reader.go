package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/inspect"
)

// Reader drains the verdict ring buffer into a Hub.
type Reader struct {
	Log    *slog.Logger
	Events *ebpf.Map
	Hub    *Hub
	// View returns the current snapshot for names; it may return nil.
	View func() *inspect.View
	// OnFlow, when set, sees every decoded flow (metrics).
	OnFlow func(*agentapi.Flow)
}

// Run reads until ctx ends.
func (r *Reader) Run(ctx context.Context) error {
	rd, err := ringbuf.NewReader(r.Events)
	if err != nil {
		return fmt.Errorf("open verdict ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	boot, err := bootTime()
	if err != nil {
		return err
	}
	var rec ringbuf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read verdict ring buffer: %w", err)
		}
		ev, err := bpf.DecodeVerdictEvent(rec.RawSample)
		if err != nil {
			r.Log.Warn("Verdict event not decoded", "error", err)
			continue
		}
		var v *inspect.View
		if r.View != nil {
			v = r.View()
		}
		f := Decode(&ev, v, boot)
		if f.Verdict == agentapi.FlowDropped {
			r.Log.Debug("Flow dropped", "pod", f.Pod, "direction", f.Direction, "reason", f.Reason,
				"src", f.Source.IP, "dst", f.Destination.IP, "proto", f.Protocol, "dport", f.Destination.Port)
		}
		if r.OnFlow != nil {
			r.OnFlow(&f)
		}
		r.Hub.Publish(f)
	}
}

// bootTime is the wall-clock time at which CLOCK_MONOTONIC, which
// bpf_ktime_get_ns counts, was zero.
func bootTime() (time.Time, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}, fmt.Errorf("read monotonic clock: %w", err)
	}
	return time.Now().Add(-time.Duration(ts.Nano())), nil
}
