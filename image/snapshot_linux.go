package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/internal/mountinfo"
	"github.com/berth-dev/berth/internal/rewrite"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// snapshotMeta records which layers a snapshot stacks, so garbage
// collection keeps them while the container exists.
type snapshotMeta struct {
	Image  digest.Digest
	Layers []digest.Digest // diff IDs, bottom first
}

// validID says whether a container ID can name a snapshot: it becomes a
// directory name, so nothing that could climb or hide.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return false
		}
	}
	return true
}

func (s *Store) snapshotDir(id string) string { return filepath.Join(s.dir, "snapshots", id) }

// Snapshot prepares a container root filesystem for img: an overlay mount
// of the image's unpacked layers (read-only) under a fresh upper directory.
// It returns the path of the mount. Its cost does not depend on the image's
// size: the layers are already unpacked and nothing is copied.
func (s *Store) Snapshot(ctx context.Context, img *Image, containerID string) (string, error) {
	p, err := s.prepareSnapshot(ctx, img, containerID, true)
	if err != nil {
		return "", err
	}
	rootfs := filepath.Join(s.snapshotDir(containerID), "rootfs")
	if err := mountOverlay(p.lowers(), p.Upper, p.Work, rootfs, false); err != nil {
		os.RemoveAll(s.snapshotDir(containerID))
		return "", fmt.Errorf("snapshot %s: %w", containerID, err)
	}
	return rootfs, nil
}

// PrepareSnapshot makes containerID's snapshot of img, as Snapshot does,
// without mounting it: for a caller that builds the overlay itself
// (DetachSnapshot gives the parts of one already mounted). Every directory
// made costs: on a large ext4 a new inode is a few hundred microseconds of
// CPU, and the mount made only to be taken down again also synced the
// whole filesystem under it as it went.
func (s *Store) PrepareSnapshot(ctx context.Context, img *Image, containerID string) (SnapshotParts, error) {
	return s.prepareSnapshot(ctx, img, containerID, false)
}

// lowers are p's layers as overlayfs takes them, top first.
func (p SnapshotParts) lowers() []string {
	l := make([]string, 0, len(p.Layers))
	for i := len(p.Layers) - 1; i >= 0; i-- {
		l = append(l, p.Layers[i])
	}
	return l
}

func (s *Store) prepareSnapshot(ctx context.Context, img *Image, containerID string, withRootfs bool) (SnapshotParts, error) {
	if !validID(containerID) {
		return SnapshotParts{}, fmt.Errorf("snapshot %q: invalid container ID", containerID)
	}
	if err := cancelled(ctx); err != nil {
		return SnapshotParts{}, err
	}
	unlock, err := s.gcShared()
	if err != nil {
		return SnapshotParts{}, err
	}
	defer unlock()
	layers := img.Config.RootFS.DiffIDs
	var p SnapshotParts
	for i := range layers {
		if !s.HasLayer(layers[i]) {
			// Loaded or pulled by an older store: unpack once, now.
			if err := s.ensureLayer(img.Layers()[i], nil, nil); err != nil {
				return p, fmt.Errorf("snapshot %s: %w", containerID, err)
			}
		}
		p.Layers = append(p.Layers, filepath.Join(s.layerDir(layers[i]), "fs"))
	}
	dir := s.snapshotDir(containerID)
	if _, err := os.Lstat(dir); err == nil {
		return p, fmt.Errorf("snapshot %s: already exists", containerID)
	}
	// 0711: see Open; the mkdir (or the rename of a spare, which keeps
	// its mode) is also what makes the ID taken.
	if !s.claimSpare(dir) {
		if err := os.Mkdir(dir, 0o711); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return p, fmt.Errorf("snapshot %s: already exists", containerID)
			}
			return p, fmt.Errorf("snapshot %s: %w", containerID, err)
		}
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	if len(p.Layers) == 0 {
		// An image with no layers still needs one lower directory.
		empty := filepath.Join(dir, "empty")
		if err := os.Mkdir(empty, 0o755); err != nil {
			return p, fmt.Errorf("snapshot %s: %w", containerID, err)
		}
		p.Layers = append(p.Layers, empty)
	}
	p.Upper, p.Work = filepath.Join(dir, "upper"), filepath.Join(dir, "work")
	dirs := []string{p.Upper, p.Work}
	if withRootfs {
		dirs = append(dirs, filepath.Join(dir, "rootfs"))
	}
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return p, fmt.Errorf("snapshot %s: %w", containerID, err)
		}
	}
	mb, err := json.Marshal(snapshotMeta{Image: img.Digest, Layers: layers})
	if err != nil {
		return p, err
	}
	if err := rewrite.File(filepath.Join(dir, "meta.json"), mb, 0o600); err != nil {
		return p, fmt.Errorf("snapshot %s: %w", containerID, err)
	}
	ok = true
	return p, nil
}

// mountOverlay uses the new mount API, whose lowerdir+ takes one layer per
// call, so an image's layer count is not bounded by mount(2)'s one-page
// option string; older kernels fall back to mount(2).
func mountOverlay(lowers []string, upper, work, target string, volatile bool) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return mountOverlayLegacy(lowers, upper, work, target, volatile)
	}
	defer unix.Close(fsfd)
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fsfd, k, v); err != nil {
			return fmt.Errorf("overlay option %s=%s: %w", k, v, err)
		}
		return nil
	}
	for _, l := range lowers {
		if err := set("lowerdir+", l); err != nil {
			if errors.Is(err, unix.EINVAL) {
				return mountOverlayLegacy(lowers, upper, work, target, volatile)
			}
			return err
		}
	}
	if err := set("upperdir", upper); err != nil {
		return err
	}
	if err := set("workdir", work); err != nil {
		return err
	}
	// index=off and no xino: snapshots never move between filesystems and
	// the options would make mounting slower and the upper dir less portable.
	for _, kv := range [][2]string{{"index", "off"}} {
		if err := set(kv[0], kv[1]); err != nil {
			return err
		}
	}
	if volatile {
		if err := unix.FsconfigSetFlag(fsfd, "volatile"); err != nil {
			return fmt.Errorf("overlay option volatile: %w", err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsmount overlay: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move overlay mount to %s: %w", target, err)
	}
	return nil
}

func mountOverlayLegacy(lowers []string, upper, work, target string, volatile bool) error {
	opts := "lowerdir=" + joinColon(lowers) + ",upperdir=" + upper + ",workdir=" + work + ",index=off"
	if volatile {
		opts += ",volatile"
	}
	if len(opts) >= unix.Getpagesize() {
		return fmt.Errorf("overlay options of %d bytes exceed a page: too many layers for this kernel", len(opts))
	}
	if err := unix.Mount("overlay", target, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay on %s: %w", target, err)
	}
	return nil
}

func joinColon(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ":"
		}
		out += s
	}
	return out
}

// MountSnapshot makes sure the snapshot of containerID is mounted and
// returns its rootfs: after a reboot, or when the agent restarts and finds
// its containers' snapshots, the upper directory (the container's writes)
// is mounted again over the same layers.
func (s *Store) MountSnapshot(containerID string) (string, error) {
	if !validID(containerID) {
		return "", fmt.Errorf("mount snapshot %q: invalid container ID", containerID)
	}
	unlock, err := s.gcShared()
	if err != nil {
		return "", err
	}
	defer unlock()
	dir := s.snapshotDir(containerID)
	m, err := s.snapshotMeta(containerID)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("mount snapshot %s: %w", containerID, ErrNotFound)
		}
		return "", fmt.Errorf("mount snapshot %s: %w", containerID, err)
	}
	rootfs := filepath.Join(dir, "rootfs")
	mounted, err := mountinfo.IsMountPoint(rootfs)
	if err != nil {
		return "", fmt.Errorf("mount snapshot %s: %w", containerID, err)
	}
	if mounted {
		return rootfs, nil
	}
	var lowers []string
	for i := len(m.Layers) - 1; i >= 0; i-- {
		if !s.HasLayer(m.Layers[i]) {
			return "", fmt.Errorf("mount snapshot %s: layer %s: %w", containerID, m.Layers[i], ErrNotFound)
		}
		lowers = append(lowers, filepath.Join(s.layerDir(m.Layers[i]), "fs"))
	}
	if len(lowers) == 0 {
		lowers = append(lowers, filepath.Join(dir, "empty"))
	}
	// A work directory left by an unclean shutdown must be empty again.
	work := filepath.Join(dir, "work")
	if err := os.RemoveAll(work); err != nil {
		return "", fmt.Errorf("mount snapshot %s: %w", containerID, err)
	}
	if err := os.Mkdir(work, 0o755); err != nil {
		return "", fmt.Errorf("mount snapshot %s: %w", containerID, err)
	}
	if err := mountOverlay(lowers, filepath.Join(dir, "upper"), work, rootfs, false); err != nil {
		return "", fmt.Errorf("mount snapshot %s: %w", containerID, err)
	}
	return rootfs, nil
}

// RemoveSnapshot unmounts a container's root filesystem and deletes its
// upper directory. Removing a snapshot that does not exist is not an error.
func (s *Store) RemoveSnapshot(containerID string) error {
	if !validID(containerID) {
		return fmt.Errorf("remove snapshot %q: invalid container ID", containerID)
	}
	dir := s.snapshotDir(containerID)
	rootfs := filepath.Join(dir, "rootfs")
	for {
		err := unix.Unmount(rootfs, unix.MNT_DETACH)
		if err == nil {
			continue // stacked mounts: peel them all
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		return fmt.Errorf("remove snapshot %s: unmount: %w", containerID, err)
	}
	if err := s.spareOrRemove(dir, containerID); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", containerID, err)
	}
	return nil
}

// SnapshotParts are the directories a snapshot is made of, for a caller
// that builds the overlay itself (the agent mounts each layer idmapped
// into a container's user namespace).
type SnapshotParts struct {
	Layers      []string // unpacked layer directories, bottom first
	Upper, Work string
}

// DetachSnapshot returns the parts of containerID's snapshot and unmounts
// the store's own overlay of them, which such a caller does not use. The
// snapshot stays (and keeps its layers from garbage collection) until
// RemoveSnapshot.
func (s *Store) DetachSnapshot(containerID string) (SnapshotParts, error) {
	if !validID(containerID) {
		return SnapshotParts{}, fmt.Errorf("snapshot %q: invalid container ID", containerID)
	}
	dir := s.snapshotDir(containerID)
	m, err := s.snapshotMeta(containerID)
	if err != nil {
		return SnapshotParts{}, fmt.Errorf("snapshot %s: %w", containerID, err)
	}
	if err := unix.Unmount(filepath.Join(dir, "rootfs"), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return SnapshotParts{}, fmt.Errorf("snapshot %s: unmount: %w", containerID, err)
	}
	p := SnapshotParts{Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work")}
	for _, l := range m.Layers {
		p.Layers = append(p.Layers, filepath.Join(s.layerDir(l), "fs"))
	}
	return p, nil
}

// MountOverlay mounts an overlay of lowers (top first) under upper at
// target. A volatile overlay never syncs upper's filesystem (see the
// kernel's overlayfs documentation): for a container removed after its
// run, whose removal would otherwise sync the whole disk.
func MountOverlay(lowers []string, upper, work, target string, volatile bool) error {
	return mountOverlay(lowers, upper, work, target, volatile)
}

// Snapshots lists the container IDs that have a snapshot.
func (s *Store) Snapshots() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") { // .spare is no snapshot
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

func (s *Store) snapshotMeta(id string) (snapshotMeta, error) {
	var m snapshotMeta
	b, err := os.ReadFile(filepath.Join(s.snapshotDir(id), "meta.json"))
	if err != nil {
		return m, err
	}
	return m, json.Unmarshal(b, &m)
}
