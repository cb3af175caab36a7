package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Verdicts a program returns (TC_ACT_*).
const (
	VerdictPass uint32 = 0
	VerdictDrop uint32 = 2
)

// skbContext is the head of struct __sk_buff up to ifindex: the part
// BPF_PROG_TEST_RUN lets a caller set.
type skbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// Classify runs the program for d on an Ethernet frame as if it crossed
// the interface ifindex, against the live maps, and returns the verdict and
// the frame as the program left it. Nothing is sent anywhere. The calling
// thread must be in the network namespace that has ifindex.
func (o *Objects) Classify(d Direction, ifindex int, frame []byte) (uint32, []byte, error) {
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256),
		Context: skbContext{Ifindex: uint32(ifindex)},
	}
	ret, err := o.program(d).Run(opts)
	if err != nil {
		return 0, nil, fmt.Errorf("run %s program on ifindex %d: %w", d, ifindex, err)
	}
	return ret, opts.DataOut, nil
}
