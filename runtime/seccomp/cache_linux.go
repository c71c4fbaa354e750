package seccomp

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Cache keeps compiled programs in a directory, one file per distinct
// seccomp section, so that only the first container with a given profile
// pays for compiling it. Many processes may share the directory: entries are
// written to a temporary file and renamed into place, and every entry is
// verified (key and checksum) before use; a damaged one is recompiled and
// replaced, never loaded.
type Cache struct {
	dir      string
	compiler string

	hits     atomic.Uint64
	compiles atomic.Uint64
	corrupt  atomic.Uint64
}

// CacheStats counts what a Cache has done since it was made.
type CacheStats struct {
	Hits     uint64 // programs read from disk
	Compiles uint64 // programs compiled (misses and corrupt entries)
	Corrupt  uint64 // entries found damaged and replaced
}

// NewCache returns a cache that keeps its entries in dir (created on first
// write).
func NewCache(dir string) *Cache {
	return &Cache{dir: dir, compiler: compilerVersion()}
}

// CompileCached is Compile with the result kept in, and taken from, cacheDir.
func CompileCached(s *specs.LinuxSeccomp, cacheDir string) (*Program, error) {
	return NewCache(cacheDir).Compile(s)
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	return CacheStats{Hits: c.hits.Load(), Compiles: c.compiles.Load(), Corrupt: c.corrupt.Load()}
}

const cacheMagic = "BSCK"

// Compile returns the program for s from the cache, compiling and storing it
// if it is missing or damaged.
func (c *Cache) Compile(s *specs.LinuxSeccomp) (*Program, error) {
	// Validate first: a bad spec must fail the same way with or without a
	// cache entry, and the listener fields are not part of the key.
	pl, err := parse(s)
	if err != nil {
		return nil, err
	}
	key, err := cacheKey(s, c.compiler)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(c.dir, hex.EncodeToString(key[:])+".bpf")
	prog, err := c.read(path, key)
	switch {
	case err == nil:
		c.hits.Add(1)
		return prog, nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		c.corrupt.Add(1)
		slog.Warn("seccomp: recompiling damaged cache entry", "path", path, "err", err)
	}
	prog, err = compilePlan(pl)
	if err != nil {
		return nil, err
	}
	c.compiles.Add(1)
	if err := c.write(path, key, prog); err != nil {
		// The program is good; a cache that cannot be written only costs
		// the next start a compile.
		slog.Warn("seccomp: cannot write cache entry", "path", path, "err", err)
	}
	return prog, nil
}

func (c *Cache) read(path string, key [sha256.Size]byte) (*Program, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	hdr := len(cacheMagic) + sha256.Size
	if len(b) < hdr || string(b[:len(cacheMagic)]) != cacheMagic {
		return nil, errors.New("not a seccomp cache entry")
	}
	if !bytes.Equal(b[len(cacheMagic):hdr], key[:]) {
		return nil, errors.New("entry belongs to another key")
	}
	var p Program
	if err := p.UnmarshalBinary(b[hdr:]); err != nil {
		return nil, err
	}
	return &p, nil
}

// write is atomic but not fsynced: after a crash the entry is either whole,
// absent or detectably damaged, and the last two only cost a compile.
func (c *Cache) write(path string, key [sha256.Size]byte, p *Program) error {
	body, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(c.dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op once renamed
	b := make([]byte, 0, len(cacheMagic)+len(key)+len(body))
	b = append(append(append(b, cacheMagic...), key[:]...), body...)
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	return nil
}
