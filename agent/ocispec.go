package agent

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/runtime"
	"github.com/berth-dev/berth/runtime/seccomp"
	"github.com/moby/sys/capability"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Paths inside every container with an init: berth-init itself and the
// log directory it opens and then unmounts. /dev is a fresh tmpfs, so the
// mount points leave no trace in the container's filesystem.
const (
	initInContainer   = "/dev/.berth-init"
	logDirInContainer = "/dev/.berth-log"
)

// Annotations the agent puts on every container it makes.
const (
	annotationRoot = "io.berth.agent.root"
	annotationName = "io.berth.name"
)

// BundleInput is everything the OCI spec of a container is made from.
type BundleInput struct {
	ID   string
	Spec ContainerSpec
	// Process is the image's process for this container (command, env,
	// cwd, user resolved against the image's /etc/passwd), before the
	// ContainerSpec's env is applied.
	Process specs.Process
	Rootfs  string
	IDs     IDRange
	// InitPath and LogDir are host paths: berth-init and the directory
	// it writes logs and the exit code to.
	InitPath, LogDir string
	CgroupsPath      string
	// Mounts are the ContainerSpec's mounts resolved to host sources.
	Mounts []specs.Mount
	// AgentRoot marks the container as this agent's, for reconciliation.
	AgentRoot string
}

// Generate makes the OCI runtime spec of a container. It is a pure
// function of its input.
func Generate(in BundleInput) (*specs.Spec, error) {
	cs := in.Spec
	if in.IDs.Size == 0 {
		return nil, fmt.Errorf("container %s: no id range for its user namespace", in.ID)
	}
	user := in.Process.User
	if user.UID >= in.IDs.Size || user.GID >= in.IDs.Size {
		return nil, fmt.Errorf("user %d:%d: outside the container's %d mapped ids", user.UID, user.GID, in.IDs.Size)
	}
	caps, err := Capabilities(cs.CapAdd, cs.CapDrop)
	if err != nil {
		return nil, err
	}
	s := runtime.DefaultSpec()
	s.Root = &specs.Root{Path: in.Rootfs, Readonly: cs.ReadOnly}
	s.Hostname = in.ID
	if len(s.Hostname) > 12 {
		s.Hostname = s.Hostname[:12]
	}
	s.Annotations = map[string]string{annotationRoot: in.AgentRoot}
	if cs.Name != "" {
		s.Annotations[annotationName] = cs.Name
	}
	for k, v := range cs.Labels {
		s.Annotations[k] = v
	}

	p := s.Process
	p.Terminal = false
	p.Env = MergeEnv(in.Process.Env, cs.Env)
	p.Cwd = in.Process.Cwd
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	// Limits are the agent's own, as a Docker container inherits dockerd's:
	// a fixed number could exceed the host's hard limit.
	p.Rlimits = nil
	p.NoNewPrivileges = true
	argv := in.Process.Args
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %s: no command to run", in.ID)
	}
	workloadCaps := caps
	if user.UID != 0 {
		// A non-root user starts with no capabilities, only the bound.
		workloadCaps = nil
	}
	if cs.NoInit {
		p.Args = argv
		p.User = user
		p.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: workloadCaps, Permitted: workloadCaps}
	} else {
		lc := cs.Log.withDefaults()
		args := []string{initInContainer, "-l", logDirInContainer,
			"-s", strconv.FormatInt(lc.MaxSize, 10), "-n", strconv.Itoa(lc.MaxFiles)}
		if cs.TTY {
			args = append(args, "-t")
		}
		if cs.Stdin {
			args = append(args, "-i")
		}
		initCaps := caps
		if user.UID != 0 {
			// berth-init switches to the user itself (it must stay root to
			// write the logs), which needs CAP_SETUID and CAP_SETGID even
			// when the workload's bound lacks them; it drops from the bound
			// what it alone needed before exec.
			var extra []string
			for _, c := range []string{"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP"} {
				if !slices.Contains(caps, c) {
					extra = append(extra, c)
				}
			}
			initCaps = append(append([]string(nil), caps...), extra...)
			args = append(args, "-u", strconv.FormatUint(uint64(user.UID), 10), "-g", strconv.FormatUint(uint64(user.GID), 10),
				"-G", joinUints(user.AdditionalGids))
			if len(extra) > 0 {
				var nums []string
				for _, c := range extra {
					n, _ := capName(c)
					nums = append(nums, strconv.Itoa(int(capNumber(n))))
				}
				args = append(args, "-D", strings.Join(nums, ","))
			}
			p.User = specs.User{UID: 0, GID: 0}
		} else {
			p.User = user
		}
		p.Args = append(append(args, "--"), argv...)
		p.Capabilities = &specs.LinuxCapabilities{Bounding: initCaps, Effective: initCaps, Permitted: initCaps}
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: initInContainer, Type: "bind", Source: in.InitPath, Options: []string{"bind", "ro", "nosuid", "nodev"}},
			specs.Mount{Destination: logDirInContainer, Type: "bind", Source: in.LogDir, Options: []string{"bind", "rw", "nosuid", "nodev", "noexec"}},
		)
	}
	s.Mounts = append(s.Mounts, in.Mounts...)

	l := s.Linux
	l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	l.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: in.IDs.Base, Size: in.IDs.Size}}
	l.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: in.IDs.Base, Size: in.IDs.Size}}
	l.CgroupsPath = in.CgroupsPath
	l.Seccomp = seccomp.DefaultProfile()
	l.MaskedPaths = runtime.DefaultMaskedPaths()
	l.ReadonlyPaths = runtime.DefaultReadonlyPaths()
	if cs.Memory > 0 {
		lim := cs.Memory
		swap := cs.Memory // memory+swap equal to memory: no swap
		l.Resources.Memory = &specs.LinuxMemory{Limit: &lim, Swap: &swap}
	}
	if cs.CPUs > 0 {
		period := uint64(100000)
		quota := int64(cs.CPUs * float64(period))
		l.Resources.CPU = &specs.LinuxCPU{Period: &period, Quota: &quota}
	}
	if cs.PidsLimit > 0 {
		pl := cs.PidsLimit
		l.Resources.Pids = &specs.LinuxPids{Limit: &pl}
	}
	return s, nil
}

// WorkloadProcess is the process an exec into the container starts as:
// the workload's user, environment and capabilities (caps, as Capabilities
// computes them: not the bundle's, which may hold what only berth-init
// needed to switch users).
func WorkloadProcess(spec *specs.Spec, caps []string, user specs.User, args, env []string, cwd string) specs.Process {
	eff := caps
	if user.UID != 0 {
		eff = nil
	}
	if cwd == "" {
		cwd = spec.Process.Cwd
	}
	return specs.Process{
		Args: args, Env: MergeEnv(spec.Process.Env, env), Cwd: cwd, User: user,
		Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: eff, Permitted: eff},
		NoNewPrivileges: true,
		Rlimits:         spec.Process.Rlimits,
	}
}

func joinUints(v []uint32) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.FormatUint(uint64(n), 10)
	}
	return strings.Join(s, ",")
}

// MergeEnv is base with every NAME=value of over replacing base's NAME.
func MergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, e := range over {
		k, _, _ := strings.Cut(e, "=")
		i := slices.IndexFunc(out, func(b string) bool { bk, _, _ := strings.Cut(b, "="); return bk == k })
		if i >= 0 {
			out[i] = e
		} else {
			out = append(out, e)
		}
	}
	return out
}

// Capabilities is Docker's default set with add and drop applied ("ALL"
// in either means every capability), as sorted CAP_ names.
func Capabilities(add, drop []string) ([]string, error) {
	set := map[string]bool{}
	for _, c := range runtime.DefaultCapabilities() {
		set[c] = true
	}
	apply := func(list []string, on bool) error {
		for _, c := range list {
			if strings.EqualFold(c, "ALL") {
				for _, k := range capability.ListKnown() {
					set["CAP_"+strings.ToUpper(k.String())] = on
				}
				continue
			}
			n, err := capName(c)
			if err != nil {
				return err
			}
			set[n] = on
		}
		return nil
	}
	// Docker applies drop after add, except that an explicit add survives
	// drop ALL.
	if err := apply(drop, false); err != nil {
		return nil, err
	}
	if err := apply(add, true); err != nil {
		return nil, err
	}
	var out []string
	for c, on := range set {
		if on {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out, nil
}

// capName normalises "net_admin" or "CAP_NET_ADMIN" to "CAP_NET_ADMIN".
func capName(c string) (string, error) {
	if strings.EqualFold(c, "ALL") {
		return "ALL", nil
	}
	n := "CAP_" + strings.TrimPrefix(strings.ToUpper(c), "CAP_")
	if capNumber(n) < 0 {
		return "", fmt.Errorf("capability %q: unknown", c)
	}
	return n, nil
}

func capNumber(n string) int {
	for _, k := range capability.ListKnown() {
		if "CAP_"+strings.ToUpper(k.String()) == n {
			return int(k)
		}
	}
	return -1
}
