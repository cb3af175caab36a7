package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// LoadOptions configures Load.
type LoadOptions struct {
	// Root is the bpffs directory for the pins (maps/, progs/, links/).
	Root string
	// Rejudge makes the programs re-judge an established flow against the
	// current policy when the policy revision changed since it was admitted.
	Rejudge bool
	// AllowSampleRate emits one allowed flow in this many as a verdict
	// event; 0 emits none. Drops are always emitted.
	AllowSampleRate uint32
	// EventRateLimit bounds the verdict events each CPU emits per second;
	// 0 means DefaultEventRateLimit. Verdicts over the bound are still
	// counted, and the events lost are counted too.
	EventRateLimit uint32
	// ConntrackTCP and ConntrackOther size the conntrack tables of TCP
	// flows and of all other flows; 0 means DefaultConntrackTCP and
	// DefaultConntrackOther. A table already pinned keeps its size (and its
	// flows): ConntrackSizes tells.
	ConntrackTCP, ConntrackOther uint32
}

// Objects are the loaded programs and maps.
type Objects struct {
	root string
	objs palisadeObjects
	// Migrated is how many flows Load copied from an older version's
	// single conntrack table into the split ones.
	Migrated int
}

// Load loads the programs, reusing the maps pinned under opts.Root (so that
// an agent restart keeps enforcing and keeps its conntrack), and pins the
// programs under Root/progs, replacing older versions atomically. On
// kernels before 5.11 the caller must lift RLIMIT_MEMLOCK first
// (rlimit.RemoveMemlock): this package does not, because the CNI plugin
// links it, and rlimit's probe at init costs every ADD ~2 ms.
func Load(opts LoadOptions) (*Objects, error) {
	if err := ensureBPFFS(filepath.Dir(opts.Root)); err != nil {
		return nil, err
	}
	for _, dir := range []string{"maps", "progs", "links"} {
		if err := os.MkdirAll(filepath.Join(opts.Root, dir), 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory: %w", err)
		}
	}
	spec, err := loadPalisade()
	if err != nil {
		return nil, err
	}
	rejudge := uint8(0)
	if opts.Rejudge {
		rejudge = 1
	}
	if err := spec.Variables[palisadeVarRejudge].Set(rejudge); err != nil {
		return nil, fmt.Errorf("set rejudge: %w", err)
	}
	if err := setClock(spec); err != nil {
		return nil, err
	}
	if err := setEventVariables(spec, opts); err != nil {
		return nil, err
	}
	if err := sizeConntrack(spec, filepath.Join(opts.Root, "maps"), opts); err != nil {
		return nil, err
	}
	o := &Objects{root: opts.Root}
	err = spec.LoadAndAssign(&o.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: filepath.Join(opts.Root, "maps")},
	})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("load programs: a map pinned under %s/maps has another layout than this version expects; "+
			"remove that directory (pods keep running unprotected until the agent is back) and restart the agent: %w", opts.Root, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load programs: %w", err)
	}
	// Before the programs are pinned, so that none counts meanwhile.
	if o.Migrated, err = o.migrateConntrack(filepath.Join(opts.Root, "maps")); err != nil {
		o.Close()
		return nil, err
	}
	for _, d := range Directions {
		if err := pinReplacing(o.program(d), progPin(opts.Root, d)); err != nil {
			o.Close()
			return nil, fmt.Errorf("pin %s program: %w", d, err)
		}
	}
	if err := unpinRetired(filepath.Join(opts.Root, "maps"), spec); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// haveCoarseClock says whether the kernel's tc programs may call
// bpf_ktime_get_coarse_ns (5.11 and later). A variable so that tests can
// load the programs as an older kernel would get them.
var haveCoarseClock = func() (bool, error) {
	err := features.HaveProgramHelper(ebpf.SchedCLS, asm.FnKtimeGetCoarseNs)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return false, nil
	}
	return err == nil, err
}

// setClock makes the programs count deadlines in the coarse clock where the
// kernel has it (clock_now in verdict.h).
func setClock(spec *ebpf.CollectionSpec) error {
	coarse, err := haveCoarseClock()
	if err != nil {
		return fmt.Errorf("probe for bpf_ktime_get_coarse_ns: %w", err)
	}
	v := uint8(0)
	if coarse {
		v = 1
	}
	if err := spec.Variables[palisadeVarCoarseClock].Set(v); err != nil {
		return fmt.Errorf("set coarse clock: %w", err)
	}
	return nil
}

// unpinRetired removes the pins of maps this version no longer has, left
// by an older one. Programs still attached keep such a map alive through
// their own reference until they are replaced; then the kernel frees it.
func unpinRetired(dir string, spec *ebpf.CollectionSpec) error {
	pins, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list pinned maps: %w", err)
	}
	for _, p := range pins {
		if _, ours := spec.Maps[p.Name()]; ours {
			continue
		}
		if err := os.Remove(filepath.Join(dir, p.Name())); err != nil {
			return fmt.Errorf("unpin retired map %s: %w", p.Name(), err)
		}
	}
	return nil
}

// pinReplacing pins prog at path, atomically replacing an older program
// pinned there: a plugin opening the pin gets one or the other, never none.
func pinReplacing(prog *ebpf.Program, path string) error {
	tmp := path + "_new" // bpffs refuses names with a dot
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	if err := prog.Pin(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

func (o *Objects) program(d Direction) *ebpf.Program {
	if d == FromPod {
		return o.objs.PalFromPod
	}
	return o.objs.PalToPod
}

// Root is the bpffs directory holding the pins.
func (o *Objects) Root() string { return o.root }

// Close releases the file descriptors. Pinned objects stay in the kernel and
// keep enforcing.
func (o *Objects) Close() error { return o.objs.Close() }

// Unpin removes every pin under the root, for an uninstall or a test.
// Programs attached through pinned TCX links are detached with them.
func Unpin(root string) error {
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("remove pins under %s: %w", root, err)
	}
	return nil
}

// ensureBPFFS mounts a bpffs at dir unless one is there already.
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, ""); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}
