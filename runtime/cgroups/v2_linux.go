package cgroups

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type v2Manager struct {
	root string // cgroup2 mount point
	path string
	dir  string // root + path
	res  *specs.LinuxResources
	made []string // directories Create made, parents first
}

func (m *v2Manager) Path() string { return m.path }

func (m *v2Manager) Dirs() []string { return []string{m.dir} }

// v2Always are the controllers enabled for every container when the host
// offers them, so that Stats reports memory and pids without limits set.
func v2Always() []string { return []string{"memory", "pids"} }

func (m *v2Manager) Create() (err error) {
	ws, err := v2Writes(m.res)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			removeMade(m.made)
			m.made = nil
		}
	}()
	made, err := mkdirAll(m.root, m.path)
	m.made = made
	if err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	if err := m.enable(ws, true); err != nil {
		return err
	}
	if err := m.apply(ws); err != nil {
		return err
	}
	if m.res != nil && len(m.res.Devices) > 0 {
		// A cgroup that existed before may carry an old filter: replace it.
		existed := len(made) == 0 || made[len(made)-1] != m.dir
		return attachDeviceFilter(m.dir, m.res.Devices, existed)
	}
	return nil
}

// enable makes the controllers ws need (and, when always is set, those
// v2Always names that the host offers) available in the container's cgroup
// by enabling them in subtree_control from the root down to its parent;
// the kernel requires a controller in a parent before its child.
func (m *v2Manager) enable(ws []Write, always bool) error {
	s, err := readFile(m.root + "/cgroup.controllers")
	if err != nil {
		return fmt.Errorf("read available controllers: %w", err)
	}
	avail := map[string]bool{}
	for _, c := range strings.Fields(s) {
		avail[c] = true
	}
	var want []string
	seen := map[string]bool{}
	if always {
		for _, c := range v2Always() {
			if avail[c] {
				seen[c] = true
				want = append(want, c)
			}
		}
	}
	for _, w := range ws {
		if w.Controller == "" || seen[w.Controller] {
			continue
		}
		if !avail[w.Controller] {
			return fieldErr(w.Field, "needs the %s controller, which cgroup v2 at %s does not offer (it offers %q)", w.Controller, m.root, strings.TrimSpace(s))
		}
		seen[w.Controller] = true
		want = append(want, w.Controller)
	}
	if len(want) == 0 {
		return nil
	}
	value := "+" + strings.Join(want, " +")
	dir := m.root
	els := strings.Split(strings.TrimPrefix(m.path, "/"), "/")
	for i := 0; i < len(els); i++ {
		if err := writeFile(dir+"/cgroup.subtree_control", value); err != nil {
			return fmt.Errorf("enable controllers %q in %s (a cgroup v2 with processes cannot hand controllers to children): %w", value, dir, err)
		}
		dir += "/" + els[i]
	}
	return nil
}

func (m *v2Manager) apply(ws []Write) error {
	for _, w := range ws {
		if w.File == "cpuset.cpus" || w.File == "cpuset.mems" {
			parent := m.dir[:strings.LastIndexByte(m.dir, '/')]
			have, err := readFile(parent + "/" + w.File + ".effective")
			if err != nil {
				return fmt.Errorf("read parent cpuset: %w", err)
			}
			if err := CheckSubset(w.Field, w.Value, have); err != nil {
				return err
			}
		}
		if err := applyWrite(m.dir, w); err != nil {
			return err
		}
	}
	return nil
}

func (m *v2Manager) Add(pid int) error {
	if err := writeFile(m.dir+"/cgroup.procs", strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("add pid %d to cgroup: %w", pid, err)
	}
	return nil
}

func (m *v2Manager) Set(r *specs.LinuxResources) error {
	if r != nil && r.Memory != nil && set(r.Memory.Limit) {
		s, err := readFile(m.dir + "/memory.current")
		if err == nil {
			usage, err := parseUint(s)
			if err != nil {
				return fmt.Errorf("read memory usage: %w", err)
			}
			if err := CheckMemoryUpdate(r, usage); err != nil {
				return err
			}
		} else if !os.IsNotExist(err) {
			return fmt.Errorf("read memory usage: %w", err)
		}
	}
	ws, err := v2Writes(r)
	if err != nil {
		return err
	}
	if err := m.enable(ws, false); err != nil {
		return err
	}
	if err := m.apply(ws); err != nil {
		return err
	}
	if r != nil && len(r.Devices) > 0 {
		if err := attachDeviceFilter(m.dir, r.Devices, true); err != nil {
			return err
		}
	}
	m.res = r
	return nil
}

func (m *v2Manager) frozen() (bool, error) {
	s, err := readFile(m.dir + "/cgroup.events")
	if err != nil {
		return false, err
	}
	return parseKV(s)["frozen"] == 1, nil
}

func (m *v2Manager) setFrozen(want bool) error {
	verb := map[bool]string{true: "freeze", false: "thaw"}[want]
	if err := writeFile(m.dir+"/cgroup.freeze", boolStr(want)); err != nil {
		return fmt.Errorf("%s %s: %w", verb, m.path, err)
	}
	ok, err := waitFor(5*time.Second, func() (bool, error) {
		f, err := m.frozen()
		return f == want, err
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, m.path, err)
	}
	if !ok {
		if want {
			_ = writeFile(m.dir+"/cgroup.freeze", "0")
		}
		return fmt.Errorf("%s %s: not done within 5s", verb, m.path)
	}
	return nil
}

func (m *v2Manager) Freeze() error { return m.setFrozen(true) }
func (m *v2Manager) Thaw() error   { return m.setFrozen(false) }

func (m *v2Manager) State() (FreezerState, error) {
	s, err := readFile(m.dir + "/cgroup.freeze")
	if err != nil {
		return "", fmt.Errorf("read freezer state of %s: %w", m.path, err)
	}
	if strings.TrimSpace(s) != "1" {
		return Thawed, nil
	}
	f, err := m.frozen()
	if err != nil {
		return "", fmt.Errorf("read freezer state of %s: %w", m.path, err)
	}
	if f {
		return Frozen, nil
	}
	return Freezing, nil
}

func (m *v2Manager) Pids() ([]int, error) {
	pids, err := readPidsTree(m.dir)
	if err != nil {
		return nil, fmt.Errorf("list processes of %s: %w", m.path, err)
	}
	return pids, nil
}

func (m *v2Manager) OOMKills() (uint64, error) {
	r := statReader{}
	n := r.kv(m.dir + "/memory.events")["oom_kill"]
	if r.err != nil {
		return 0, fmt.Errorf("oom kills of %s: %w", m.path, r.err)
	}
	return n, nil
}

func (m *v2Manager) Stats() (*Stats, error) {
	var st Stats
	r := statReader{}
	d := m.dir
	kv := r.kv(d + "/cpu.stat")
	st.CPU.UsageNanos = kv["usage_usec"] * 1000
	st.CPU.UserNanos = kv["user_usec"] * 1000
	st.CPU.SystemNanos = kv["system_usec"] * 1000
	st.CPU.Periods = kv["nr_periods"]
	st.CPU.ThrottledPeriods = kv["nr_throttled"]
	st.CPU.ThrottledNanos = kv["throttled_usec"] * 1000
	if _, err := os.Stat(d + "/memory.current"); err == nil {
		st.Memory.Usage = r.uint(d + "/memory.current")
		st.Memory.MaxUsage = r.uint(d + "/memory.peak")
		st.Memory.Limit = r.uint(d + "/memory.max")
		st.Memory.SwapUsage = r.uint(d + "/memory.swap.current")
		st.Memory.SwapLimit = r.uint(d + "/memory.swap.max")
		ms := r.kv(d + "/memory.stat")
		st.Memory.Cache = ms["file"]
		st.Memory.RSS = ms["anon"]
		ev := r.kv(d + "/memory.events")
		st.Memory.Failcnt = ev["max"]
		st.Memory.OOMKills = ev["oom_kill"]
	}
	if _, err := os.Stat(d + "/pids.current"); err == nil {
		st.Pids.Current = r.uint(d + "/pids.current")
		st.Pids.Limit = r.uint(d + "/pids.max")
	}
	if s, ok := r.read(d + "/io.stat"); ok {
		st.IO = parseIOStatV2(s)
	}
	if r.err != nil {
		return nil, fmt.Errorf("stats of %s: %w", m.path, r.err)
	}
	return &st, nil
}

func (m *v2Manager) Destroy() error {
	if err := removeTree(m.dir); err != nil {
		return fmt.Errorf("destroy cgroup %s: %w", m.path, err)
	}
	removeMade(m.made)
	m.made = nil
	return nil
}
