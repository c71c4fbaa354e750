package runtime

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FieldError names the part of config.json that is wrong.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return "config.json: " + e.Field + ": " + e.Msg }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// knownNamespace reports the namespace types this runtime creates or joins.
// "time" is refused for now: its offsets must be written before the first
// process runs, which the init does not do yet.
func knownNamespace(t specs.LinuxNamespaceType) bool {
	switch t {
	case specs.PIDNamespace, specs.NetworkNamespace, specs.MountNamespace, specs.IPCNamespace,
		specs.UTSNamespace, specs.UserNamespace, specs.CgroupNamespace:
		return true
	}
	return false
}

// Validate checks a container's config.json before anything is created, so a
// bad spec costs nothing and names the field at fault. It is pure: the
// cgroup values and the seccomp profile are checked by their own packages.
func Validate(s *specs.Spec) error {
	if s == nil {
		return fieldErr("(root)", "empty configuration")
	}
	if !strings.HasPrefix(s.Version, "1.") {
		return fieldErr("ociVersion", "%q is not a 1.x runtime-spec version", s.Version)
	}
	if s.Root == nil || s.Root.Path == "" {
		return fieldErr("root.path", "missing: the container needs a root filesystem")
	}
	if s.Process == nil {
		return fieldErr("process", "missing: create needs a process to run")
	}
	if err := validateProcess(s.Process, "process"); err != nil {
		return err
	}
	if s.Linux == nil {
		return fieldErr("linux", "missing: this runtime runs Linux containers")
	}
	ns, err := validateNamespaces(s.Linux.Namespaces)
	if err != nil {
		return err
	}
	has := func(t specs.LinuxNamespaceType) bool { _, ok := ns[t]; return ok }
	if len(s.Linux.UIDMappings) > 0 || len(s.Linux.GIDMappings) > 0 {
		if !has(specs.UserNamespace) {
			return fieldErr("linux.uidMappings", "mappings are set but linux.namespaces has no user namespace")
		}
	}
	if p, ok := ns[specs.UserNamespace]; ok && p == "" {
		if len(s.Linux.UIDMappings) == 0 || len(s.Linux.GIDMappings) == 0 {
			return fieldErr("linux.uidMappings", "a new user namespace needs both uidMappings and gidMappings")
		}
	}
	for i, m := range s.Linux.UIDMappings {
		if m.Size == 0 {
			return fieldErr(fmt.Sprintf("linux.uidMappings[%d].size", i), "must be at least 1")
		}
	}
	for i, m := range s.Linux.GIDMappings {
		if m.Size == 0 {
			return fieldErr(fmt.Sprintf("linux.gidMappings[%d].size", i), "must be at least 1")
		}
	}
	if s.Hostname != "" && !has(specs.UTSNamespace) {
		return fieldErr("hostname", "setting the hostname needs a uts namespace, or it would change the host's")
	}
	if s.Domainname != "" && !has(specs.UTSNamespace) {
		return fieldErr("domainname", "setting the domainname needs a uts namespace")
	}
	if !has(specs.MountNamespace) {
		return fieldErr("linux.namespaces", "a mount namespace is required: without one the container's mounts would land on the host")
	}
	for i, m := range s.Mounts {
		f := fmt.Sprintf("mounts[%d]", i)
		if m.Destination == "" {
			return fieldErr(f+".destination", "missing")
		}
		if strings.Contains(m.Destination, "\x00") {
			return fieldErr(f+".destination", "contains a NUL byte")
		}
		if m.Type == "bind" || hasOption(m.Options, "bind") || hasOption(m.Options, "rbind") {
			if m.Source == "" {
				return fieldErr(f+".source", "a bind mount needs a source")
			}
		}
	}
	for k := range s.Linux.Sysctl {
		if err := sysctlAllowed(k, has); err != nil {
			return fieldErr("linux.sysctl."+k, "%v", err)
		}
	}
	for i, d := range s.Linux.Devices {
		f := fmt.Sprintf("linux.devices[%d]", i)
		if !path.IsAbs(d.Path) {
			return fieldErr(f+".path", "%q is not absolute", d.Path)
		}
		switch d.Type {
		case "c", "b", "u", "p":
		default:
			return fieldErr(f+".type", "%q is not one of c, b, u, p", d.Type)
		}
	}
	for i, p := range s.Linux.MaskedPaths {
		if !path.IsAbs(p) {
			return fieldErr(fmt.Sprintf("linux.maskedPaths[%d]", i), "%q is not absolute", p)
		}
	}
	for i, p := range s.Linux.ReadonlyPaths {
		if !path.IsAbs(p) {
			return fieldErr(fmt.Sprintf("linux.readonlyPaths[%d]", i), "%q is not absolute", p)
		}
	}
	switch s.Linux.RootfsPropagation {
	case "", "shared", "slave", "private", "unbindable", "rshared", "rslave", "rprivate", "runbindable":
	default:
		return fieldErr("linux.rootfsPropagation", "%q is not a propagation mode", s.Linux.RootfsPropagation)
	}
	if s.Linux.Personality != nil {
		switch s.Linux.Personality.Domain {
		case specs.PerLinux, specs.PerLinux32:
		default:
			return fieldErr("linux.personality.domain", "%q is not LINUX or LINUX32", s.Linux.Personality.Domain)
		}
	}
	if s.Hooks != nil {
		for name, hs := range map[string][]specs.Hook{
			"prestart": s.Hooks.Prestart, "createRuntime": s.Hooks.CreateRuntime,
			"createContainer": s.Hooks.CreateContainer, "startContainer": s.Hooks.StartContainer,
			"poststart": s.Hooks.Poststart, "poststop": s.Hooks.Poststop,
		} {
			for i, h := range hs {
				if !path.IsAbs(h.Path) {
					return fieldErr(fmt.Sprintf("hooks.%s[%d].path", name, i), "%q is not absolute", h.Path)
				}
				if h.Timeout != nil && *h.Timeout <= 0 {
					return fieldErr(fmt.Sprintf("hooks.%s[%d].timeout", name, i), "must be positive")
				}
			}
		}
	}
	return nil
}

// validateProcess checks a process as config.json or `exec --process` gives it.
func validateProcess(p *specs.Process, field string) error {
	if len(p.Args) == 0 || p.Args[0] == "" {
		return fieldErr(field+".args", "missing: nothing to run")
	}
	if p.Cwd == "" || !path.IsAbs(p.Cwd) {
		return fieldErr(field+".cwd", "%q is not an absolute path", p.Cwd)
	}
	for i, e := range p.Env {
		if !strings.Contains(e, "=") {
			return fieldErr(fmt.Sprintf("%s.env[%d]", field, i), "%q is not KEY=value", e)
		}
	}
	for i, r := range p.Rlimits {
		f := fmt.Sprintf("%s.rlimits[%d]", field, i)
		if !knownRlimit(r.Type) {
			return fieldErr(f+".type", "unknown rlimit %q", r.Type)
		}
		if r.Soft > r.Hard {
			return fieldErr(f+".soft", "%d is above hard %d", r.Soft, r.Hard)
		}
	}
	if p.OOMScoreAdj != nil && (*p.OOMScoreAdj < -1000 || *p.OOMScoreAdj > 1000) {
		return fieldErr(field+".oomScoreAdj", "%d is outside -1000..1000", *p.OOMScoreAdj)
	}
	if p.Capabilities != nil {
		sets := map[string][]string{
			"bounding": p.Capabilities.Bounding, "effective": p.Capabilities.Effective,
			"inheritable": p.Capabilities.Inheritable, "permitted": p.Capabilities.Permitted,
			"ambient": p.Capabilities.Ambient,
		}
		for set, names := range sets {
			for i, n := range names {
				if _, ok := capabilityByName(n); !ok {
					return fieldErr(fmt.Sprintf("%s.capabilities.%s[%d]", field, set, i), "unknown capability %q", n)
				}
			}
		}
	}
	if p.ConsoleSize != nil && p.Terminal && (p.ConsoleSize.Height == 0 || p.ConsoleSize.Width == 0) {
		return fieldErr(field+".consoleSize", "height and width must be positive")
	}
	return nil
}

// validateNamespaces returns the namespaces by type, with the path to join
// ("" for a new one).
func validateNamespaces(list []specs.LinuxNamespace) (map[specs.LinuxNamespaceType]string, error) {
	ns := make(map[specs.LinuxNamespaceType]string, len(list))
	for i, n := range list {
		f := fmt.Sprintf("linux.namespaces[%d]", i)
		if !knownNamespace(n.Type) {
			return nil, fieldErr(f+".type", "unknown namespace type %q", n.Type)
		}
		if _, dup := ns[n.Type]; dup {
			return nil, fieldErr(f+".type", "namespace %q is listed twice", n.Type)
		}
		if n.Path != "" && !path.IsAbs(n.Path) {
			return nil, fieldErr(f+".path", "%q is not absolute", n.Path)
		}
		ns[n.Type] = n.Path
	}
	return ns, nil
}

// sysctlAllowed accepts only sysctls that are namespaced by a namespace the
// container has; anything else would change the host.
func sysctlAllowed(key string, has func(specs.LinuxNamespaceType) bool) error {
	switch {
	case strings.HasPrefix(key, "net."):
		if !has(specs.NetworkNamespace) {
			return fmt.Errorf("net.* sysctls need a network namespace")
		}
	case key == "kernel.msgmax", key == "kernel.msgmnb", key == "kernel.msgmni", key == "kernel.sem",
		key == "kernel.shmall", key == "kernel.shmmax", key == "kernel.shmmni", key == "kernel.shm_rmid_forced",
		strings.HasPrefix(key, "fs.mqueue."):
		if !has(specs.IPCNamespace) {
			return fmt.Errorf("IPC sysctls need an ipc namespace")
		}
	case key == "kernel.hostname", key == "kernel.domainname":
		if !has(specs.UTSNamespace) {
			return fmt.Errorf("UTS sysctls need a uts namespace")
		}
	default:
		return fmt.Errorf("not a namespaced sysctl: setting it would change the host")
	}
	return nil
}

func hasOption(opts []string, o string) bool {
	for _, v := range opts {
		if v == o {
			return true
		}
	}
	return false
}

func knownRlimit(t string) bool {
	_, ok := rlimitResource(t)
	return ok
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
