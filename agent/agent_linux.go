package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/internal/rewrite"
	"github.com/berth-dev/berth/runtime"
	"github.com/berth-dev/berth/runtime/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Networker attaches containers to a network; the network package
// provides one. With network "none" the agent needs none.
type Networker interface {
	// Attach connects the network namespace at netnsPath for c and returns
	// the container's addresses.
	Attach(netnsPath string, c NetEndpoint) ([]netip.Prefix, error)
	// Detach disconnects a container; one not attached is no error.
	Detach(id string) error
	// Resume is called once by New, after reconcile, with the running
	// containers that hold addresses: what belongs to any other container
	// is swept away.
	Resume(live []NetEndpoint) error
	// DialContext connects from where the host reaches containers'
	// addresses, for health checks.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Config is what an Agent is made of.
type Config struct {
	// Root holds the agent's state: containers/, volumes/.
	Root string
	// StateRoot holds what does not outlive a boot, as containers do not:
	// the mount points of each container's root filesystem, image layers
	// and volumes, in containers/<id>/ (bundle/rootfs, layers/N,
	// mounts/N). Best a tmpfs, where making and removing a directory
	// costs microseconds, not a disk's metadata writes; after a reboot
	// they are made again when the container starts. Empty means Root.
	StateRoot string
	Images    *image.Store
	Runtime   runtime.Runtime
	// InitPath is the static berth-init executable.
	InitPath  string
	Networker Networker
	// IDs is where containers' user namespace ranges come from; zero means
	// DefaultIDPool.
	IDs IDPool
	// CgroupParent is the cgroup under which containers' cgroups are made;
	// empty means /berth/<hash of Root>, unique per agent.
	CgroupParent string
	Log          *slog.Logger
}

// Status is where a container is in its life.
type Status string

const (
	StatusCreated    Status = "created"
	StatusRunning    Status = "running"
	StatusRestarting Status = "restarting"
	StatusExited     Status = "exited"
)

// State is a container's observed state; Inspect returns it.
type State struct {
	Status       Status         `json:"status"`
	Pid          int            `json:"pid,omitempty"`
	StartedAt    time.Time      `json:"startedAt,omitzero"`
	FinishedAt   time.Time      `json:"finishedAt,omitzero"`
	ExitCode     int            `json:"exitCode"`
	OOMKilled    bool           `json:"oomKilled,omitempty"`
	RestartCount int            `json:"restartCount"`
	Error        string         `json:"error,omitempty"`
	Addresses    []netip.Prefix `json:"addresses,omitempty"`
	Health       *HealthState   `json:"health,omitempty"`
	// StoppedByUser: ended through Stop or Kill, so no restart policy
	// applies (and unless-stopped stays stopped across agent restarts).
	StoppedByUser bool `json:"stoppedByUser,omitempty"`
	// consecutive quick restarts, for the back-off
	Backoff int `json:"backoff,omitempty"`
}

// Container is what List and Inspect report.
type Container struct {
	ID          string        `json:"id"`
	Spec        ContainerSpec `json:"spec"`
	ImageDigest string        `json:"imageDigest"`
	Created     time.Time     `json:"created"`
	IDs         IDRange       `json:"ids"`
	// User is the workload's resolved user, for exec.
	User  specs.User `json:"user"`
	State State      `json:"state"`
	// ExitFollowed: the last exit went to a follower (OpFollow) first.
	ExitFollowed bool `json:"-"`
}

// container is the agent's live record of one container.
type container struct {
	mu sync.Mutex
	// meta is persisted to meta.json on every change; guarded by mu.
	meta Container
	// exited is closed when the current run ends; nil when not running.
	exited chan struct{}
	// settled is closed when the ended run's runtime state and network
	// are released; nil when there is nothing to wait for.
	settled chan struct{}
	// followers are OpFollow streams reading the container's log, which
	// Remove lets finish first: its directory's files are emptied for a
	// spare.
	followers int
	// watch is the pidfd of the running init; closing it stops the watch.
	watch *os.File
	// mntns holds the running init's mount namespace until its exit is
	// recorded (see holdMounts).
	mntns        *os.File
	killed       bool
	restartTimer *time.Timer
	stopHealth   context.CancelFunc
	removed      bool
	// written is the bundle's configuration as Create wrote it, handed to
	// the runtime at the first start and dropped then: kept for good, a
	// thousand idle containers would hold a thousand seccomp profiles.
	written *runtime.Written
}

// Agent runs containers on one node.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	cgroups string

	mu sync.Mutex
	// containers by ID; guarded by mu.
	containers map[string]*container
	closed     bool
	wg         sync.WaitGroup
	// hier is the host's cgroup hierarchy, detected at start.
	hier cgroups.Hierarchy
	// userns are the user namespaces of idmapped mounts, by id range.
	userns *usernsCache
	// changes is signalled when a container exits or its health changes,
	// so that a node loop reports at once rather than at its next poll.
	changes chan struct{}
	// tried is closed, and replaced, each time a container's start has
	// been tried; guarded by mu. AwaitStart waits on it.
	tried chan struct{}
	// spares are emptied container directories (spare_linux.go); guarded
	// by mu.
	spares []string
}

// Changes is signalled (coalesced) after a container exited or its health
// changed.
func (a *Agent) Changes() <-chan struct{} { return a.changes }

// cgroup returns the manager of a container's cgroup.
func (a *Agent) cgroup(id string) (cgroups.Manager, error) {
	return cgroups.New(a.cgroupOf(id), nil, cgroups.Options{Hierarchy: &a.hier})
}

func (a *Agent) notify() {
	select {
	case a.changes <- struct{}{}:
	default:
	}
}

// New opens the agent's root and reconciles it with the kernel: running
// containers are adopted, exits that happened while no agent ran are
// recorded (and restart policies applied), and what is left of containers
// that are gone is removed.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Root == "" || cfg.Images == nil || cfg.Runtime == nil {
		return nil, errors.New("agent: Root, Images and Runtime are required")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	cfg.Root = root
	if cfg.StateRoot == "" {
		cfg.StateRoot = root
	} else if cfg.StateRoot, err = filepath.Abs(cfg.StateRoot); err != nil {
		return nil, err
	}
	if cfg.IDs == (IDPool{}) {
		cfg.IDs = DefaultIDPool()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.InitPath != "" {
		if cfg.InitPath, err = filepath.Abs(cfg.InitPath); err != nil {
			return nil, err
		}
		if _, err := os.Stat(cfg.InitPath); err != nil {
			return nil, fmt.Errorf("agent: berth-init: %w", err)
		}
	}
	// The cgroup mounts are read once: parsing the mount table at every
	// stats call costs more with every container mounted.
	hier, err := cgroups.Detect()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, containers: map[string]*container{}, cgroups: cfg.CgroupParent, hier: hier, changes: make(chan struct{}, 1),
		userns: newUsernsCache(cfg.InitPath), tried: make(chan struct{})}
	if a.cgroups == "" {
		h := sha256.Sum256([]byte(root))
		a.cgroups = "/berth/" + hex.EncodeToString(h[:6])
	}
	for _, d := range []string{"containers", "volumes"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o711); err != nil {
			return nil, fmt.Errorf("agent root: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateRoot, "containers"), 0o711); err != nil {
		return nil, fmt.Errorf("agent state root: %w", err)
	}
	// Container roots are reached by unprivileged host uids.
	for _, d := range []string{root, cfg.StateRoot} {
		if err := os.Chmod(d, 0o711); err != nil {
			return nil, err
		}
	}
	a.loadSpares()
	if err := a.reconcile(ctx); err != nil {
		return nil, err
	}
	if cfg.Networker != nil {
		if err := cfg.Networker.Resume(a.attachedContainers()); err != nil {
			a.Close()
			return nil, fmt.Errorf("agent: resume network: %w", err)
		}
	}
	return a, nil
}

// Close stops the agent's background work (exit watches, restarts,
// health checks). Containers keep running; a new Agent on the same root
// adopts them.
func (a *Agent) Close() error {
	a.mu.Lock()
	a.closed = true
	cs := make([]*container, 0, len(a.containers))
	for _, c := range a.containers {
		cs = append(cs, c)
	}
	a.mu.Unlock()
	for _, c := range cs {
		c.mu.Lock()
		if c.watch != nil {
			c.watch.Close()
		}
		c.dropMounts()
		if c.restartTimer != nil {
			c.restartTimer.Stop()
		}
		if c.stopHealth != nil {
			c.stopHealth()
		}
		c.mu.Unlock()
	}
	a.wg.Wait()
	a.userns.close()
	return nil
}

// dir is a container's directory under Root: its bundle (config.json),
// meta.json and logs, which outlive a reboot.
func (a *Agent) dir(id string) string      { return filepath.Join(a.cfg.Root, "containers", id) }
func (a *Agent) bundle(id string) string   { return filepath.Join(a.dir(id), "bundle") }
func (a *Agent) logDir(id string) string   { return filepath.Join(a.dir(id), "log") }
func (a *Agent) cgroupOf(id string) string { return a.cgroups + "/" + id }

// stateDir is a container's directory under StateRoot: the mount points
// of its root filesystem, layers and volumes, which do not outlive a
// reboot. Their paths below it are those they had below dir before
// StateRoot, so an agent whose StateRoot is Root lays containers out as
// it always did.
func (a *Agent) stateDir(id string) string { return filepath.Join(a.cfg.StateRoot, "containers", id) }
func (a *Agent) rootfs(id string) string   { return filepath.Join(a.stateDir(id), "bundle", "rootfs") }

// Error is the agent's error type for sentinel values.
type Error string

func (e Error) Error() string { return string(e) }

// ErrNotFound is returned for containers the agent does not have.
const ErrNotFound = Error("no such container")

// ErrNotRunning is returned for operations that need a running container.
const ErrNotRunning = Error("not running")

// InvalidError is bad input from the caller (a signal name, a path, an
// archive), as opposed to a failure of the agent or the container.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

func invalidf(format string, args ...any) error {
	return &InvalidError{Err: fmt.Errorf(format, args...)}
}

func (a *Agent) get(ref string) (*container, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.containers[ref]; ok {
		return c, nil
	}
	var found *container
	for id, c := range a.containers {
		if c.meta.Spec.Name == ref || len(ref) >= 4 && strings.HasPrefix(id, ref) {
			if found != nil {
				return nil, invalidf("container %q: ambiguous", ref)
			}
			found = c
		}
	}
	if found == nil {
		return nil, fmt.Errorf("container %q: %w", ref, ErrNotFound)
	}
	return found, nil
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// save writes c's metadata; c.mu is held.
func (a *Agent) save(c *container) error {
	b, err := json.Marshal(c.meta)
	if err != nil {
		return err
	}
	p := filepath.Join(a.dir(c.meta.ID), "meta.json")
	tmp := p + ".tmp"
	if err := rewrite.File(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save container %s: %w", c.meta.ID, err)
	}
	// Exchanged, not renamed over: the old version stays in tmp, whose
	// inode the next save writes into. On a large ext4 a new inode costs a
	// few hundred microseconds of CPU, a write into an existing file a
	// tenth of that, and a container is saved three times as it runs.
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, p, unix.RENAME_EXCHANGE)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) {
		err = os.Rename(tmp, p) // the first save, or no exchange here
	}
	if err != nil {
		return fmt.Errorf("save container %s: %w", c.meta.ID, err)
	}
	return nil
}
