package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/berth-dev/berth/runtime/cgroups"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ErrNotExist is returned for a container ID the runtime does not know.
var ErrNotExist = errors.New("container does not exist")

// record is what the runtime keeps on disk about one container, in
// <root>/<id>/state.json. The spec is stored beside it as config.json, as it
// was at create, so later calls never re-read a bundle that may have changed.
type record struct {
	ID         string    `json:"id"`
	Bundle     string    `json:"bundle"`
	Rootfs     string    `json:"rootfs"`
	Pid        int       `json:"pid"`
	PidStart   uint64    `json:"pidStart"` // /proc/<pid>/stat starttime, against pid reuse
	Created    time.Time `json:"created"`
	Owner      string    `json:"owner"`
	CgroupPath string    `json:"cgroupPath"`
	// Cgroups is where the host's cgroup filesystems were mounted at
	// create, so later verbs need not parse mountinfo again.
	Cgroups     *cgroups.Hierarchy `json:"cgroups,omitempty"`
	Annotations map[string]string  `json:"annotations,omitempty"`
	// SharedPidNS is true when the container has no pid namespace of its
	// own: killing its init does not kill the rest, so delete and kill --all
	// must walk the cgroup.
	SharedPidNS bool `json:"sharedPidNS,omitempty"`
	// Hooks are the poststart and poststop hooks, which run after create.
	Hooks *specs.Hooks `json:"hooks,omitempty"`
}

// fastRecordFile holds what berth-runtime's start and delete need in their
// common case, in a form C reads without a JSON parser (see
// cmd/berth-runtime/fastpath.c): "pid N", "start N" and one "cgroup DIR"
// line per hierarchy.
const fastRecordFile = "fastpath"

// fastRecord is the fast record of rec, or nil for a container whose start
// or delete must do more than the fast path does: run hooks, or kill the
// processes of a pid namespace it shares.
func fastRecord(rec *record, cgroupDirs []string) []byte {
	if rec.Hooks != nil || rec.SharedPidNS {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "pid %d\nstart %d\n", rec.Pid, rec.PidStart)
	for _, d := range cgroupDirs {
		if strings.ContainsAny(d, "\n") {
			return nil
		}
		fmt.Fprintf(&b, "cgroup %s\n", d)
	}
	return []byte(b.String())
}

func validID(id string) error {
	if id == "" {
		return errors.New("container ID is empty")
	}
	if len(id) > 1024 || !idPattern(id) {
		return fmt.Errorf("invalid container ID %q: use letters, digits, '_', '-', '.', '+'", id)
	}
	return nil
}

// idPattern is ^[A-Za-z0-9_+\-.]+$ without "." and "..", by hand: a
// regexp's compilation is a measurable share of a verb that runs for
// milliseconds.
func idPattern(id string) bool {
	if id == "" || id == "." || id == ".." {
		return false
	}
	for _, c := range []byte(id) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '+' || c == '-' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (r *Native) dir(id string) string { return filepath.Join(r.Root, id) }

// loadRecord reads a container's state record.
func (r *Native) loadRecord(id string) (*record, error) {
	if err := validID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(r.dir(id), "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("read state of %s: %w", id, err)
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("state of %s is corrupt: %w", id, err)
	}
	return &rec, nil
}

// load reads a container's state record and its saved spec. Decoding the
// spec is a measurable share of a short verb, so only the verbs that need
// it (exec) call load.
func (r *Native) load(id string) (*record, *specs.Spec, error) {
	rec, err := r.loadRecord(id)
	if err != nil {
		return nil, nil, err
	}
	sb, err := os.ReadFile(filepath.Join(r.dir(id), "config.json"))
	if err != nil {
		return nil, nil, fmt.Errorf("read saved config of %s: %w", id, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(sb, &spec); err != nil {
		return nil, nil, fmt.Errorf("saved config of %s is corrupt: %w", id, err)
	}
	return rec, &spec, nil
}

// processStart returns the start time of pid in clock ticks since boot, the
// only stable identity a pid has; 0 if the process is gone.
func processStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name is in parentheses and may hold spaces: parse after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(s[i+1:])
	// After ")": state is field 3 of the full line, starttime is field 22.
	if len(fields) < 20 {
		return 0
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return 0 // a zombie has exited: the container is stopped
	}
	v, _ := strconv.ParseUint(fields[19], 10, 64)
	return v
}

// status derives a container's status from the kernel, never from a cached
// value, so it stays right while no runtime process is watching.
func (r *Native) status(rec *record) Status {
	if rec.Pid == 0 {
		return Creating
	}
	if st := processStart(rec.Pid); st == 0 || st != rec.PidStart {
		return Stopped
	}
	if frozen, _ := r.frozen(rec); frozen {
		return Paused
	}
	if _, err := os.Lstat(filepath.Join(r.dir(rec.ID), execFifo)); err == nil {
		return Created
	}
	return Running
}

func (r *Native) stateOf(rec *record) State {
	st := State{
		OCIVersion:  specs.Version,
		ID:          rec.ID,
		Status:      r.status(rec),
		Pid:         rec.Pid,
		Bundle:      rec.Bundle,
		Rootfs:      rec.Rootfs,
		Created:     rec.Created,
		Owner:       rec.Owner,
		Annotations: rec.Annotations,
	}
	if st.Status == Stopped {
		st.Pid = 0
	}
	return st
}

// signalInit sends sig to the container's init, through a pidfd checked
// against the recorded start time so a recycled pid is never signalled.
func signalInit(rec *record, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(rec.Pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("container %s is not running", rec.ID)
		}
		return fmt.Errorf("pidfd_open %d: %w", rec.Pid, err)
	}
	defer unix.Close(fd)
	if processStart(rec.Pid) != rec.PidStart {
		return fmt.Errorf("container %s is not running", rec.ID)
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal %d to %s: %w", rec.Pid, rec.ID, err)
	}
	return nil
}
