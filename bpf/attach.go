package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AttachMode selects the kernel hook for the programs.
type AttachMode string

const (
	// AttachAuto uses TCX where the kernel has it (6.6+) and tc clsact otherwise.
	AttachAuto AttachMode = "auto"
	// AttachTCX uses TCX links only.
	AttachTCX AttachMode = "tcx"
	// AttachTC uses a tc clsact filter only.
	AttachTC AttachMode = "tc"
)

// ParseAttachMode validates a mode given by a user.
func ParseAttachMode(s string) (AttachMode, error) {
	switch m := AttachMode(s); m {
	case AttachAuto, AttachTCX, AttachTC:
		return m, nil
	}
	return "", fmt.Errorf("unknown attach mode %q: use auto, tcx or tc", s)
}

// Direction is a direction of traffic from the pod's point of view.
type Direction int

const (
	// FromPod is what the pod sends: tc ingress of its host-side veth.
	FromPod Direction = iota
	// ToPod is what the pod receives: tc egress of its host-side veth.
	ToPod
)

// Directions lists both directions in a fixed order.
var Directions = []Direction{FromPod, ToPod}

func (d Direction) String() string {
	if d == FromPod {
		return "from-pod"
	}
	return "to-pod"
}

func (d Direction) program() string {
	if d == FromPod {
		return "pal_from_pod"
	}
	return "pal_to_pod"
}

func (d Direction) tcxAttach() ebpf.AttachType {
	if d == FromPod {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

func (d Direction) tcParent() uint32 {
	if d == FromPod {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// tcPriority is the tc filter priority Palisade owns on a clsact hook. It is
// fixed and non-zero so that we replace only our own filter and never one that
// other software installed.
const tcPriority = 0xa11

// Paths of the pinned objects under a bpffs root.
func progPin(root string, d Direction) string { return filepath.Join(root, "progs", d.program()) }
func linkPin(root, endpointID string, d Direction) string {
	return filepath.Join(root, "links", endpointID+"_"+d.String())
}

// Attach attaches the agent's pinned programs under root to both hooks of
// the host-side veth ifindex, for endpointID. It is idempotent: attaching an
// endpoint again replaces its programs in place. It returns the mode used.
func Attach(root string, ifindex int, endpointID string, mode AttachMode) (AttachMode, error) {
	used := mode
	for _, d := range Directions {
		prog, err := ebpf.LoadPinnedProgram(progPin(root, d), nil)
		if err != nil {
			return "", fmt.Errorf("open pinned program %s (is palisade-agent running with --bpf-root=%s?): %w", progPin(root, d), root, err)
		}
		used, err = attachOne(root, ifindex, endpointID, d, prog, mode)
		prog.Close()
		if err != nil {
			return "", err
		}
		mode = used // both directions use the same hook
	}
	return used, nil
}

func attachOne(root string, ifindex int, endpointID string, d Direction, prog *ebpf.Program, mode AttachMode) (AttachMode, error) {
	if mode == AttachTCX || mode == AttachAuto {
		err := attachTCX(root, ifindex, endpointID, d, prog)
		if err == nil {
			return AttachTCX, nil
		}
		if mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return "", err
		}
	}
	if err := attachTC(ifindex, d, prog); err != nil {
		return "", err
	}
	return AttachTC, nil
}

func attachTCX(root string, ifindex int, endpointID string, d Direction, prog *ebpf.Program) error {
	pin := linkPin(root, endpointID, d)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			if err := l.Update(prog); err != nil {
				return fmt.Errorf("update %s program on ifindex %d: %w", d, ifindex, err)
			}
			return nil
		}
		// The pin names a link on an interface that is gone or was reused.
		if err := l.Unpin(); err != nil {
			return fmt.Errorf("remove stale link pin %s: %w", pin, err)
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    d.tcxAttach(),
		// Last in the chain: programs that other software attached keep
		// running first and keep their verdicts.
		Anchor: link.Tail(),
	})
	if err != nil {
		return fmt.Errorf("attach %s program to ifindex %d with tcx: %w", d, ifindex, err)
	}
	defer l.Close()
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return fmt.Errorf("create link pin directory: %w", err)
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin %s link at %s: %w", d, pin, err)
	}
	return nil
}

func attachTC(ifindex int, d Direction, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    d.tcParent(),
			Handle:    1,
			Protocol:  unix.ETH_P_ALL,
			Priority:  tcPriority,
		},
		Fd:           prog.FD(),
		Name:         d.program(),
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("attach %s program to ifindex %d with tc: %w", d, ifindex, err)
	}
	return nil
}

// Detach removes the endpoint's programs from ifindex, whichever hook holds
// them. It is idempotent: a missing link, pin or interface counts as done.
func Detach(root string, ifindex int, endpointID string) error {
	var errs []error
	for _, d := range Directions {
		pin := linkPin(root, endpointID, d)
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("open link pin %s: %w", pin, err))
		default:
			// Closing the last reference to an unpinned link detaches it.
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin %s: %w", pin, err))
			}
			l.Close()
		}
		if ifindex > 0 {
			if err := detachTC(ifindex, d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func detachTC(ifindex int, d Direction) error {
	lnk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil
		}
		return fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(lnk, d.tcParent())
	if err != nil {
		// No clsact qdisc: nothing of ours can be there.
		return nil
	}
	for _, f := range filters {
		if f.Attrs().Priority != tcPriority {
			continue
		}
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete %s tc filter on ifindex %d: %w", d, ifindex, err)
		}
	}
	return nil
}

// ErrNotAttached means a hook of the interface runs no Palisade program.
var ErrNotAttached = errors.New("palisade program not attached")

// Attached returns nil when both hooks of ifindex run a Palisade program,
// through TCX or tc, and ErrNotAttached (wrapped, naming the hook) otherwise.
func Attached(ifindex int) error {
	for _, d := range Directions {
		ok, err := attachedTCX(ifindex, d)
		if err != nil {
			return err
		}
		if !ok {
			ok, err = attachedTC(ifindex, d)
			if err != nil {
				return err
			}
		}
		if !ok {
			return fmt.Errorf("%w: %s hook of ifindex %d", ErrNotAttached, d, ifindex)
		}
	}
	return nil
}

func attachedTCX(ifindex int, d Direction) (bool, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: d.tcxAttach()})
	if errors.Is(err, ebpf.ErrNotSupported) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("query %s tcx programs of ifindex %d: %w", d, ifindex, err)
	}
	for _, ap := range res.Programs {
		if ours, err := isOurs(ap.ID, d); err != nil {
			return false, err
		} else if ours {
			return true, nil
		}
	}
	return false, nil
}

func isOurs(id ebpf.ProgramID, d Direction) (bool, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false, fmt.Errorf("open program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false, fmt.Errorf("read program %d info: %w", id, err)
	}
	return info.Name == d.program(), nil
}

func attachedTC(ifindex int, d Direction) (bool, error) {
	lnk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("look up ifindex %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(lnk, d.tcParent())
	if err != nil {
		return false, nil
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Priority == tcPriority && strings.HasPrefix(bf.Name, d.program()) {
			return true, nil
		}
	}
	return false, nil
}
