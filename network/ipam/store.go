package ipam

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// Store keeps the allocation State. Update must be atomic: fn sees the
// latest state and its result is stored before any other Update reads, so
// an address is never handed out twice. (The control plane's etcd Store
// does this with a revision-guarded transaction.) Like this package's
// functions, fn must treat states as values: read its argument, never
// modify it, and return a new State that it does not modify afterwards.
type Store interface {
	Load() (State, error)
	Update(fn func(State) (State, error)) error
}

// FileStore is a Store for one node, in two slot files, Path+".0" and
// Path+".1", each holding a header and the state as JSON:
//
//	berth-ipam 1 <generation> <length> <crc32c>\n<JSON of length bytes>
//
// An update, under an flock so that several processes on the host share
// the store safely, overwrites the older slot in place with the next
// generation; a load takes the valid slot of the highest generation. A
// crash mid-write leaves a slot whose checksum fails, and the other slot
// still holds the state before. (The classic write-and-rename costs more
// than the rest of an attach on ext4, which flushes data on every rename
// over a file.)
//
// It keeps the state it last read or wrote, with the bytes that encode it:
// while the slot holds those bytes, an update does not decode every
// address in the cluster again.
type FileStore struct {
	Path string

	mu sync.Mutex // serialises this process's updates; guards the fields below
	// cached is the state that raw (slot cachedSlot, generation gen) encodes.
	cached     State
	raw        []byte
	cachedSlot int
	gen        uint64
}

// NewFileStore returns a store at path; the directory must exist.
func NewFileStore(path string) (*FileStore, error) {
	if fi, err := os.Stat(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("ipam store %s: %w", path, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("ipam store %s: %s is not a directory", path, filepath.Dir(path))
	}
	return &FileStore{Path: path}, nil
}

// Load reads the stored state; a store never written is the empty state.
func (f *FileStore) Load() (State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, _, _, err := f.load()
	if err != nil {
		return State{}, err
	}
	return s.clone(), nil
}

const slotMagic = "berth-ipam 1 "

func (f *FileStore) slotPath(i int) string { return fmt.Sprintf("%s.%d", f.Path, i) }

// readSlot returns the JSON a slot holds and its generation; ok is false
// for a slot that is missing, torn or not ours, exists for a missing one.
func (f *FileStore) readSlot(i int) (body []byte, gen uint64, ok, exists bool, err error) {
	b, err := os.ReadFile(f.slotPath(i))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, false, false, nil
	}
	if err != nil {
		return nil, 0, false, true, fmt.Errorf("ipam store: %w", err)
	}
	head, rest, found := bytes.Cut(b, []byte{'\n'})
	if !found || !bytes.HasPrefix(head, []byte(slotMagic)) {
		return nil, 0, false, true, nil
	}
	var n int
	var sum uint32
	if _, err := fmt.Sscanf(string(head[len(slotMagic):]), "%d %d %d", &gen, &n, &sum); err != nil || n < 0 || n > len(rest) {
		return nil, 0, false, true, nil
	}
	body = rest[:n]
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, 0, false, true, nil
	}
	return body, gen, true, true, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// load returns the newest valid state, the slot it came from and its
// generation (slot -1 when no slot exists). The caller must not modify
// the state.
func (f *FileStore) load() (State, int, uint64, error) {
	slot, gen := -1, uint64(0)
	var body []byte
	exists := false
	for i := range 2 {
		b, g, ok, there, err := f.readSlot(i)
		if err != nil {
			return State{}, 0, 0, err
		}
		exists = exists || there
		if ok && (slot < 0 || g > gen) {
			slot, gen, body = i, g, b
		}
	}
	if slot < 0 {
		if exists {
			return State{}, 0, 0, fmt.Errorf("ipam store: neither %s nor %s holds a valid state", f.slotPath(0), f.slotPath(1))
		}
		return State{}.clone(), -1, 0, nil
	}
	if f.raw != nil && f.cachedSlot == slot && f.gen == gen && bytes.Equal(body, f.raw) {
		return f.cached, slot, gen, nil
	}
	var s State
	if err := json.Unmarshal(body, &s); err != nil {
		return State{}, 0, 0, fmt.Errorf("ipam store: decode %s: %w", f.slotPath(slot), err)
	}
	s = s.clone()
	f.cached, f.raw, f.cachedSlot, f.gen = s, body, slot, gen
	return s, slot, gen, nil
}

// Update runs fn under an exclusive lock and stores its result.
func (f *FileStore) Update(fn func(State) (State, error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	lk, err := os.OpenFile(f.Path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("ipam store: lock: %w", err)
	}
	defer lk.Close()
	if err := unix.Flock(int(lk.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("ipam store: lock %s: %w", lk.Name(), err)
	}
	s, slot, gen, err := f.load()
	if err != nil {
		return err
	}
	n, err := fn(s)
	if err != nil {
		return err
	}
	body := encode(n)
	next := 1 - slot // the older slot; slot 0 when none exists yet
	if slot < 0 {
		next = 0
	}
	head := fmt.Sprintf("%s%d %d %d\n", slotMagic, gen+1, len(body), crc32.Checksum(body, castagnoli))
	w, err := os.OpenFile(f.slotPath(next), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("ipam store: %w", err)
	}
	// In place, without truncating: the length in the header says where
	// the state ends, and truncation too makes ext4 flush.
	_, err = w.WriteAt(append([]byte(head), body...), 0)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ipam store: write %s: %w", f.slotPath(next), err)
	}
	f.cached, f.raw, f.cachedSlot, f.gen = n, body, next, gen+1
	return nil
}

// encode writes the state as the JSON that encoding/json reads back into
// State. By hand, because encoding/json sorts map keys and goes through
// reflection for every address, which made it most of an attach's cost.
func encode(s State) []byte {
	b := make([]byte, 0, 64+48*(len(s.Blocks)+len(s.Addrs)))
	b = append(b, `{"blocks":{`...)
	first := true
	for p, node := range s.Blocks {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(append(p.AppendTo(append(b, '"')), '"', ':'), node)
	}
	b = append(b, `},"addrs":{`...)
	first = true
	for a, o := range s.Addrs {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(a.AppendTo(append(b, '"')), `":{"node":`...)
		b = appendString(b, o.Node)
		b = append(b, `,"container":`...)
		b = appendString(b, o.Container)
		b = append(b, '}')
	}
	return append(b, "}}\n"...)
}

// appendString appends s as a JSON string. Names are valid UTF-8 (Assign
// refuses others), so only quotes, backslashes and control characters
// need escaping.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
