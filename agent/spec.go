// Package agent runs containers on one node: it turns a ContainerSpec into
// an OCI bundle with Berth's secure defaults (its own user namespace, the
// default seccomp profile, Docker's capability set, no-new-privileges,
// masked paths, cgroup limits), runs it through a runtime.Runtime, and
// supervises it without a per-container process on the host: berth-init,
// PID 1 of every container, writes the logs and the exit code to files
// that the agent reads, so containers and their exit codes outlive the
// agent.
package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ContainerSpec is what a caller asks the agent to run.
type ContainerSpec struct {
	Name  string `json:"name,omitempty"`
	Image string `json:"image"`
	// Entrypoint and Cmd replace the image's when not nil, as docker run's
	// --entrypoint and trailing arguments do.
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Env        []string          `json:"env,omitempty"`
	User       string            `json:"user,omitempty"`
	Workdir    string            `json:"workdir,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Tenant     string            `json:"tenant,omitempty"`
	// Memory is the memory limit in bytes (0: none); swap is not allowed
	// beyond it, so a container past its limit is OOM-killed.
	Memory    int64         `json:"memory,omitempty"`
	CPUs      float64       `json:"cpus,omitempty"`
	PidsLimit int64         `json:"pidsLimit,omitempty"`
	ReadOnly  bool          `json:"readOnly,omitempty"`
	CapAdd    []string      `json:"capAdd,omitempty"`
	CapDrop   []string      `json:"capDrop,omitempty"`
	Mounts    []Mount       `json:"mounts,omitempty"`
	Restart   RestartPolicy `json:"restart,omitempty"`
	Health    *HealthCheck  `json:"health,omitempty"`
	// NoInit runs the workload itself as PID 1 (--init=false). Its output
	// then goes to a log file without rotation, and its exit code is
	// known only to an agent that is running when it exits.
	NoInit bool `json:"noInit,omitempty"`
	// Ephemeral containers are removed after their run (docker run --rm):
	// their writable layer is an overlay mounted volatile, which never
	// syncs the filesystem under it (a sync of the whole disk at every
	// removal). After a crash such a layer is not to be trusted, and
	// nothing uses it again.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// TTY gives the workload a terminal (docker run -t), Stdin an input
	// that stays open for attach (-i). berth-init serves both on a socket
	// in the log directory, so both need the init.
	TTY   bool `json:"tty,omitempty"`
	Stdin bool `json:"stdin,omitempty"`
	// Network is "none" (the default: a network namespace with loopback
	// only) or a network the agent's Networker attaches.
	Network string `json:"network,omitempty"`
	// Ports are published on the host (network other than none).
	Ports []PortMapping `json:"ports,omitempty"`
	Log   LogConfig     `json:"log,omitempty"`
}

// Mount is a named volume or a bind mount.
type Mount struct {
	// Type is "volume" (Source names a volume kept under the agent root
	// across container replacement) or "bind" (Source is a host path).
	Type     string `json:"type"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// LogConfig caps a container's log files: at most MaxFiles files of about
// MaxSize bytes each, the oldest dropped first.
type LogConfig struct {
	MaxSize  int64 `json:"maxSize,omitempty"`
	MaxFiles int   `json:"maxFiles,omitempty"`
}

// Log defaults: 3 files of 10 MiB.
const (
	defaultLogSize  = 10 << 20
	defaultLogFiles = 3
)

func (l LogConfig) withDefaults() LogConfig {
	if l.MaxSize == 0 {
		l.MaxSize = defaultLogSize
	}
	if l.MaxFiles == 0 {
		l.MaxFiles = defaultLogFiles
	}
	return l
}

// HealthCheck probes a running container. Exactly one of Cmd, HTTPPath
// (with Port) or Port alone (TCP) is set.
type HealthCheck struct {
	// Cmd runs inside the container; exit 0 is healthy.
	Cmd []string `json:"cmd,omitempty"`
	// HTTPPath is GET over HTTP to 127.0.0.1:Port in the container's
	// network namespace; 2xx and 3xx are healthy.
	HTTPPath string `json:"httpPath,omitempty"`
	// Port alone is a TCP connect to 127.0.0.1:Port in the container's
	// network namespace.
	Port        int           `json:"port,omitempty"`
	Interval    time.Duration `json:"interval,omitempty"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	StartPeriod time.Duration `json:"startPeriod,omitempty"`
	Retries     int           `json:"retries,omitempty"`
}

func (h HealthCheck) withDefaults() HealthCheck {
	if h.Interval == 0 {
		h.Interval = 30 * time.Second
	}
	if h.Timeout == 0 {
		h.Timeout = 30 * time.Second
	}
	if h.Retries == 0 {
		h.Retries = 3
	}
	return h
}

// validName accepts what may name a container, volume or network (it
// becomes a directory name): a letter or digit, then letters, digits and
// extra, at most max bytes.
func validName(s string, max int, extra string) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune(extra, rune(c))) {
			return false
		}
	}
	return true
}

// Validate reports the first thing wrong with s, naming the field.
func (s ContainerSpec) Validate() error {
	if s.Image == "" {
		return fmt.Errorf("image: is empty")
	}
	if s.Name != "" && !validName(s.Name, 128, "_.-") {
		return fmt.Errorf("name %q: use letters, digits, '_', '.', '-', starting with a letter or digit", s.Name)
	}
	for i, e := range s.Env {
		if k, _, _ := strings.Cut(e, "="); k == "" {
			return fmt.Errorf("env[%d] %q: has no name", i, e)
		}
	}
	if s.Workdir != "" && !strings.HasPrefix(s.Workdir, "/") {
		return fmt.Errorf("workdir %q: must be an absolute path", s.Workdir)
	}
	for k := range s.Labels {
		if !validName(k, 253, "_./-") {
			return fmt.Errorf("label %q: invalid key", k)
		}
	}
	if s.Memory < 0 {
		return fmt.Errorf("memory %d: must not be negative", s.Memory)
	}
	if s.Memory > 0 && s.Memory < 6<<20 {
		return fmt.Errorf("memory %d: the minimum is 6 MiB", s.Memory)
	}
	if s.CPUs < 0 || s.CPUs > 1024 {
		return fmt.Errorf("cpus %v: must be between 0 and 1024", s.CPUs)
	}
	if s.PidsLimit < 0 {
		return fmt.Errorf("pidsLimit %d: must not be negative", s.PidsLimit)
	}
	for _, c := range append(append([]string(nil), s.CapAdd...), s.CapDrop...) {
		if _, err := capName(c); err != nil {
			return err
		}
	}
	targets := map[string]bool{}
	for i, m := range s.Mounts {
		field := fmt.Sprintf("mounts[%d]", i)
		if !strings.HasPrefix(m.Target, "/") || m.Target == "/" {
			return fmt.Errorf("%s: target %q must be an absolute path other than /", field, m.Target)
		}
		for _, el := range strings.Split(m.Target, "/") {
			if el == ".." {
				return fmt.Errorf("%s: target %q contains ..", field, m.Target)
			}
		}
		if targets[m.Target] {
			return fmt.Errorf("%s: target %q is mounted twice", field, m.Target)
		}
		targets[m.Target] = true
		switch m.Type {
		case "volume":
			if !validName(m.Source, 128, "_.-") {
				return fmt.Errorf("%s: volume name %q: use letters, digits, '_', '.', '-'", field, m.Source)
			}
		case "bind":
			if !strings.HasPrefix(m.Source, "/") {
				return fmt.Errorf("%s: bind source %q must be an absolute host path", field, m.Source)
			}
		default:
			return fmt.Errorf("%s: type %q: want volume or bind", field, m.Type)
		}
	}
	if err := s.Restart.validate(); err != nil {
		return err
	}
	if h := s.Health; h != nil {
		n := 0
		if len(h.Cmd) > 0 {
			n++
		}
		if h.HTTPPath != "" || h.Port != 0 {
			n++
		}
		if n != 1 {
			return fmt.Errorf("health: set exactly one of cmd, httpPath+port, or port (tcp)")
		}
		if h.HTTPPath != "" && (h.Port == 0 || !strings.HasPrefix(h.HTTPPath, "/")) {
			return fmt.Errorf("health: httpPath %q needs a port and must start with /", h.HTTPPath)
		}
		if h.Port < 0 || h.Port > 65535 {
			return fmt.Errorf("health: port %d out of range", h.Port)
		}
		if h.Interval < 0 || h.Timeout < 0 || h.StartPeriod < 0 || h.Retries < 0 {
			return fmt.Errorf("health: durations and retries must not be negative")
		}
	}
	if (s.TTY || s.Stdin) && s.NoInit {
		return fmt.Errorf("tty/stdin: need Berth's init (noInit is set)")
	}
	if s.Log.MaxSize < 0 || s.Log.MaxFiles < 0 || s.Log.MaxSize > 0 && s.Log.MaxSize < 4096 {
		return fmt.Errorf("log: maxSize must be at least 4096 and maxFiles positive")
	}
	switch s.Network {
	case "", "none":
	default:
		if !validName(s.Network, 64, "_.-") {
			return fmt.Errorf("network %q: invalid name", s.Network)
		}
	}
	return validatePorts(s.Ports, s.Network)
}

// RestartPolicy is Docker's: "no", "on-failure[:N]", "always",
// "unless-stopped".
type RestartPolicy struct {
	Name       string `json:"name,omitempty"`
	MaxRetries int    `json:"maxRetries,omitempty"`
}

// ParseRestartPolicy reads --restart's forms.
func ParseRestartPolicy(s string) (RestartPolicy, error) {
	name, n, hasN := strings.Cut(s, ":")
	p := RestartPolicy{Name: name}
	if hasN {
		if name != "on-failure" {
			return p, fmt.Errorf("restart policy %q: only on-failure takes a retry count", s)
		}
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 {
			return p, fmt.Errorf("restart policy %q: retry count must be a non-negative number", s)
		}
		p.MaxRetries = v
	}
	return p, p.validate()
}

func (p RestartPolicy) validate() error {
	switch p.Name {
	case "", "no", "always", "unless-stopped", "on-failure":
	default:
		return fmt.Errorf("restart policy %q: want no, on-failure[:N], always or unless-stopped", p.Name)
	}
	if p.MaxRetries < 0 || p.MaxRetries > 0 && p.Name != "on-failure" {
		return fmt.Errorf("restart policy %q: a retry count is for on-failure only", p.Name)
	}
	return nil
}

// ShouldRestart decides whether a container that exited with code restarts:
// restarts is how often it has been restarted, stoppedByUser whether it
// ended through Stop or Kill.
func ShouldRestart(p RestartPolicy, code, restarts int, stoppedByUser bool) bool {
	if stoppedByUser {
		return false
	}
	switch p.Name {
	case "always", "unless-stopped":
		return true
	case "on-failure":
		return code != 0 && (p.MaxRetries == 0 || restarts < p.MaxRetries)
	}
	return false
}

// RestartDelay is the back-off before restart number n+1 of a container
// that ran for ran: 100 ms doubling per consecutive quick failure up to a
// minute, and back to 100 ms after a run of 10 s or more, as Docker does.
func RestartDelay(consecutive int, ran time.Duration) time.Duration {
	if ran >= 10*time.Second {
		return 100 * time.Millisecond
	}
	d := 100 * time.Millisecond
	for i := 0; i < consecutive && d < time.Minute; i++ {
		d *= 2
	}
	return min(d, time.Minute)
}
