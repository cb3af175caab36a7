package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/cilium/ebpf"
)

// DefaultEventRateLimit is the verdict events a CPU may emit per second
// when LoadOptions.EventRateLimit is 0: enough to show every drop of a
// misconfigured pod, far too few for a flood to cost the agent more than a
// few percent of a core decoding them.
const DefaultEventRateLimit = 1000

// Reasons an event was not delivered (events.h EV_LOST_*).
const (
	LostRateLimit   = 0
	LostRingbufFull = 1
	lostMax         = 2
)

// VerdictEventSize is the size of a verdict event as this version's
// programs write it. Programs of an older version, still attached during
// an upgrade, write shorter events without the rule; DecodeVerdictEvent
// accepts those too.
const VerdictEventSize = int(unsafe.Sizeof(VerdictEvent{}))

// verdictEventSizeV1 is the size of an event without Rule and Pad2.
const verdictEventSizeV1 = 56

func setEventVariables(spec *ebpf.CollectionSpec, opts LoadOptions) error {
	limit := opts.EventRateLimit
	if limit == 0 {
		limit = DefaultEventRateLimit
	}
	if err := spec.Variables[palisadeVarAllowSampleRate].Set(opts.AllowSampleRate); err != nil {
		return fmt.Errorf("set allow sample rate: %w", err)
	}
	if err := spec.Variables[palisadeVarEventRateLimit].Set(limit); err != nil {
		return fmt.Errorf("set event rate limit: %w", err)
	}
	return nil
}

// DecodeVerdictEvent decodes one record of the pal_events ring buffer.
func DecodeVerdictEvent(raw []byte) (VerdictEvent, error) {
	var ev VerdictEvent
	if len(raw) < verdictEventSizeV1 {
		return ev, fmt.Errorf("verdict event of %d bytes, want at least %d", len(raw), verdictEventSizeV1)
	}
	buf := make([]byte, VerdictEventSize)
	copy(buf, raw)
	// The struct mirrors the C layout (bpf2go, host byte order, amd64 and
	// arm64 are little-endian); copy it out byte for byte.
	ev = *(*VerdictEvent)(unsafe.Pointer(&buf[0]))
	return ev, nil
}

// Addrs returns the event's source and destination, IPv4 unmapped.
func (ev *VerdictEvent) Addrs() (src, dst netip.Addr) {
	return netip.AddrFrom16(ev.Saddr).Unmap(), netip.AddrFrom16(ev.Daddr).Unmap()
}

// Ports returns the event's ports in host byte order.
func (ev *VerdictEvent) Ports() (src, dst uint16) {
	return swap16(ev.Sport), swap16(ev.Dport)
}

func swap16(v uint16) uint16 { return v<<8 | v>>8 }

// VerdictCount is one verdict counter of the datapath.
type VerdictCount struct {
	Direction Direction
	Reason    int
	// Count is flows admitted by policy for ReasonAllowed, packets dropped
	// for every other reason.
	Count uint64
}

// Verdicts reads the verdict counters (pal_verdicts), summed over CPUs.
func (o *Objects) Verdicts() ([]VerdictCount, error) {
	var out []VerdictCount
	var perCPU []uint64
	for _, d := range Directions {
		for reason := 0; reason < ReasonMax; reason++ {
			key := d.dir()*ReasonMax + uint32(reason)
			if err := o.objs.PalVerdicts.Lookup(key, &perCPU); err != nil {
				return nil, fmt.Errorf("read verdict counter %d: %w", key, err)
			}
			out = append(out, VerdictCount{Direction: d, Reason: reason, Count: sum(perCPU)})
		}
	}
	return out, nil
}

// LostEvents reads how many verdict events were not delivered, by LostRateLimit
// and LostRingbufFull, summed over CPUs.
func (o *Objects) LostEvents() (map[int]uint64, error) {
	out := map[int]uint64{}
	var perCPU []uint64
	for why := uint32(0); why < lostMax; why++ {
		if err := o.objs.PalEventStats.Lookup(why, &perCPU); err != nil {
			return nil, fmt.Errorf("read lost event counter %d: %w", why, err)
		}
		out[int(why)] = sum(perCPU)
	}
	return out, nil
}

func sum(perCPU []uint64) uint64 {
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

// MapFill is how full one map is.
type MapFill struct {
	Name     string
	Entries  int
	Capacity int
}

// MapFill counts the entries of the maps that grow with the cluster: the
// endpoints, the ipcache and conntrack. Counting walks each map, which for a
// full conntrack is a few hundred milliseconds; callers should not do it per
// packet or per second.
func (o *Objects) MapFill() ([]MapFill, error) {
	maps := []struct {
		name string
		m    *ebpf.Map
	}{
		{"endpoints", o.objs.PalEp},
		{"ipcache", o.objs.PalIpcache},
		{"conntrack-" + ConntrackTCP, o.objs.PalFlowsTcp},
		{"conntrack-" + ConntrackOther, o.objs.PalFlowsOther},
		{"rules", o.objs.PalSetRules},
	}
	var out []MapFill
	var errs []error
	for _, m := range maps {
		n, err := countEntries(m.m)
		if err != nil {
			errs = append(errs, fmt.Errorf("count %s entries: %w", m.name, err))
			continue
		}
		out = append(out, MapFill{Name: m.name, Entries: n, Capacity: int(m.m.MaxEntries())})
	}
	return out, errors.Join(errs...)
}

func countEntries(m *ebpf.Map) (int, error) {
	var cur any // nil: start at the first key
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	// Bound the walk: in a map that changes under us, NextKey may restart
	// from the first key.
	for n := 0; n <= int(m.MaxEntries()); n++ {
		err := m.NextKey(cur, next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		copy(key, next)
		cur = key
	}
	return int(m.MaxEntries()), nil
}

// ReasonName names a verdict reason (maps.h REASON_*) for logs, flows and
// metric labels.
func ReasonName(reason int) string {
	switch reason {
	case ReasonAllowed:
		return "allowed"
	case ReasonUnknownEndpoint:
		return "unknown-endpoint"
	case ReasonPolicy:
		return "policy"
	case ReasonRejudged:
		return "rejudged"
	case ReasonMalformed:
		return "malformed"
	case ReasonNAT:
		return "nat"
	case ReasonSpoofed:
		return "spoofed"
	case ReasonFragment:
		return "fragment"
	}
	return fmt.Sprintf("reason-%d", reason)
}

// PolicyDirection names a Direction from the pod's point of view, as
// NetworkPolicy does: FromPod is egress, ToPod ingress.
func (d Direction) PolicyDirection() string {
	if d == FromPod {
		return "egress"
	}
	return "ingress"
}
