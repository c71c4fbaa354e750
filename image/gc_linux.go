package image

import (
	"errors"
	"fmt"
	"github.com/berth-dev/berth/internal/mountinfo"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// PruneOptions say what Prune may remove besides unreferenced content.
type PruneOptions struct {
	// All also removes images that no snapshot uses, as `docker image
	// prune -a` does.
	All bool
}

// PruneReport says what Prune removed.
type PruneReport struct {
	Images []digest.Digest
	Blobs  int
	Layers int
	// Snapshots left half made by a crash.
	Snapshots  int
	BytesFreed int64
}

// Prune removes blobs and unpacked layers no image or snapshot references,
// and leftovers of interrupted work, reporting the bytes freed on disk.
func (s *Store) Prune(opt PruneOptions) (PruneReport, error) {
	var rep PruneReport
	unlock, err := s.lock("gc", unix.LOCK_EX)
	if err != nil {
		return rep, err
	}
	defer unlock()
	usedLayers := map[digest.Digest]bool{}
	ids, err := s.Snapshots()
	if err != nil {
		return rep, err
	}
	// Spare snapshots (spare_linux.go) are empty directories, kept only
	// to save making them: a prune gives back even that.
	if err := os.RemoveAll(s.spareRoot()); err != nil {
		return rep, fmt.Errorf("prune spare snapshots: %w", err)
	}
	usedImages := map[digest.Digest]bool{}
	for _, id := range ids {
		m, err := s.snapshotMeta(id)
		if errors.Is(err, fs.ErrNotExist) {
			// Half made or half removed by a process that died: no
			// snapshot is being made now (they hold the gc lock shared),
			// and one without its record was never handed out.
			dir := s.snapshotDir(id)
			if mounted, _ := mountinfo.IsMountPoint(filepath.Join(dir, "rootfs")); mounted {
				continue
			}
			rep.BytesFreed += diskUsage(dir, map[uint64]bool{})
			if err := os.RemoveAll(dir); err != nil {
				return rep, fmt.Errorf("prune snapshot %s: %w", id, err)
			}
			rep.Snapshots++
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("prune: snapshot %s: %w", id, err)
		}
		usedImages[m.Image] = true
		for _, l := range m.Layers {
			usedLayers[l] = true
		}
	}
	if opt.All {
		err := s.updateRefs(func(refs refsFile) error {
			for k, d := range refs {
				if !usedImages[d.Digest] {
					delete(refs, k)
					rep.Images = append(rep.Images, d.Digest)
				}
			}
			return nil
		})
		if err != nil {
			return rep, err
		}
	}
	refs, err := s.readRefs()
	if err != nil {
		return rep, err
	}
	usedBlobs := map[string]bool{}
	for _, d := range refs {
		img, err := s.load(d)
		if err != nil {
			return rep, fmt.Errorf("prune: %w", err)
		}
		usedBlobs[img.Digest.Encoded()] = true
		usedBlobs[img.ConfigDigest.Encoded()] = true
		for _, l := range img.Layers() {
			usedBlobs[l.Blob.Digest.Encoded()] = true
			usedLayers[l.DiffID] = true
		}
	}
	blobDir := filepath.Join(s.dir, "blobs", "sha256")
	ents, err := os.ReadDir(blobDir)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range ents {
		if usedBlobs[e.Name()] {
			continue
		}
		p := filepath.Join(blobDir, e.Name())
		rep.BytesFreed += diskUsage(p, map[uint64]bool{})
		if err := os.Remove(p); err != nil {
			return rep, fmt.Errorf("prune blob %s: %w", e.Name(), err)
		}
		rep.Blobs++
	}
	layerDir := filepath.Join(s.dir, "layers")
	ents, err = os.ReadDir(layerDir)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range ents {
		if usedLayers[digest.NewDigestFromEncoded(digest.SHA256, e.Name())] {
			continue
		}
		p := filepath.Join(layerDir, e.Name())
		rep.BytesFreed += diskUsage(p, map[uint64]bool{})
		if err := os.RemoveAll(p); err != nil {
			return rep, fmt.Errorf("prune layer %s: %w", e.Name(), err)
		}
		rep.Layers++
	}
	// Nothing in tmp/ survives a crash meaningfully; pulls in flight hold
	// the gc lock shared, so none is running now.
	tmpDir := filepath.Join(s.dir, "tmp")
	ents, err = os.ReadDir(tmpDir)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(tmpDir, e.Name())
		rep.BytesFreed += diskUsage(p, map[uint64]bool{})
		if err := os.RemoveAll(p); err != nil {
			return rep, fmt.Errorf("prune %s: %w", p, err)
		}
	}
	// Per-blob and per-layer lock files: nobody holds one without the gc
	// lock shared, so they can go now. refs and gc stay.
	lockDir := filepath.Join(s.dir, "locks")
	ents, err = os.ReadDir(lockDir)
	if err != nil {
		return rep, fmt.Errorf("prune: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "blob-") || strings.HasPrefix(e.Name(), "layer-") {
			if err := os.Remove(filepath.Join(lockDir, e.Name())); err != nil {
				return rep, fmt.Errorf("prune lock %s: %w", e.Name(), err)
			}
		}
	}
	return rep, nil
}

// Usage is what one part of the store occupies on disk.
type Usage struct {
	Kind        string // blobs, layers, snapshots, temporary
	Count       int
	Bytes       int64
	Reclaimable int64
}

// DiskUsage reports honestly what the store occupies: allocated blocks, hard
// links counted once, the snapshots' upper directories (container writes).
func (s *Store) DiskUsage() ([]Usage, error) {
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	usedBlobs, usedLayers := map[string]bool{}, map[string]bool{}
	for _, d := range refs {
		img, err := s.load(d)
		if err != nil {
			return nil, err
		}
		usedBlobs[img.Digest.Encoded()], usedBlobs[img.ConfigDigest.Encoded()] = true, true
		for _, l := range img.Layers() {
			usedBlobs[l.Blob.Digest.Encoded()], usedLayers[l.DiffID.Encoded()] = true, true
		}
	}
	ids, err := s.Snapshots()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if m, err := s.snapshotMeta(id); err == nil {
			for _, l := range m.Layers {
				usedLayers[l.Encoded()] = true
			}
		}
	}
	seen := map[uint64]bool{}
	part := func(kind, dir string, used map[string]bool, sub string) (Usage, error) {
		u := Usage{Kind: kind}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return u, fmt.Errorf("disk usage: %w", err)
		}
		for _, e := range ents {
			if kind == "snapshots" && strings.HasPrefix(e.Name(), ".") {
				continue // the spares: empty, and no snapshot
			}
			n := diskUsage(filepath.Join(dir, e.Name(), sub), seen)
			u.Count++
			u.Bytes += n
			if used != nil && !used[e.Name()] {
				u.Reclaimable += n
			}
		}
		return u, nil
	}
	var out []Usage
	for _, p := range []struct {
		kind, dir string
		used      map[string]bool
		sub       string
	}{
		{"blobs", filepath.Join(s.dir, "blobs", "sha256"), usedBlobs, ""},
		{"layers", filepath.Join(s.dir, "layers"), usedLayers, ""},
		{"snapshots", filepath.Join(s.dir, "snapshots"), nil, "upper"},
		{"temporary", filepath.Join(s.dir, "tmp"), map[string]bool{}, ""},
	} {
		u, err := part(p.kind, p.dir, p.used, p.sub)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// diskUsage sums allocated blocks under p without crossing into mounts
// and counting each inode once.
func diskUsage(p string, seen map[uint64]bool) int64 {
	var total int64
	var dev uint64
	filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) != nil {
			return nil
		}
		if path == p {
			dev = st.Dev
		} else if st.Dev != dev {
			return fs.SkipDir // a mounted snapshot rootfs: its content is counted elsewhere
		}
		if seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		total += st.Blocks * 512
		return nil
	})
	return total
}

// TotalBytes is the store's whole footprint on disk, for tests and `system df`.
func (s *Store) TotalBytes() int64 {
	return diskUsage(s.dir, map[uint64]bool{})
}
