package bpf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// foreignFilter attaches prog as a tc filter of someone else's at another
// priority, which Palisade must leave alone.
func foreignFilter(prog *ebpf.Program, ifindex int) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1},
		Fd:          prog.FD(), Name: "not_ours", DirectAction: true,
	}
	return netlink.FilterAdd(f)
}

func foreignStillThere(ifindex int) (bool, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false, err
	}
	filters, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		return false, err
	}
	for _, f := range filters {
		if f.Attrs().Priority == 1 {
			return true, nil
		}
	}
	return false, nil
}

func TestPrivilegedAttachDetach(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC, AttachAuto} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t)
			const ep = "container_eth0"
			foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{
				Name: "not_ours", Type: ebpf.SchedCLS, License: "MIT",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { foreign.Close() })
			var steps []string
			err = f.netns.Do(func(ns.NetNS) error {
				if err := Attached(f.ifindex); !errors.Is(err, ErrNotAttached) {
					return errors.New("a fresh interface reports programs attached")
				}
				if err := foreignFilter(foreign, f.ifindex); err != nil {
					return err
				}
				for i := 0; i < 2; i++ { // attaching again replaces in place
					used, err := Attach(f.objs.Root(), f.ifindex, ep, mode)
					if err != nil {
						return err
					}
					if mode != AttachAuto && used != mode {
						return errors.New("attached with " + string(used) + ", not " + string(mode))
					}
					steps = append(steps, string(used))
				}
				if err := Attached(f.ifindex); err != nil {
					return err
				}
				if err := Detach(f.objs.Root(), f.ifindex, ep); err != nil {
					return err
				}
				if err := Detach(f.objs.Root(), f.ifindex, ep); err != nil {
					return errors.New("second detach: " + err.Error())
				}
				if err := Attached(f.ifindex); !errors.Is(err, ErrNotAttached) {
					return errors.New("programs still attached after detach")
				}
				if ok, err := foreignStillThere(f.ifindex); err != nil || !ok {
					return errors.New("another program's tc filter was removed")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if mode == AttachAuto && steps[0] != string(AttachTCX) {
				t.Errorf("auto chose %s on a kernel with tcx", steps[0])
			}
		})
	}
}

func TestPrivilegedAttachWithoutAgentNamesTheRoot(t *testing.T) {
	f := newFixture(t)
	err := f.netns.Do(func(ns.NetNS) error {
		_, err := Attach("/sys/fs/bpf/palisade-nonexistent", f.ifindex, "x_eth0", AttachAuto)
		return err
	})
	if err == nil {
		t.Fatal("attach without pinned programs succeeded")
	}
	if want := "--bpf-root=/sys/fs/bpf/palisade-nonexistent"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
}

// TestPrivilegedLoadUnpinsRetiredMaps: an upgrade must not leave behind the
// maps of the version it replaces (pal_policy, retired for pal_rules, then
// pal_rules and pal_endpoints, retired for rule sets), while keeping the
// ones it still uses.
func TestPrivilegedLoadUnpinsRetiredMaps(t *testing.T) {
	f := newFixture(t)
	var retired []string
	for _, name := range []string{"pal_policy", "pal_rules", "pal_endpoints"} {
		old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		path := filepath.Join(f.objs.Root(), "maps", name)
		if err := old.Pin(path); err != nil {
			t.Fatal(err)
		}
		retired = append(retired, path)
	}
	again, err := Load(LoadOptions{Root: f.objs.Root()})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	for _, path := range retired {
		if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("retired map still pinned: stat: %v", err)
		}
	}
	for _, kept := range []string{"pal_set_rules", "pal_ep", "pal_ipcache"} {
		if _, err := os.Stat(filepath.Join(f.objs.Root(), "maps", kept)); err != nil {
			t.Errorf("map %s lost its pin: %v", kept, err)
		}
	}
}
