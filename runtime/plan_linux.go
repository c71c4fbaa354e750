package runtime

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/runtime/cgroups"
	_ "github.com/berth-dev/berth/runtime/fastinit" // runs the plan in the init
	"github.com/berth-dev/berth/runtime/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// roleFastInit starts the child as the C init of package fastinit, which
// runs a plan instead of decoding the spec: the Go runtime's start-up is
// most of what the Go init costs, and the plan needs none of it.
const roleFastInit = "plan"

// chooseInit picks the init for a container, the C one (a plan) when
// the spec allows and the Go one (the config as JSON) otherwise, and
// returns its role and what it reads from the config pipe.
func (r *Native) chooseInit(cfg *initConfig, spec *specs.Spec, childJoins int) (string, []byte, error) {
	if !r.GoInit {
		var prog *seccomp.Program
		if len(cfg.Seccomp) > 0 {
			l, err := newSeccompLoader(cfg.Seccomp)
			if err != nil {
				return "", nil, err
			}
			prog = &l.p
		}
		hier, err := r.hierarchy()
		if err != nil {
			return "", nil, err
		}
		_, kerr := os.Stat("/proc/kcore")
		host := planHost{cgroups: planCgroups(hier), lastCap: lastCap(), kcore: kerr == nil, isFile: func(p string) (bool, error) {
			fi, err := os.Stat(p)
			if err != nil {
				return false, err
			}
			return !fi.IsDir(), nil
		}}
		if plan, ok := fastInitPlan(cfg, spec, prog, childJoins, host); ok {
			return roleFastInit, plan, nil
		}
	}
	b, err := json.Marshal(cfg)
	return "init", b, err
}

// planHost is what the plan needs to know about the host, read by the
// parent so that the plan itself is a pure function of the spec.
type planHost struct {
	// cgroups are the hierarchies under /sys/fs/cgroup.
	cgroups []planCgroup
	lastCap int
	kcore   bool // /proc/kcore exists
	// isFile reports whether a bind mount's source is a file (not a
	// directory); an error leaves the container to the Go init, which
	// reports it.
	isFile func(string) (bool, error)
}

type planCgroup struct{ name, fstype, options string }

// planCgroups lists the hierarchies a container's cgroup mount shows, from
// the runtime's cached view of the host (the Go init reads mountinfo).
func planCgroups(h cgroups.Hierarchy) []planCgroup {
	byMount := map[string][]string{}
	for ctrl, mnt := range h.V1 {
		if strings.HasPrefix(mnt, "/sys/fs/cgroup") {
			byMount[mnt] = append(byMount[mnt], ctrl)
		}
	}
	var out []planCgroup
	for mnt, ctrls := range byMount {
		sort.Strings(ctrls)
		out = append(out, planCgroup{name: filepath.Base(mnt), fstype: "cgroup", options: strings.Join(ctrls, ",")})
	}
	if h.Unified != "" && strings.HasPrefix(h.Unified, "/sys/fs/cgroup") {
		out = append(out, planCgroup{name: filepath.Base(h.Unified), fstype: "cgroup2"})
	}
	sort.Slice(out, func(i, k int) bool { return out[i].name < out[k].name })
	return out
}

// planWriter encodes steps as fastinit.c reads them: per step a u32 field
// count, then per field a u32 length, the bytes and a NUL.
type planWriter struct{ b []byte }

func (w *planWriter) step(fields ...string) {
	w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(fields)))
	for _, f := range fields {
		w.b = binary.LittleEndian.AppendUint32(w.b, uint32(len(f)))
		w.b = append(w.b, f...)
		w.b = append(w.b, 0)
	}
}

func itoa[T ~int | ~int64 | ~uint32 | ~uint64 | ~uintptr](v T) string {
	return strconv.FormatInt(int64(v), 10)
}

// fastInitPlan turns a container's set-up into the C init's plan: the same
// steps the Go init takes (initContainer, setupRootfs, finishRootfs,
// finalize), in the same order, with every decision made here. It returns
// ok=false for a spec that needs what only the Go init does: hooks that run
// inside the container, a console, preserved fds, a seccomp listener,
// --no-pivot, joining a user or mount namespace by path, a personality, or
// a cgroup mount without a cgroup namespace of its own.
func fastInitPlan(cfg *initConfig, spec *specs.Spec, prog *seccomp.Program, childJoins int, host planHost) (_ []byte, ok bool) {
	if cfg.Console || cfg.PreserveFDs > 0 || cfg.NoPivot || childJoins > 0 ||
		spec.Linux == nil || spec.Linux.Personality != nil || spec.Process == nil || len(spec.Process.Args) == 0 {
		return nil, false
	}
	if h := spec.Hooks; h != nil && len(h.Prestart)+len(h.CreateRuntime)+len(h.CreateContainer)+len(h.StartContainer) > 0 {
		return nil, false
	}
	if prog != nil && prog.NeedsNotifyFd() {
		return nil, false
	}
	ns := mustNS(spec)
	w := &planWriter{}
	// The network and IPC namespaces, the costly ones, are made while the
	// parent writes the user namespace's id maps (see step_userns).
	early := cfg.Unshare & (unix.CLONE_NEWNET | unix.CLONE_NEWIPC)
	if cfg.Unshare != 0 {
		// Namespaces made here rather than by clone (see initConfig):
		// the user namespace first, so that it owns the others. It needs
		// no cgroup: it is made while the parent places this process.
		if early != 0 {
			w.step("userns", "unshare user namespace", itoa(early))
		} else {
			w.step("userns", "unshare user namespace")
		}
		w.step("setresgid", "user namespace root", itoa(cfg.RootGID))
		w.step("setresuid", "user namespace root", itoa(cfg.RootUID))
	}
	w.step("cgroup-ready", "")
	if cfg.Unshare != 0 {
		rest := cfg.Unshare &^ (unix.CLONE_NEWUSER | early)
		if cfg.NewCgroupNS {
			rest |= unix.CLONE_NEWCGROUP
		}
		if rest != 0 {
			w.step("unshare", "unshare namespaces", itoa(rest))
		}
		if rest&unix.CLONE_NEWPID != 0 {
			w.step("fork", "enter pid namespace")
		}
	} else if cfg.NewCgroupNS {
		w.step("unshare", "unshare cgroup namespace", itoa(unix.CLONE_NEWCGROUP))
	}
	if p, ok := ns[specs.NetworkNamespace]; ok && p == "" {
		// A new network namespace gets its loopback up, as runc gives it.
		w.step("lo-up", "linux.namespaces: network")
	}
	if p, ok := ns[specs.UTSNamespace]; ok && p == "" {
		if spec.Hostname != "" {
			w.step("hostname", "hostname", spec.Hostname)
		}
		if spec.Domainname != "" {
			w.step("domainname", "domainname", spec.Domainname)
		}
	}
	w.step("setsid", "")
	if !planRootfs(w, cfg, spec, ns, host) {
		return nil, false
	}
	keys := make([]string, 0, len(spec.Linux.Sysctl))
	for k := range spec.Linux.Sysctl {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w.step("write", "config.json: linux.sysctl."+k, "/proc/sys/"+strings.ReplaceAll(k, ".", "/"), spec.Linux.Sysctl[k])
	}
	p := spec.Process
	if p.OOMScoreAdj != nil {
		w.step("write", "config.json: process.oomScoreAdj", "/proc/self/oom_score_adj", strconv.Itoa(*p.OOMScoreAdj))
	}
	for i, rp := range spec.Linux.ReadonlyPaths {
		w.step("readonly", fmt.Sprintf("config.json: linux.readonlyPaths[%d]", i), rp)
	}
	for i, mp := range spec.Linux.MaskedPaths {
		w.step("mask", fmt.Sprintf("config.json: linux.maskedPaths[%d]", i), mp)
	}
	if spec.Root != nil && spec.Root.Readonly {
		w.step("remount-root", "config.json: root.readonly")
	}
	execStep := append([]string{"exec", "config.json: process.args[0]", searchPath(p.Env), itoa(len(p.Args))}, p.Args...)
	execStep = append(execStep, p.Env...)
	check := append([]string{"check-exec"}, execStep[1:]...)
	w.step(check...)
	w.step("ready", "")
	if !cfg.StartNow {
		w.step("start-wait", "")
	}
	w.step("close-sync", "")
	for _, rl := range p.Rlimits {
		res, ok := rlimitResource(rl.Type)
		if !ok {
			return nil, false
		}
		w.step("rlimit", "config.json: process.rlimits: "+rl.Type, itoa(res), strconv.FormatUint(rl.Soft, 10), strconv.FormatUint(rl.Hard, 10))
	}
	umask := uint32(0o022)
	if p.User.Umask != nil {
		umask = *p.User.Umask
	}
	w.step("umask", "", itoa(umask))
	w.step("cloexec", "")
	w.step("chdir", "config.json: process.cwd", p.Cwd)
	var filter []string
	if prog != nil && len(prog.Instructions) > 0 {
		raw := make([]byte, 0, 8*len(prog.Instructions))
		for _, in := range prog.Instructions {
			raw = binary.NativeEndian.AppendUint16(raw, in.Code)
			raw = append(raw, in.Jt, in.Jf)
			raw = binary.NativeEndian.AppendUint32(raw, in.K)
		}
		filter = []string{"seccomp", "", itoa(prog.Flags), string(raw)}
	}
	// Without no_new_privs a filter can only be loaded with CAP_SYS_ADMIN,
	// so it goes in before the capabilities are dropped.
	if filter != nil && !p.NoNewPrivileges {
		w.step(filter...)
	}
	if !planCredentials(w, p, host.lastCap) {
		return nil, false
	}
	if p.NoNewPrivileges {
		w.step("no-new-privs", "")
		if filter != nil {
			w.step(filter...)
		}
	}
	w.step(execStep...)
	return w.b, true
}

// searchPath is the PATH the process's program is looked up in.
func searchPath(env []string) string {
	p := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			p = e[5:]
		}
	}
	return p
}

// planRootfs is setupRootfs as steps.
func planRootfs(w *planWriter, cfg *initConfig, spec *specs.Spec, ns map[specs.LinuxNamespaceType]string, host planHost) bool {
	prop := unix.MS_SLAVE | unix.MS_REC
	if spec.Linux.RootfsPropagation != "" {
		prop = propagationFlag(spec.Linux.RootfsPropagation)
	}
	w.step("host-mount", "make / a slave mount", "", "/", "", itoa(unix.MS_SLAVE|unix.MS_REC), "")
	if prop&unix.MS_PRIVATE != 0 {
		w.step("host-mount", "config.json: linux.rootfsPropagation", "", "/", "", itoa(prop), "")
	}
	w.step("host-mount", "config.json: root.path: bind "+cfg.Rootfs+" onto itself", cfg.Rootfs, cfg.Rootfs, "", itoa(unix.MS_BIND|unix.MS_REC), "")
	w.step("root", "config.json: root.path", cfg.Rootfs)
	userns := hasNS(ns, specs.UserNamespace)
	ownNetNS := hasNS(ns, specs.NetworkNamespace) && ns[specs.NetworkNamespace] == ""
	devIsTmpfs := false
	for i, m := range spec.Mounts {
		ctx := fmt.Sprintf("config.json: mounts[%d]: %s on %s", i, m.Type, m.Destination)
		mo := parseMountOptions(m.Options)
		isBind := m.Type == "bind" || mo.flags&unix.MS_BIND != 0
		if isBind {
			mo.flags |= unix.MS_BIND
		}
		switch {
		case m.Type == "cgroup" || m.Type == "cgroup2":
			if !cfg.NewCgroupNS {
				return false
			}
			flags := mo.flags &^ (unix.MS_BIND | unix.MS_REC | unix.MS_REMOUNT)
			st := []string{"cgroup", ctx, m.Destination, itoa(flags)}
			for _, h := range host.cgroups {
				st = append(st, h.name, h.fstype, h.options)
			}
			w.step(st...)
		case isBind:
			file, err := host.isFile(m.Source)
			if err != nil {
				return false
			}
			rest := mo.flags &^ (unix.MS_BIND | unix.MS_REC | unix.MS_REMOUNT)
			remount := "0"
			if rest != 0 || mo.recursiveRO {
				remount = "1"
			}
			w.step(append([]string{"mount", ctx, m.Destination, m.Source, "", itoa(mo.flags), "", "1", boolNum(file), remount, itoa(rest), ""}, propagations(mo)...)...)
		default:
			fallback, rflags := "", 0
			if m.Type == "sysfs" && !ownNetNS {
				fallback, rflags = "/sys", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC
			} else if m.Type == "mqueue" {
				fallback, rflags = "/dev/mqueue", mo.flags
			}
			w.step(append([]string{"mount", ctx, m.Destination, m.Source, m.Type, itoa(mo.flags), strings.Join(mo.data, ","), "0", "0", "0", itoa(rflags), fallback}, propagations(mo)...)...)
		}
		if path.Clean(m.Destination) == "/dev" && m.Type != "bind" && !hasOption(m.Options, "bind") && !hasOption(m.Options, "rbind") {
			devIsTmpfs = true
		}
	}
	if devIsTmpfs {
		planDev(w, spec, userns, host.kcore)
	}
	w.step("pivot", "", cfg.Rootfs)
	if spec.Linux.RootfsPropagation != "" && prop&unix.MS_PRIVATE == 0 {
		w.step("host-mount", "config.json: linux.rootfsPropagation", "", "/", "", itoa(prop), "")
	}
	return true
}

func boolNum(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func propagations(mo mountOptions) []string {
	out := make([]string, len(mo.propagation))
	for i, p := range mo.propagation {
		out[i] = itoa(p)
	}
	return out
}

// planDev is setupDev as steps.
func planDev(w *planWriter, spec *specs.Spec, userns, kcore bool) {
	w.step("umask", "", "0")
	seen := map[string]bool{}
	for _, d := range spec.Linux.Devices {
		seen[path.Clean(d.Path)] = true
	}
	var all []specs.LinuxDevice
	for _, d := range defaultDevices() {
		if !seen[d.Path] {
			all = append(all, d)
		}
	}
	all = append(all, spec.Linux.Devices...)
	for i, d := range all {
		mode := uint32(0o666)
		if d.FileMode != nil {
			mode = uint32(*d.FileMode & 0o7777)
		}
		switch d.Type {
		case "c", "u":
			mode |= unix.S_IFCHR
		case "b":
			mode |= unix.S_IFBLK
		case "p":
			mode |= unix.S_IFIFO
		}
		var uid, gid uint32
		if d.UID != nil {
			uid = *d.UID
		}
		if d.GID != nil {
			gid = *d.GID
		}
		w.step("device", fmt.Sprintf("config.json: linux.devices[%d]: %s", i, d.Path), path.Dir(d.Path), path.Base(d.Path),
			itoa(mode), itoa(d.Major), itoa(d.Minor), itoa(uid), itoa(gid), d.Path, boolNum(userns))
	}
	links := [][2]string{
		{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
		{"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
	}
	if kcore {
		links = append(links, [2]string{"/proc/kcore", "core"})
	}
	if hasDevpts(spec) {
		links = append(links, [2]string{"pts/ptmx", "ptmx"})
	}
	for _, l := range links {
		w.step("symlink", "", "/dev", l[0], l[1])
	}
}

// planCredentials is setCredentials as steps.
func planCredentials(w *planWriter, p *specs.Process, lastCap int) bool {
	caps := p.Capabilities
	if caps == nil {
		caps = &specs.LinuxCapabilities{}
	}
	mask := func(names []string) (uint64, bool) {
		var m uint64
		for _, n := range names {
			c, ok := capabilityByName(n)
			if !ok || c > 63 {
				return 0, false
			}
			m |= 1 << uint(c)
		}
		return m, true
	}
	bounding, ok1 := mask(caps.Bounding)
	eff, ok2 := mask(caps.Effective)
	perm, ok3 := mask(caps.Permitted)
	inh, ok4 := mask(caps.Inheritable)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return false
	}
	w.step("capbset", "", itoa(lastCap), strconv.FormatUint(bounding, 10))
	w.step("keepcaps", "")
	groups := []string{"setgroups", "config.json: process.user.additionalGids"}
	for _, g := range p.User.AdditionalGids {
		groups = append(groups, itoa(g))
	}
	w.step(groups...)
	w.step("setresgid", "config.json: process.user.gid", itoa(p.User.GID))
	w.step("setresuid", "config.json: process.user.uid", itoa(p.User.UID))
	w.step("capset", "", strconv.FormatUint(eff, 10), strconv.FormatUint(perm, 10), strconv.FormatUint(inh, 10))
	w.step("ambient-clear", "")
	for _, n := range caps.Ambient {
		c, ok := capabilityByName(n)
		if !ok {
			return false
		}
		w.step("ambient", "config.json: process.capabilities.ambient", itoa(int(c)), n)
	}
	return true
}
