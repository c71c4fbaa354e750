package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/internal/rewrite"
)

// A removed container's directory is kept, emptied, for the next one. A
// container start makes a dozen files and directories on the node's disk
// (its directory, bundle and log directory, config.json, meta.json, the
// log and exit files), and on a large ext4 a new inode costs a few hundred
// microseconds of CPU: more than a third of a `run --rm busybox true`.
// Writing into a file that exists costs a tenth of that, renaming a
// directory a twentieth. So destroy empties the directory (every byte of
// the old container's goes: its logs are exposed to the next container)
// and renames it into containers/.spare, and Create renames a spare into
// place.

// maxSpares is how many emptied directories are kept.
const maxSpares = 8

// spareKeep are the files a spare keeps, emptied: what the next container
// writes into (meta.json and its exchange partner, the bundle's
// config.json, the logs berth-init appends to and the file it writes the
// exit code into before renaming it).
var spareKeep = map[string]bool{
	"meta.json": true, "meta.json.tmp": true,
	"bundle": true, filepath.Join("bundle", "config.json"): true,
	"log": true, filepath.Join("log", logFile): true, filepath.Join("log", "init.log"): true,
	filepath.Join("log", "exit.tmp"): true,
}

func (a *Agent) spareRoot() string { return filepath.Join(a.cfg.Root, "containers", ".spare") }

// loadSpares lists the spares a previous agent left.
func (a *Agent) loadSpares() {
	ents, _ := os.ReadDir(a.spareRoot())
	for _, e := range ents {
		if e.IsDir() && len(a.spares) < maxSpares {
			a.spares = append(a.spares, e.Name())
		} else {
			_ = os.RemoveAll(filepath.Join(a.spareRoot(), e.Name()))
		}
	}
}

// makeDirLocked makes container id's directory, from a spare when there
// is one; an error means the ID is taken. a.mu is held.
func (a *Agent) makeDirLocked(id string) error {
	var name string
	if n := len(a.spares); n > 0 {
		name, a.spares = a.spares[n-1], a.spares[:n-1]
	}
	if name != "" {
		err := os.Rename(filepath.Join(a.spareRoot(), name), a.dir(id))
		if err == nil {
			return nil
		}
		_ = os.RemoveAll(filepath.Join(a.spareRoot(), name))
	}
	return os.Mkdir(a.dir(id), 0o711)
}

// removeDir removes container id's directory, keeping it emptied as a
// spare while there are fewer than maxSpares.
func (a *Agent) removeDir(id string) error {
	dir := a.dir(id)
	a.mu.Lock()
	keep := len(a.spares) < maxSpares
	a.mu.Unlock()
	if keep && emptyForSpare(dir) == nil {
		if err := os.MkdirAll(a.spareRoot(), 0o700); err == nil && os.Rename(dir, filepath.Join(a.spareRoot(), id)) == nil {
			a.mu.Lock()
			a.spares = append(a.spares, id)
			a.mu.Unlock()
			return nil
		}
	}
	return os.RemoveAll(dir)
}

// emptyForSpare truncates the files a spare keeps and removes everything
// else in dir. The exit code's file is put back under the name berth-init
// writes it to first.
func emptyForSpare(dir string) error {
	log := filepath.Join(dir, "log")
	if err := os.Rename(filepath.Join(log, "exit"), filepath.Join(log, "exit.tmp")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var walkErr error
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if !spareKeep[rel] || strings.HasPrefix(d.Name(), ".") {
			if err := os.RemoveAll(p); err != nil {
				walkErr = err
			}
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			if err := rewrite.Empty(p); err != nil {
				walkErr = err
			}
			return nil
		}
		if !d.IsDir() {
			// A kept name that is not a file or directory (a socket, a
			// link): it goes.
			if err := os.Remove(p); err != nil {
				walkErr = err
			}
		}
		return nil
	})
	return errors.Join(err, walkErr)
}
