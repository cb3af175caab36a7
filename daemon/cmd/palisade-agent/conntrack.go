package main

import (
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/palisade-cni/palisade/bpf"
)

// Bounds of a conntrack table sized from memory: the default sizes at most
// (reached from 12 GiB at the default 1 %: ~114 MiB), and enough for a small node's
// pods at least.
const (
	minConntrackTCP   = 16384
	minConntrackOther = 8192
)

// conntrackSizes sizes the TCP and other conntrack tables for a node with
// mem bytes of memory: percent of it for both, two thirds for TCP (the defaults'
// 512k:256k), each bounded by the default size above and a floor below. A
// size given by flag (not 0) wins over the computed one.
func conntrackSizes(mem uint64, percent float64, tcpFlag, otherFlag uint32) (tcp, other uint32) {
	entries := float64(mem) * percent / 100 / bpf.ConntrackEntryBytes
	tcp = uint32(min(max(entries*2/3, minConntrackTCP), bpf.DefaultConntrackTCP))
	other = uint32(min(max(entries/3, minConntrackOther), bpf.DefaultConntrackOther))
	if tcpFlag != 0 {
		tcp = tcpFlag
	}
	if otherFlag != 0 {
		other = otherFlag
	}
	return tcp, other
}

// nodeMemory is the node's total memory in bytes.
func nodeMemory() (uint64, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, fmt.Errorf("read the node's memory size: %w", err)
	}
	return uint64(si.Totalram) * uint64(si.Unit), nil
}

// conntrackOptions fills the conntrack sizes of opts from cfg and the
// node's memory.
func conntrackOptions(cfg Config, opts *bpf.LoadOptions) error {
	mem, err := nodeMemory()
	if err != nil {
		return err
	}
	opts.ConntrackTCP, opts.ConntrackOther = conntrackSizes(mem, cfg.ConntrackMemoryPercent, cfg.ConntrackTCP, cfg.ConntrackOther)
	return nil
}

// logConntrack says what the conntrack tables got, and why it differs
// from what was asked for when they were pinned already.
func logConntrack(log *slog.Logger, objs *bpf.Objects, opts bpf.LoadOptions) {
	tcp, other := objs.ConntrackSizes()
	log.Info("Conntrack tables", "tcp", tcp, "other", other, "bytes", (tcp+other)*bpf.ConntrackEntryBytes,
		"migrated_flows", objs.Migrated)
	if uint32(tcp) != opts.ConntrackTCP || uint32(other) != opts.ConntrackOther {
		log.Warn("Conntrack tables keep the size they were pinned with, and their flows; to resize, remove their pins and restart the agent",
			"tcp_wanted", opts.ConntrackTCP, "other_wanted", opts.ConntrackOther, "pins", objs.Root()+"/maps/pal_ct_*")
	}
}
