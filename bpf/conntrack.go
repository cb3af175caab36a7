package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Default conntrack table sizes (conntrack.h MAX_CT_*): DESIGN's, Cilium's.
const (
	DefaultConntrackTCP   = 524288
	DefaultConntrackOther = 262144
)

// ConntrackEntryBytes is the kernel memory one conntrack table entry
// costs: an LRU hash is allocated whole when it is created, so a table
// costs this times its size from the start. Measured as the map's memlock
// over its size (TestPrivilegedConntrackSizes keeps it honest).
const ConntrackEntryBytes = 152

// Conntrack table names, as metrics and palisadectl show them.
const (
	ConntrackTCP   = "tcp"
	ConntrackOther = "other"
)

// pal_ct_stats indexes (conntrack.h CT_STAT_*).
const (
	ctStatCreated  = 0
	ctStatDeleted  = 1
	ctStatPerTable = 2
	ctStatTCPMiss  = 4
)

// retiredConntrack is the one table older versions kept every flow in.
const retiredConntrack = "pal_ct"

// retiredSplitConntrack are the tables of the versions that keyed a flow
// by its first packet's tuple alone: a reply then needed a second lookup.
// Their flows are copied under their flow keys (flowKey) on load.
var retiredSplitConntrack = []string{"pal_ct_tcp", "pal_ct_other"}

// conntrack.h's struct ct_key dir values and CT_F_REVERSED.
const (
	ctDirIngress = 1
	ctDirService = 2
	ctFReversed  = 1 << 3
)

// flowKey turns the key of an older version's entry, keyed by its first
// packet's tuple and direction, into the key the programs look it up by
// (verdict.h ct_key_canon: of the tuple and its reverse, the one whose
// source orders first), and marks e CT_F_REVERSED when it took the
// reverse. An entry of a Service choice (DIR_SERVICE) keeps its key: the
// programs look it up as sent.
func flowKey(k *CTKey, e *CTEntry) {
	if k.Dir == ctDirService {
		return
	}
	rev := k.Dir == ctDirIngress
	decided := false
	for i := 0; i < 16 && !decided; i += 4 {
		s, d := binary.NativeEndian.Uint32(k.Saddr[i:]), binary.NativeEndian.Uint32(k.Daddr[i:])
		if s != d {
			rev, decided = s > d, true
		}
	}
	if !decided && k.Sport != k.Dport {
		rev = k.Sport > k.Dport
	}
	if !rev {
		return
	}
	k.Saddr, k.Daddr = k.Daddr, k.Saddr
	k.Sport, k.Dport = k.Dport, k.Sport
	k.Dir ^= 1
	e.Flags |= ctFReversed
}

// ConntrackTable is what the programs counted for one conntrack table.
type ConntrackTable struct {
	Name     string // ConntrackTCP or ConntrackOther
	Capacity int
	// Created counts keys added to the table (an expired entry
	// overwritten under the same key is not a new key); Deleted, entries
	// the programs removed (a flow re-judged and cut). Nothing else adds
	// or removes entries except the LRU, when it reclaims one to make
	// room: so Created - Deleted - entries present is what it reclaimed.
	Created, Deleted uint64
}

// Reclaimed is how many entries the LRU took to make room, given the
// entries the table holds now (read after the counters). A negative
// difference, from flows created while the table was walked, counts 0.
func (t ConntrackTable) Reclaimed(entries int) uint64 {
	gone := t.Created - t.Deleted
	if t.Created < t.Deleted || gone < uint64(entries) {
		return 0
	}
	return gone - uint64(entries)
}

func (o *Objects) conntrackMaps() []struct {
	name string
	m    *ebpf.Map
} {
	return []struct {
		name string
		m    *ebpf.Map
	}{{ConntrackTCP, o.objs.PalFlowsTcp}, {ConntrackOther, o.objs.PalFlowsOther}}
}

// Conntrack reads the counters of both conntrack tables, and how many TCP
// packets without SYN found no entry: packets of connections whose entry
// the LRU reclaimed while in use (or late packets of closed connections,
// forged ones, connections older than the datapath).
func (o *Objects) Conntrack() ([]ConntrackTable, uint64, error) {
	var out []ConntrackTable
	for i, t := range o.conntrackMaps() {
		created, err := o.ctStat(uint32(i*ctStatPerTable + ctStatCreated))
		if err != nil {
			return nil, 0, err
		}
		deleted, err := o.ctStat(uint32(i*ctStatPerTable + ctStatDeleted))
		if err != nil {
			return nil, 0, err
		}
		out = append(out, ConntrackTable{Name: t.name, Capacity: int(t.m.MaxEntries()), Created: created, Deleted: deleted})
	}
	misses, err := o.ctStat(ctStatTCPMiss)
	return out, misses, err
}

func (o *Objects) ctStat(index uint32) (uint64, error) {
	var perCPU []uint64
	if err := o.objs.PalCtStats.Lookup(index, &perCPU); err != nil {
		return 0, fmt.Errorf("read conntrack counter %d: %w", index, err)
	}
	return sum(perCPU), nil
}

// sizeConntrack gives the conntrack tables of spec the sizes opts asks
// for (0: the default), except where a table is pinned already: its pin,
// and the flows in it, are kept, at the size it has. The agent compares
// the sizes it asked for with ConntrackSizes to say so.
func sizeConntrack(spec *ebpf.CollectionSpec, mapsDir string, opts LoadOptions) error {
	for name, want := range map[string]uint32{"pal_flows_tcp": opts.ConntrackTCP, "pal_flows_other": opts.ConntrackOther} {
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("size %s: no such map in the programs", name)
		}
		if want != 0 {
			ms.MaxEntries = want
		}
		pinned, err := ebpf.LoadPinnedMap(filepath.Join(mapsDir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned %s: %w", name, err)
		}
		ms.MaxEntries = pinned.MaxEntries()
		pinned.Close()
	}
	return nil
}

// ConntrackSizes returns the capacity of the TCP and the other table.
func (o *Objects) ConntrackSizes() (tcp, other int) {
	return int(o.objs.PalFlowsTcp.MaxEntries()), int(o.objs.PalFlowsOther.MaxEntries())
}

// migrateConntrack copies the flows of the tables older versions kept
// into the current ones, so that an upgrade does not cut the established
// flows whose replies need them: the one table of the oldest (pal_ct),
// whose flows count as created here, and the split tables keyed by the
// first packet's tuple (retiredSplitConntrack), whose flows were counted
// when they were created. Keys become flow keys (flowKey). unpinRetired
// then removes the old pins. It returns how many entries it copied.
func (o *Objects) migrateConntrack(mapsDir string) (int, error) {
	total := 0
	for _, name := range append([]string{retiredConntrack}, retiredSplitConntrack...) {
		copied, err := o.migrateTable(filepath.Join(mapsDir, name))
		if err != nil {
			return 0, err
		}
		if name == retiredConntrack {
			for table, n := range copied {
				if err := o.addCreated(uint32(table*ctStatPerTable+ctStatCreated), n); err != nil {
					return 0, err
				}
			}
		}
		total += int(copied[0] + copied[1])
	}
	return total, nil
}

// migrateTable copies the flows of the retired table pinned at path, if
// any, into the TCP and the other table under their flow keys, and
// returns how many each got.
func (o *Objects) migrateTable(path string) ([2]uint64, error) {
	var copied [2]uint64
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return copied, nil
	}
	if err != nil {
		return copied, fmt.Errorf("open the retired conntrack %s: %w", path, err)
	}
	defer old.Close()
	var k CTKey
	var v CTEntry
	it := old.Iterate()
	for it.Next(&k, &v) {
		table := 1
		if k.Proto == 6 { // TCP
			table = 0
		}
		flowKey(&k, &v)
		err := o.conntrackMaps()[table].m.Update(&k, &v, ebpf.UpdateNoExist)
		if errors.Is(err, ebpf.ErrKeyExist) {
			continue
		}
		if err != nil {
			return copied, fmt.Errorf("copy a flow into the %s conntrack table: %w", o.conntrackMaps()[table].name, err)
		}
		copied[table]++
	}
	if err := it.Err(); err != nil {
		return copied, fmt.Errorf("read the retired conntrack %s: %w", path, err)
	}
	return copied, nil
}

// addCreated adds n to the first CPU's slot of a counter. Only while the
// new programs are not attached yet: no program writes it meanwhile.
func (o *Objects) addCreated(index uint32, n uint64) error {
	if n == 0 {
		return nil
	}
	var perCPU []uint64
	if err := o.objs.PalCtStats.Lookup(index, &perCPU); err != nil {
		return fmt.Errorf("read conntrack counter %d: %w", index, err)
	}
	perCPU[0] += n
	if err := o.objs.PalCtStats.Put(index, perCPU); err != nil {
		return fmt.Errorf("write conntrack counter %d: %w", index, err)
	}
	return nil
}
