package cgroups

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// v1Default lists the v1 hierarchies every container joins: they carry the
// limits Berth sets by default, the stats, the freezer and the device list.
func v1Default() []string {
	return []string{"cpu", "cpuacct", "memory", "pids", "freezer", "devices", "blkio"}
}

type v1Manager struct {
	mounts map[string]string // controller -> mount point
	path   string
	res    *specs.LinuxResources
	// made lists the directories Create made, parents first; joined the
	// container's directories, one per hierarchy. Both are empty for a
	// Manager that did not Create.
	made   []string
	joined []string
}

func (m *v1Manager) Path() string { return m.path }

func (m *v1Manager) Dirs() []string {
	seen := map[string]bool{}
	var dirs []string
	for _, mnt := range m.mounts {
		if !seen[mnt] {
			seen[mnt] = true
			dirs = append(dirs, mnt+m.path)
		}
	}
	sort.Strings(dirs)
	return dirs
}

func (m *v1Manager) dir(ctrl string) (string, bool) {
	mnt, ok := m.mounts[ctrl]
	return mnt + m.path, ok
}

// controllers returns the hierarchies writes need beyond those present,
// default ones first, without repeating a co-mounted hierarchy.
func (m *v1Manager) controllers(ws []Write, withDefault bool) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	addCtrl := func(c string) {
		mnt := m.mounts[c]
		if !seen[mnt] {
			seen[mnt] = true
			out = append(out, c)
		}
	}
	if withDefault {
		for _, c := range v1Default() {
			if _, ok := m.mounts[c]; ok {
				addCtrl(c)
			}
		}
	}
	for _, w := range ws {
		if _, ok := m.mounts[w.Controller]; !ok {
			return nil, fieldErr(w.Field, "needs the %s cgroup controller, which is not mounted on this host", w.Controller)
		}
		addCtrl(w.Controller)
	}
	return out, nil
}

func (m *v1Manager) Create() (err error) {
	ws, err := v1Writes(m.res, -1)
	if err != nil {
		return err
	}
	ctrls, err := m.controllers(ws, true)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			removeMade(m.made)
			m.made, m.joined = nil, nil
		}
	}()
	seeded := false
	for _, c := range ctrls {
		if c == "cpuset" {
			if seeded, err = m.makeCpuset(); err != nil {
				return err
			}
		} else {
			made, err := mkdirAll(m.mounts[c], m.path)
			m.made = append(m.made, made...)
			if err != nil {
				return fmt.Errorf("create cgroup: %w", err)
			}
		}
		d, _ := m.dir(c)
		m.joined = append(m.joined, d)
	}
	for _, w := range ws {
		if w.Controller == "cpuset" && seeded {
			continue // makeCpuset wrote them
		}
		d, _ := m.dir(w.Controller)
		if err := applyWrite(d, w); err != nil {
			return err
		}
	}
	return nil
}

// makeCpuset makes the cpuset directory. A new v1 cpuset starts with no
// CPUs and no memory nodes and refuses processes until both are written,
// so every level made is seeded from its parent's effective sets, and the
// leaf gets the spec's sets, checked against its parent's. It reports
// whether it made (and so wrote) the leaf; an existing one is left as is.
func (m *v1Manager) makeCpuset() (bool, error) {
	var cpus, mems string
	if c := m.res; c != nil && c.CPU != nil {
		cpus, mems = c.CPU.Cpus, c.CPU.Mems
	}
	mnt := m.mounts["cpuset"]
	parent := mnt
	els := strings.Split(strings.TrimPrefix(m.path, "/"), "/")
	for i, el := range els {
		cur := parent + "/" + el
		err := unix.Mkdir(cur, 0o755)
		if err == unix.EEXIST {
			if i == len(els)-1 {
				return false, nil
			}
			parent = cur
			continue
		}
		if err != nil {
			return false, fmt.Errorf("create cgroup: %w", &os.PathError{Op: "mkdir", Path: cur, Err: err})
		}
		m.made = append(m.made, cur)
		pc, err := readFile(parent + "/cpuset.effective_cpus")
		if err != nil {
			return false, fmt.Errorf("read parent cpuset: %w", err)
		}
		pm, err := readFile(parent + "/cpuset.effective_mems")
		if err != nil {
			return false, fmt.Errorf("read parent cpuset: %w", err)
		}
		c, mm := strings.TrimSpace(pc), strings.TrimSpace(pm)
		if i == len(els)-1 {
			if cpus != "" {
				if err := CheckSubset(fCPUCpus, cpus, c); err != nil {
					return false, err
				}
				c = cpus
			}
			if mems != "" {
				if err := CheckSubset(fCPUMems, mems, mm); err != nil {
					return false, err
				}
				mm = mems
			}
		}
		if err := applyWrite(cur, Write{File: "cpuset.cpus", Value: c, Field: fCPUCpus}); err != nil {
			return false, err
		}
		if err := applyWrite(cur, Write{File: "cpuset.mems", Value: mm, Field: fCPUMems}); err != nil {
			return false, err
		}
		parent = cur
	}
	return true, nil
}

// joinedDirs returns the container's directory in each hierarchy.
func (m *v1Manager) joinedDirs() []string {
	if m.joined != nil {
		return m.joined
	}
	var out []string
	seen := map[string]bool{}
	for _, mnt := range m.mounts {
		if seen[mnt] {
			continue
		}
		seen[mnt] = true
		if _, err := os.Stat(mnt + m.path); err == nil {
			out = append(out, mnt+m.path)
		}
	}
	return out
}

func (m *v1Manager) Add(pid int) error {
	dirs := m.joinedDirs()
	if len(dirs) == 0 {
		return fmt.Errorf("add pid %d: cgroup %s does not exist", pid, m.path)
	}
	v := strconv.Itoa(pid)
	for _, d := range dirs {
		if err := writeFile(d+"/cgroup.procs", v); err != nil {
			return fmt.Errorf("add pid %d to cgroup: %w", pid, err)
		}
	}
	return nil
}

// procsDir is the hierarchy used to list the container's processes.
func (m *v1Manager) procsDir() (string, error) {
	for _, c := range []string{"pids", "freezer", "memory", "cpu", "devices"} {
		if d, ok := m.dir(c); ok {
			if _, err := os.Stat(d); err == nil {
				return d, nil
			}
		}
	}
	return "", fmt.Errorf("cgroup %s does not exist", m.path)
}

func (m *v1Manager) Set(r *specs.LinuxResources) error {
	memsw := int64(-1)
	if r != nil && r.Memory != nil && set(r.Memory.Limit) {
		d, _ := m.dir("memory")
		if set(r.Memory.Swap) {
			s, err := readFile(d + "/memory.memsw.limit_in_bytes")
			if err == nil {
				if v, err := parseUint(s); err == nil && v != Unlimited {
					memsw = int64(v)
				}
			}
		}
		s, err := readFile(d + "/memory.usage_in_bytes")
		if err != nil {
			return fmt.Errorf("read memory usage: %w", err)
		}
		usage, err := parseUint(s)
		if err != nil {
			return fmt.Errorf("read memory usage: %w", err)
		}
		if err := CheckMemoryUpdate(r, usage); err != nil {
			return err
		}
	}
	ws, err := v1Writes(r, memsw)
	if err != nil {
		return err
	}
	ctrls, err := m.controllers(ws, false)
	if err != nil {
		return err
	}
	// A hierarchy the container was not in (cpuset, hugetlb, ...) is made
	// now and the container's processes moved in.
	newCpuset := false
	for _, c := range ctrls {
		d, _ := m.dir(c)
		if _, err := os.Stat(d); err == nil {
			continue
		}
		from, err := m.procsDir()
		if err != nil {
			return err
		}
		m.res = r
		if c == "cpuset" {
			newCpuset, err = m.makeCpuset()
		} else {
			var made []string
			made, err = mkdirAll(m.mounts[c], m.path)
			m.made = append(m.made, made...)
		}
		if err != nil {
			return err
		}
		if m.joined != nil {
			m.joined = append(m.joined, d)
		}
		if err := movePids(from, d); err != nil {
			return err
		}
	}
	for _, w := range ws {
		if w.Controller == "cpuset" {
			if newCpuset {
				continue
			}
			parent, _ := m.dir("cpuset")
			parent = parent[:strings.LastIndexByte(parent, '/')]
			if err := m.checkCpuset(parent, w); err != nil {
				return err
			}
		}
		d, _ := m.dir(w.Controller)
		if err := applyWrite(d, w); err != nil {
			return err
		}
	}
	m.res = r
	return nil
}

func (m *v1Manager) checkCpuset(parent string, w Write) error {
	file := "cpuset.effective_cpus"
	if w.File == "cpuset.mems" {
		file = "cpuset.effective_mems"
	}
	have, err := readFile(parent + "/" + file)
	if err != nil {
		return fmt.Errorf("read parent cpuset: %w", err)
	}
	return CheckSubset(w.Field, w.Value, have)
}

func (m *v1Manager) freezerDir() (string, error) {
	d, ok := m.dir("freezer")
	if !ok {
		return "", errors.New("the freezer cgroup controller is not mounted on this host")
	}
	return d, nil
}

func (m *v1Manager) Freeze() error {
	d, err := m.freezerDir()
	if err != nil {
		return err
	}
	// Writing FROZEN again makes the kernel retry tasks it could not
	// freeze yet. A task caught between vfork and exec, or waiting on one
	// already frozen, can hold the cgroup in FREEZING for good; a short
	// thaw now and then lets it get past that point (runc does the same).
	tries := 0
	ok, err := waitFor(10*time.Second, func() (bool, error) {
		tries++
		if tries%50 == 0 {
			if err := writeFile(d+"/freezer.state", string(Thawed)); err != nil {
				return false, err
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := writeFile(d+"/freezer.state", string(Frozen)); err != nil {
			return false, err
		}
		s, err := readFile(d + "/freezer.state")
		return strings.TrimSpace(s) == string(Frozen), err
	})
	if err != nil {
		return fmt.Errorf("freeze %s: %w", m.path, err)
	}
	if !ok {
		_ = writeFile(d+"/freezer.state", string(Thawed))
		return fmt.Errorf("freeze %s: processes did not freeze within 10s", m.path)
	}
	return nil
}

func (m *v1Manager) Thaw() error {
	d, err := m.freezerDir()
	if err != nil {
		return err
	}
	ok, err := waitFor(5*time.Second, func() (bool, error) {
		if err := writeFile(d+"/freezer.state", string(Thawed)); err != nil {
			return false, err
		}
		s, err := readFile(d + "/freezer.state")
		return strings.TrimSpace(s) == string(Thawed), err
	})
	if err != nil {
		return fmt.Errorf("thaw %s: %w", m.path, err)
	}
	if !ok {
		return fmt.Errorf("thaw %s: still not thawed after 5s", m.path)
	}
	return nil
}

func (m *v1Manager) State() (FreezerState, error) {
	d, err := m.freezerDir()
	if err != nil {
		return Thawed, nil
	}
	s, err := readFile(d + "/freezer.state")
	if err != nil {
		return "", fmt.Errorf("read freezer state of %s: %w", m.path, err)
	}
	return FreezerState(strings.TrimSpace(s)), nil
}

func (m *v1Manager) Pids() ([]int, error) {
	d, err := m.procsDir()
	if err != nil {
		return nil, err
	}
	pids, err := readPidsTree(d)
	if err != nil {
		return nil, fmt.Errorf("list processes of %s: %w", m.path, err)
	}
	return pids, nil
}

func (m *v1Manager) OOMKills() (uint64, error) {
	d, ok := m.dir("memory")
	if !ok {
		return 0, nil
	}
	r := statReader{}
	n := r.kv(d + "/memory.oom_control")["oom_kill"]
	if r.err != nil {
		return 0, fmt.Errorf("oom kills of %s: %w", m.path, r.err)
	}
	return n, nil
}

func (m *v1Manager) Stats() (*Stats, error) {
	var st Stats
	r := statReader{}
	if d, ok := m.dir("cpuacct"); ok {
		st.CPU.UsageNanos = r.uint(d + "/cpuacct.usage")
		st.CPU.UserNanos = r.uint(d + "/cpuacct.usage_user")
		st.CPU.SystemNanos = r.uint(d + "/cpuacct.usage_sys")
	}
	if d, ok := m.dir("cpu"); ok {
		kv := r.kv(d + "/cpu.stat")
		st.CPU.Periods = kv["nr_periods"]
		st.CPU.ThrottledPeriods = kv["nr_throttled"]
		st.CPU.ThrottledNanos = kv["throttled_time"]
	}
	if d, ok := m.dir("memory"); ok {
		st.Memory.Usage = r.uint(d + "/memory.usage_in_bytes")
		st.Memory.MaxUsage = r.uint(d + "/memory.max_usage_in_bytes")
		st.Memory.Limit = r.uint(d + "/memory.limit_in_bytes")
		st.Memory.Failcnt = r.uint(d + "/memory.failcnt")
		st.Memory.SwapLimit = r.uint(d + "/memory.memsw.limit_in_bytes")
		if sw := r.uint(d + "/memory.memsw.usage_in_bytes"); sw > st.Memory.Usage {
			st.Memory.SwapUsage = sw - st.Memory.Usage
		}
		kv := r.kv(d + "/memory.stat")
		st.Memory.Cache = kv["total_cache"]
		st.Memory.RSS = kv["total_rss"]
		st.Memory.OOMKills = r.kv(d + "/memory.oom_control")["oom_kill"]
	}
	if d, ok := m.dir("pids"); ok {
		st.Pids.Current = r.uint(d + "/pids.current")
		st.Pids.Limit = r.uint(d + "/pids.max")
	}
	if d, ok := m.dir("blkio"); ok {
		b, _ := r.read(d + "/blkio.throttle.io_service_bytes_recursive")
		n, _ := r.read(d + "/blkio.throttle.io_serviced_recursive")
		st.IO = parseBlkioV1(b, n)
	}
	if r.err != nil {
		return nil, fmt.Errorf("stats of %s: %w", m.path, r.err)
	}
	return &st, nil
}

// statReader reads stat files, treating a missing file (a controller or
// counter this kernel lacks) as zero and keeping the first other error.
type statReader struct{ err error }

func (r *statReader) read(p string) (string, bool) {
	s, err := readFile(p)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) && r.err == nil {
			r.err = err
		}
		return "", false
	}
	return s, true
}

func (r *statReader) uint(p string) uint64 {
	s, ok := r.read(p)
	if !ok {
		return 0
	}
	v, err := parseUint(s)
	if err != nil && r.err == nil {
		r.err = fmt.Errorf("%s: %w", p, err)
	}
	return v
}

func (r *statReader) kv(p string) map[string]uint64 {
	s, _ := r.read(p)
	return parseKV(s)
}

func (m *v1Manager) Destroy() error {
	var errs []error
	seen := map[string]bool{}
	for _, mnt := range m.mounts {
		if seen[mnt] {
			continue
		}
		seen[mnt] = true
		if err := removeTree(mnt + m.path); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		removeMade(m.made)
		m.made, m.joined = nil, nil
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("destroy cgroup %s: %w", m.path, err)
	}
	return nil
}
