package runtime

import (
	"encoding/json"
	"path/filepath"

	"github.com/berth-dev/berth/internal/rewrite"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// DefaultCapabilities is Docker's default capability set, which Berth
// gives every container unless told otherwise.
func DefaultCapabilities() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
		"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
}

// DefaultMaskedPaths and DefaultReadonlyPaths hide and freeze the parts of
// /proc and /sys that reveal or change the host.
func DefaultMaskedPaths() []string {
	return []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
}

func DefaultReadonlyPaths() []string {
	return []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
}

// DefaultSpec is what `berth-runtime spec` writes: runc's template with
// Docker's capability set and all namespaces.
func DefaultSpec() *specs.Spec {
	caps := DefaultCapabilities()
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs", Readonly: true},
		Process: &specs.Process{
			Terminal: true,
			User:     specs.User{UID: 0, GID: 0},
			Args:     []string{"sh"},
			Env:      []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
			Cwd:      "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Hostname: "berth",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			MaskedPaths:   DefaultMaskedPaths(),
			ReadonlyPaths: DefaultReadonlyPaths(),
		},
	}
}

// Spec returns the configuration a container was created with.
func (r *Native) Spec(id string) (*specs.Spec, error) {
	_, spec, err := r.load(id)
	return spec, err
}

// FeaturesInfo is the `features` output: what this runtime supports, in
// the shape of the runtime-spec's features document.
type FeaturesInfo struct {
	OCIVersionMin string   `json:"ociVersionMin"`
	OCIVersionMax string   `json:"ociVersionMax"`
	Hooks         []string `json:"hooks"`
	MountOptions  []string `json:"mountOptions"`
	Linux         struct {
		Namespaces   []string `json:"namespaces"`
		Capabilities []string `json:"capabilities"`
		Cgroup       struct {
			V1 bool `json:"v1"`
			V2 bool `json:"v2"`
		} `json:"cgroup"`
		Seccomp struct {
			Enabled bool `json:"enabled"`
		} `json:"seccomp"`
	} `json:"linux"`
}

// Features describes this runtime for `berth-runtime features`.
func Features() FeaturesInfo {
	var f FeaturesInfo
	f.OCIVersionMin, f.OCIVersionMax = "1.0.0", specs.Version
	f.Hooks = []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}
	f.MountOptions = []string{"ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
		"dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime",
		"norelatime", "strictatime", "nostrictatime", "bind", "rbind", "shared", "rshared", "slave",
		"rslave", "private", "rprivate", "unbindable", "runbindable"}
	f.Linux.Namespaces = []string{"cgroup", "ipc", "mount", "network", "pid", "user", "uts"}
	for _, c := range allCapabilityNames() {
		f.Linux.Capabilities = append(f.Linux.Capabilities, c)
	}
	f.Linux.Cgroup.V1, f.Linux.Cgroup.V2 = true, true
	f.Linux.Seccomp.Enabled = true
	return f
}

// WriteSpec writes spec as bundle/config.json.
func WriteSpec(bundle string, spec *specs.Spec) error {
	_, err := SaveSpec(bundle, spec)
	return err
}

// Written is a bundle's configuration as its writer wrote it: decoded, and
// the file's bytes.
type Written struct {
	Bundle string
	Spec   *specs.Spec
	JSON   []byte
	// Seccomp is linux.seccomp as JSON, the key of the compiled filter's
	// cache; nil without a profile. Picking it out of JSON costs four
	// times its encoding.
	Seccomp []byte
}

// SaveSpec writes spec as bundle/config.json and returns it as written,
// for CreateOpts.Written.
//
// The file is compact JSON: indenting the default seccomp profile's syscall
// list took four times the encoding and half again the bytes.
func SaveSpec(bundle string, spec *specs.Spec) (*Written, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	w := &Written{Bundle: bundle, Spec: spec, JSON: b}
	if spec.Linux != nil && spec.Linux.Seccomp != nil {
		if w.Seccomp, err = json.Marshal(spec.Linux.Seccomp); err != nil {
			return nil, err
		}
	}
	if err := rewrite.File(filepath.Join(bundle, "config.json"), b, 0o644); err != nil {
		return nil, err
	}
	return w, nil
}
