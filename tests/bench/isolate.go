package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Where the cgroup v1 hierarchies isolate uses are mounted.
var (
	cpusetRoot  = "/sys/fs/cgroup/cpuset"
	freezerRoot = "/sys/fs/cgroup/freezer"
)

// isolation keeps the testbed off the CPU the load generators measure on
// (issue #19): every process the test started (control plane, flanneld,
// kube-proxy, agents or a peer) goes into a cpuset of the other CPUs and a
// freezer cgroup that Freeze stops during each measurement, and the test
// process itself, load generators and servers alike, into a cpuset of the
// one load CPU. Veth and VXLAN deliver in the sender's softirq when RPS is
// off (rps_default_mask 0), so the datapath's softirq runs on the load
// CPU too; NetRXShare shows it did.
//
// It needs cgroup v1's cpuset and freezer hierarchies (what this machine
// mounts); on a cgroup v2-only host isolate returns an error and the
// benchmark runs with -isolate=false.
type isolation struct {
	LoadCPU     int
	OtherCPUs   string
	Pids        []int
	dirs        []string       // created, removed by Close in reverse
	origin      map[int]string // pid → its cpuset cgroup before
	freezerOrig map[int]string // pid → its freezer cgroup before
	selfOrig    string
	ctlCpuset   string
	loadCpuset  string
	freezer     string
	softirq0    []uint64 // NET_RX per CPU when isolate began
}

// isolate moves the test's descendants off loadCPU (and into a freezer
// cgroup) and the test process onto it. Close undoes all of it.
func isolate(loadCPU int) (iso *isolation, err error) {
	for _, f := range []string{filepath.Join(cpusetRoot, "cpuset.cpus"), filepath.Join(freezerRoot, "cgroup.procs")} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("isolate: needs cgroup v1 cpuset and freezer hierarchies: %w", err)
		}
	}
	cpusText, err := os.ReadFile(filepath.Join(cpusetRoot, "cpuset.effective_cpus"))
	if err != nil {
		return nil, fmt.Errorf("isolate: %w", err)
	}
	cpus, err := parseCPUList(string(cpusText))
	if err != nil {
		return nil, fmt.Errorf("isolate: root cpuset: %w", err)
	}
	others := slices.DeleteFunc(slices.Clone(cpus), func(c int) bool { return c == loadCPU })
	if len(others) == len(cpus) || len(others) == 0 {
		return nil, fmt.Errorf("isolate: load CPU %d must be one of %v, with another left for the rest", loadCPU, cpus)
	}
	mems, err := os.ReadFile(filepath.Join(cpusetRoot, "cpuset.effective_mems"))
	if err != nil {
		return nil, fmt.Errorf("isolate: %w", err)
	}
	self := os.Getpid()
	pids, err := descendants(self)
	if err != nil {
		return nil, fmt.Errorf("isolate: %w", err)
	}
	if len(pids) == 0 {
		return nil, errors.New("isolate: the test has started no processes to move")
	}
	iso = &isolation{LoadCPU: loadCPU, OtherCPUs: formatCPUList(others), Pids: pids,
		origin: map[int]string{}, freezerOrig: map[int]string{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, iso.Close())
			iso = nil
		}
	}()
	name := fmt.Sprintf("palisade-bench-%d", self)
	iso.ctlCpuset = filepath.Join(cpusetRoot, name+"-testbed")
	iso.loadCpuset = filepath.Join(cpusetRoot, name+"-load")
	iso.freezer = filepath.Join(freezerRoot, name)
	for _, cg := range []struct{ dir, cpus string }{{iso.ctlCpuset, iso.OtherCPUs}, {iso.loadCpuset, strconv.Itoa(loadCPU)}} {
		if err := iso.mkdir(cg.dir); err != nil {
			return iso, err
		}
		// A v1 cpuset takes no task before it has CPUs and memory nodes.
		if err := writeFile(filepath.Join(cg.dir, "cpuset.mems"), strings.TrimSpace(string(mems))); err != nil {
			return iso, err
		}
		if err := writeFile(filepath.Join(cg.dir, "cpuset.cpus"), cg.cpus); err != nil {
			return iso, err
		}
	}
	if err := iso.mkdir(iso.freezer); err != nil {
		return iso, err
	}
	for _, pid := range pids {
		cs, fz, err := procCgroups(pid)
		if err != nil {
			return iso, err
		}
		if err := moveProc(iso.ctlCpuset, pid); err != nil {
			return iso, err
		}
		iso.origin[pid] = cs
		if err := moveProc(iso.freezer, pid); err != nil {
			return iso, err
		}
		iso.freezerOrig[pid] = fz
	}
	if iso.selfOrig, _, err = procCgroups(self); err != nil {
		return iso, err
	}
	if err := moveProc(iso.loadCpuset, self); err != nil {
		iso.selfOrig = ""
		return iso, err
	}
	if iso.softirq0, err = netRXSoftirqs(); err != nil {
		return iso, err
	}
	return iso, nil
}

func (iso *isolation) mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("isolate: create cgroup: %w", err)
	}
	iso.dirs = append(iso.dirs, dir)
	return nil
}

// Freeze stops the testbed's processes and waits until the kernel has.
func (iso *isolation) Freeze() error { return iso.setFreezer("FROZEN") }

// Thaw lets them run again.
func (iso *isolation) Thaw() error { return iso.setFreezer("THAWED") }

func (iso *isolation) setFreezer(state string) error {
	f := filepath.Join(iso.freezer, "freezer.state")
	if err := writeFile(f, state); err != nil {
		return err
	}
	// FREEZING lasts until every task has stopped; on a loaded machine a
	// task in an uninterruptible sleep can hold it for seconds.
	const wait = 10 * time.Second
	deadline := time.Now().Add(wait)
	for {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read %s: %w", f, err)
		}
		if strings.TrimSpace(string(b)) == state {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: still %s, not %s, after %v", f, strings.TrimSpace(string(b)), state, wait)
		}
		time.Sleep(time.Millisecond)
	}
}

// NetRXShare is the share of NET_RX softirqs since isolate that ran on the
// load CPU (the rest of the machine's traffic counts too, so it is a lower
// bound for the benchmark's own).
func (iso *isolation) NetRXShare() (float64, error) {
	now, err := netRXSoftirqs()
	if err != nil {
		return 0, err
	}
	var total, load uint64
	for cpu := range min(len(now), len(iso.softirq0)) {
		d := now[cpu] - iso.softirq0[cpu]
		total += d
		if cpu == iso.LoadCPU {
			load += d
		}
	}
	if total == 0 {
		return 0, errors.New("no NET_RX softirqs since isolate")
	}
	return float64(load) / float64(total), nil
}

// Close thaws, moves every process back to the cgroups it came from and
// removes the cgroups isolate made. Processes that have exited are skipped.
func (iso *isolation) Close() error {
	var errs []error
	if iso.freezer != "" && slices.Contains(iso.dirs, iso.freezer) {
		if err := iso.Thaw(); err != nil {
			errs = append(errs, err)
		}
	}
	if iso.selfOrig != "" {
		if err := moveProc(filepath.Join(cpusetRoot, iso.selfOrig), os.Getpid()); err != nil {
			errs = append(errs, err)
		}
	}
	for pid, cg := range iso.origin {
		if err := moveProc(filepath.Join(cpusetRoot, cg), pid); err != nil && !gone(pid) {
			errs = append(errs, err)
		}
	}
	for pid, cg := range iso.freezerOrig {
		if err := moveProc(filepath.Join(freezerRoot, cg), pid); err != nil && !gone(pid) {
			errs = append(errs, err)
		}
	}
	for _, dir := range slices.Backward(iso.dirs) {
		// A cgroup with no tasks left can be removed; one whose last task
		// is still exiting needs a moment.
		var err error
		for range 50 {
			if err = os.Remove(dir); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	iso.dirs = nil
	return errors.Join(errs...)
}

func gone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

func moveProc(dir string, pid int) error {
	return writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid))
}

func writeFile(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// procCgroups returns pid's cpuset and freezer cgroup paths (v1).
func procCgroups(pid int) (cpuset, freezer string, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", "", fmt.Errorf("cgroups of pid %d: %w", pid, err)
	}
	cpuset, freezer = cgroupPath(string(b), "cpuset"), cgroupPath(string(b), "freezer")
	if cpuset == "" || freezer == "" {
		return "", "", fmt.Errorf("pid %d is in no v1 cpuset or freezer cgroup:\n%s", pid, b)
	}
	return cpuset, freezer, nil
}

// cgroupPath finds controller's path in /proc/PID/cgroup's text
// ("ID:controller[,controller]:path" per line).
func cgroupPath(text, controller string) string {
	for line := range strings.SplitSeq(text, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), controller) {
			return parts[2]
		}
	}
	return ""
}

// descendants lists the processes below pid, from /proc.
func descendants(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	children := map[int][]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited since the listing
		}
		ppid, err := statPPid(string(b))
		if err != nil {
			return nil, fmt.Errorf("pid %d: %w", p, err)
		}
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, children[p]...)
		queue = append(queue, children[p]...)
	}
	slices.Sort(out)
	return out, nil
}

// statPPid reads the parent PID from /proc/PID/stat, whose second field
// (the command in parentheses) may itself hold spaces and parentheses.
func statPPid(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command field", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("stat %q: no parent field", stat)
	}
	return strconv.Atoi(f[1])
}

// parseCPUList parses a kernel CPU list such as "0-3,6".
func parseCPUList(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("cpu list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return nil, fmt.Errorf("cpu list %q: bad range %q", s, part)
			}
		}
		for c := a; c <= b; c++ {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cpu list %q is empty", s)
	}
	return out, nil
}

func formatCPUList(cpus []int) string {
	parts := make([]string, len(cpus))
	for i, c := range cpus {
		parts[i] = strconv.Itoa(c)
	}
	return strings.Join(parts, ",")
}

// netRXSoftirqs reads the NET_RX row of /proc/softirqs, one count per CPU.
func netRXSoftirqs() ([]uint64, error) {
	b, err := os.ReadFile("/proc/softirqs")
	if err != nil {
		return nil, fmt.Errorf("read softirqs: %w", err)
	}
	return parseSoftirqs(string(b), "NET_RX")
}

func parseSoftirqs(text, row string) ([]uint64, error) {
	for line := range strings.SplitSeq(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != row+":" {
			continue
		}
		out := make([]uint64, 0, len(f)-1)
		for _, v := range f[1:] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("softirqs %s: %w", row, err)
			}
			out = append(out, n)
		}
		return out, nil
	}
	return nil, fmt.Errorf("softirqs: no %s row", row)
}
