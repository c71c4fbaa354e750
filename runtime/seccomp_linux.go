package runtime

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/runtime/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// compileSeccomp returns the container's filter in the form the init loads.
// raw is linux.seccomp exactly as config.json holds it (nil if unknown).
//
// A start with a profile seen before must cost a file read, nothing more:
// the program is cached under the root keyed by the profile's bytes and
// this executable's identity (which fixes the libseccomp linked into it),
// so a hit neither decodes, validates nor hashes the parsed profile. A miss
// compiles through seccomp.CompileCached, which validates and keeps its
// own cache keyed by the parsed profile.
func (r *Native) compileSeccomp(s *specs.LinuxSeccomp, raw []byte, exe string) ([]byte, error) {
	if s == nil {
		return nil, nil
	}
	dir := filepath.Join(r.Root, ".seccomp")
	var fast string
	if len(raw) > 0 && exe != "" {
		h := sha256.New()
		h.Write([]byte(filepath.Base(exe)))
		h.Write([]byte{0})
		h.Write(raw)
		fast = filepath.Join(dir, "raw-"+hex.EncodeToString(h.Sum(nil))+".bpf")
		if b := r.loadedProgram(fast); b != nil {
			return b, nil
		}
		// The init verifies the program's checksum before loading it, so a
		// damaged entry fails there, and is replaced here next time.
		if b, err := os.ReadFile(fast); err == nil && len(b) > 0 {
			var p seccomp.Program
			if p.UnmarshalBinary(b) == nil {
				r.keepProgram(fast, b)
				return b, nil
			}
		}
	}
	p, err := seccomp.CompileCached(s, dir)
	if err != nil {
		return nil, err
	}
	b, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("linux.seccomp: %w", err)
	}
	if fast != "" {
		if err := writeFileAtomic(fast, b, 0o600); err != nil {
			r.Log.Warn("cannot cache seccomp program", "path", fast, "err", err)
		}
		r.keepProgram(fast, b)
	}
	return b, nil
}

// maxLoadedPrograms bounds Native.progs: a node runs a few profiles.
const maxLoadedPrograms = 16

func (r *Native) loadedProgram(key string) []byte {
	r.progsMu.Lock()
	defer r.progsMu.Unlock()
	return r.progs[key]
}

// keepProgram keeps b, which is never written to, for key.
func (r *Native) keepProgram(key string, b []byte) {
	r.progsMu.Lock()
	defer r.progsMu.Unlock()
	if r.progs == nil || len(r.progs) >= maxLoadedPrograms {
		r.progs = map[string][]byte{}
	}
	r.progs[key] = b
}

// rawSeccomp picks linux.seccomp's bytes out of a config.json without
// decoding the rest.
func rawSeccomp(specJSON []byte) []byte {
	var top struct {
		Linux struct {
			Seccomp json.RawMessage `json:"seccomp"`
		} `json:"linux"`
	}
	if json.Unmarshal(specJSON, &top) != nil {
		return nil
	}
	return top.Linux.Seccomp
}

// seccompLoader installs a compiled filter on the calling thread.
type seccompLoader struct{ p seccomp.Program }

func newSeccompLoader(b []byte) (*seccompLoader, error) {
	var l seccompLoader
	if err := l.p.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("seccomp program: %w", err)
	}
	return &l, nil
}

func (l *seccompLoader) load() error {
	fd, err := l.p.Load()
	if err != nil {
		return fmt.Errorf("load seccomp filter: %w", err)
	}
	if fd >= 0 {
		// Only loadWithListener may install a SCMP_ACT_NOTIFY filter, as the
		// listener fd must reach the parent while it is still there.
		unix.Close(fd)
	}
	return nil
}

// loadSeccompWithListener installs a filter that has SCMP_ACT_NOTIFY rules
// while the parent still waits on conn, and sends it the listener fd. It
// returns true when it loaded the filter, so finalize must not load it again.
//
// The filter then covers the rest of the set-up (credentials, capabilities,
// the start wait), as with runc: a profile that notifies on those syscalls
// is the profile's choice.
func loadSeccompWithListener(prog []byte, conn syncConn) (bool, error) {
	if len(prog) == 0 {
		return false, nil
	}
	l, err := newSeccompLoader(prog)
	if err != nil {
		return false, err
	}
	if !l.p.NeedsNotifyFd() {
		return false, nil
	}
	fd, err := l.p.Load()
	if err != nil {
		return false, fmt.Errorf("load seccomp filter: %w", err)
	}
	defer unix.Close(fd)
	if err := conn.send(syncMsg{Type: msgSeccompFd}, fd); err != nil {
		return false, err
	}
	m, _, err := conn.recv()
	if err != nil {
		return false, fmt.Errorf("wait for seccomp listener hand-over: %w", err)
	}
	if m.Type != msgSeccompFdDone {
		return false, fmt.Errorf("seccomp listener hand-over: unexpected message %q", m.Type)
	}
	return true, nil
}

// sendSeccompListener passes a container's seccomp listener fd to the
// spec's listenerPath, with the container's state (runtime-spec
// ContainerProcessState).
func sendSeccompListener(s *specs.LinuxSeccomp, st State, fd int) error {
	defer unix.Close(fd)
	if s == nil || s.ListenerPath == "" {
		return fmt.Errorf("linux.seccomp.listenerPath: required by SCMP_ACT_NOTIFY")
	}
	return seccomp.SendNotifyFd(s.ListenerPath, s.ListenerMetadata, specs.State{
		Version:     st.OCIVersion,
		ID:          st.ID,
		Status:      specs.ContainerState(st.Status),
		Pid:         st.Pid,
		Bundle:      st.Bundle,
		Annotations: st.Annotations,
	}, fd)
}
