package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/runtime"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// List returns every container, oldest first.
func (a *Agent) List() []Container {
	a.mu.Lock()
	cs := make([]*container, 0, len(a.containers))
	for _, c := range a.containers {
		cs = append(cs, c)
	}
	a.mu.Unlock()
	var out []Container
	for _, c := range cs {
		c.mu.Lock()
		if !c.removed {
			out = append(out, c.snapshot())
		}
		c.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

// snapshot copies c's metadata for callers; c.mu is held.
func (c *container) snapshot() Container {
	m := c.meta
	if h := m.State.Health; h != nil {
		hc := *h
		hc.Log = slices.Clone(h.Log)
		m.State.Health = &hc
	}
	return m
}

// Inspect reports one container.
func (a *Agent) Inspect(ref string) (Container, error) {
	c, err := a.get(ref)
	if err != nil {
		return Container{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshot(), nil
}

// Stats are a container's resource use, from its cgroup.
type Stats struct {
	CPUNanos    uint64 `json:"cpuNanos"`
	MemoryBytes uint64 `json:"memoryBytes"`
	MemoryLimit uint64 `json:"memoryLimit"`
	Pids        uint64 `json:"pids"`
	PidsLimit   uint64 `json:"pidsLimit"`
	OOMKills    uint64 `json:"oomKills"`
	RxBytes     uint64 `json:"rxBytes"`
	TxBytes     uint64 `json:"txBytes"`
}

// Stats reads the running container's counters.
func (a *Agent) Stats(ref string) (Stats, error) {
	c, err := a.get(ref)
	if err != nil {
		return Stats{}, err
	}
	c.mu.Lock()
	id, pid, running := c.meta.ID, c.meta.State.Pid, c.exited != nil
	c.mu.Unlock()
	if !running {
		return Stats{}, fmt.Errorf("container %s: %w", id, ErrNotRunning)
	}
	cg, err := a.cgroup(id)
	if err != nil {
		return Stats{}, err
	}
	st, err := cg.Stats()
	if err != nil {
		return Stats{}, fmt.Errorf("stats of %s: %w", id, err)
	}
	out := Stats{CPUNanos: st.CPU.UsageNanos, MemoryBytes: st.Memory.Usage, MemoryLimit: st.Memory.Limit,
		Pids: st.Pids.Current, PidsLimit: st.Pids.Limit, OOMKills: st.Memory.OOMKills}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/dev", pid)); err == nil {
		out.RxBytes, out.TxBytes = ParseNetDev(string(b))
	}
	return out, nil
}

// ParseNetDev sums the received and sent bytes of every interface but
// loopback in /proc/net/dev.
func ParseNetDev(s string) (rx, tx uint64) {
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(name) == "lo" {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 9 {
			continue
		}
		r, err1 := strconv.ParseUint(f[0], 10, 64)
		t, err2 := strconv.ParseUint(f[8], 10, 64)
		if err1 == nil && err2 == nil {
			rx, tx = rx+r, tx+t
		}
	}
	return rx, tx
}

// ExecSpec is one more process to run in a container.
type ExecSpec struct {
	Args    []string
	Env     []string
	User    string // empty: the container's user
	Workdir string
	// TTY runs the process on a new terminal, whose master Console
	// receives while the process is set up (stdio is then unused).
	TTY     bool
	Console func(master *os.File)
}

// Exec runs a process in the running container as its workload runs
// (user, capabilities, seccomp, no-new-privileges) and returns its exit code.
func (a *Agent) Exec(ctx context.Context, ref string, e ExecSpec, stdio runtime.IO) (int, error) {
	c, err := a.get(ref)
	if err != nil {
		return -1, err
	}
	if len(e.Args) == 0 {
		return -1, errors.New("exec: no command")
	}
	c.mu.Lock()
	id, user, cs, running := c.meta.ID, c.meta.User, c.meta.Spec, c.exited != nil
	c.mu.Unlock()
	if !running {
		return -1, fmt.Errorf("container %s: %w", id, ErrNotRunning)
	}
	b, err := os.ReadFile(filepath.Join(a.bundle(id), "config.json"))
	if err != nil {
		return -1, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return -1, err
	}
	if e.User != "" {
		root, err := os.OpenRoot(a.rootfs(id))
		if err != nil {
			return -1, err
		}
		user, err = image.ResolveUser(e.User, func(n string) (io.ReadCloser, error) { return root.Open(n) })
		root.Close()
		if err != nil {
			return -1, fmt.Errorf("exec: %w", err)
		}
	}
	// The bundle's process is berth-init's; the workload's env is the same.
	caps, err := Capabilities(cs.CapAdd, cs.CapDrop)
	if err != nil {
		return -1, err
	}
	p := WorkloadProcess(&spec, caps, user, e.Args, e.Env, e.Workdir)
	p.Terminal = e.TTY
	opts := runtime.ExecOpts{IO: stdio}
	if e.TTY {
		if e.Console == nil {
			return -1, errors.New("exec: a terminal needs a Console")
		}
		opts = runtime.ExecOpts{Console: e.Console}
	}
	return a.cfg.Runtime.Exec(ctx, id, p, opts)
}

// Logs writes the container's output to stdout and stderr by stream.
func (a *Agent) Logs(ctx context.Context, ref string, opt LogOptions, stdout, stderr io.Writer) error {
	return a.LogEntries(ctx, ref, opt, func(e LogEntry) error {
		w := stdout
		if e.Stream == "stderr" {
			w = stderr
		}
		// A NoInit container's lines have no time to show.
		return FormatLog(w, e, opt.Timestamps && !e.Time.IsZero())
	})
}

// LogEntries calls fn with each of the container's log lines that opt
// selects, in order; with Follow, until the container's current run ends
// (and all it wrote is read) or ctx does. A NoInit container's lines have
// no time and all count as stdout.
func (a *Agent) LogEntries(ctx context.Context, ref string, opt LogOptions, fn func(LogEntry) error) error {
	c, err := a.get(ref)
	if err != nil {
		return err
	}
	c.mu.Lock()
	id, spec := c.meta.ID, c.meta.Spec
	exited := c.exited
	c.mu.Unlock()
	if spec.NoInit {
		return a.rawLogs(id, opt, fn)
	}
	var entries []LogEntry
	asm, br := &logAssembler{}, newRecordReader()
	f, off, err := readLogDir(a.logDir(id), spec.Log.withDefaults().MaxFiles, br, asm, func(e LogEntry) { entries = append(entries, e) })
	if err != nil {
		return fmt.Errorf("logs of %s: %w", id, err)
	}
	for _, e := range SelectLogs(entries, opt) {
		if err := fn(e); err != nil {
			if f != nil {
				f.Close()
			}
			return err
		}
	}
	if !opt.Follow {
		if f != nil {
			f.Close()
		}
		return nil
	}
	return followLog(ctx, a.logDir(id), f, off, br, asm, func(e LogEntry) error {
		if !opt.Since.IsZero() && e.Time.Before(opt.Since) {
			return nil
		}
		return fn(e)
	}, exited)
}

// rawLogs serves a NoInit container's log, which has no timestamps.
func (a *Agent) rawLogs(id string, opt LogOptions, fn func(LogEntry) error) error {
	b, err := os.ReadFile(filepath.Join(a.logDir(id), "raw.log"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	lines := strings.SplitAfter(string(b), "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if opt.Tail >= 0 && len(lines) > opt.Tail {
		lines = lines[len(lines)-opt.Tail:]
	}
	for _, l := range lines {
		if err := fn(LogEntry{Stream: "stdout", Line: []byte(strings.TrimSuffix(l, "\n"))}); err != nil {
			return err
		}
	}
	return nil
}
