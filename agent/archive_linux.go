package agent

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoSuchPath is returned for a path that does not exist in a container.
const ErrNoSuchPath = Error("no such file or directory")

// openInRoot opens p as the container sees it: every component, symlinks
// included, resolved inside the directory rootfd, which nothing escapes.
func openInRoot(rootfd int, p string, flags int) (int, error) {
	rel := strings.TrimLeft(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	how := &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	for {
		fd, err := unix.Openat2(rootfd, rel, how)
		// EAGAIN: a rename raced the lookup; the kernel asks for a retry.
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// containerRoot opens the root filesystem of the container ref, which
// exists from Create to Remove, running or not.
func (a *Agent) containerRoot(ref string) (int, IDRange, string, error) {
	c, err := a.get(ref)
	if err != nil {
		return -1, IDRange{}, "", err
	}
	c.mu.Lock()
	id, ids := c.meta.ID, c.meta.IDs
	if c.removed {
		c.mu.Unlock()
		return -1, ids, id, fmt.Errorf("container %q: %w", ref, ErrNotFound)
	}
	// Mounted at Create, and again here for a container that has not run
	// since the node restarted.
	err = a.mountRootfs(id, ids, c.meta.Spec.Ephemeral, nil)
	c.mu.Unlock()
	if err != nil {
		return -1, ids, id, fmt.Errorf("container %s: mount its filesystem: %w", id, err)
	}
	fd, err := unix.Open(a.rootfs(id), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, ids, id, fmt.Errorf("container %s: open root: %w", id, err)
	}
	return fd, ids, id, nil
}

// CopyFrom writes a tar of src in the container (a file, or a directory
// and all below it) to w, as docker cp does: entries are named from src's
// last element, owners as the container sees them, symlinks as links.
func (a *Agent) CopyFrom(ctx context.Context, ref, src string, w io.Writer) error {
	rootfd, ids, id, err := a.containerRoot(ref)
	if err != nil {
		return err
	}
	defer unix.Close(rootfd)
	return archiveFrom(ctx, rootfd, src, ids, w, "container "+id)
}

// archiveFrom writes a tar of src below the directory rootfd to w; what
// names the tree in errors.
func archiveFrom(ctx context.Context, rootfd int, src string, ids IDRange, w io.Writer, what string) error {
	clean := path.Clean("/" + src)
	dir, name := path.Dir(clean), path.Base(clean)
	if clean == "/" {
		dir, name = "/", "."
	}
	dfd, err := openInRoot(rootfd, dir, unix.O_PATH|unix.O_DIRECTORY)
	if err == nil {
		var st unix.Stat_t
		err = unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err != nil {
			unix.Close(dfd)
		}
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%s: %s: %w", what, clean, ErrNoSuchPath)
	}
	if err != nil {
		return fmt.Errorf("%s: %s: %w", what, clean, err)
	}
	defer unix.Close(dfd)
	tw := tar.NewWriter(w)
	if err := tarWalk(ctx, tw, dfd, name, name, ids); err != nil {
		return fmt.Errorf("copy %s from %s: %w", clean, what, err)
	}
	return tw.Close()
}

// tarWalk writes name (in the directory dirfd) and what is below it.
// Each step opens one component without following symlinks, so a
// container changing its files meanwhile cannot lead outside.
func tarWalk(ctx context.Context, tw *tar.Writer, dirfd int, name, tarName string, ids IDRange) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	h := &tar.Header{Name: tarName, Mode: int64(st.Mode & 0o7777), Uid: int(ids.inside(st.Uid)), Gid: int(ids.inside(st.Gid)),
		ModTime: time.Unix(st.Mtim.Unix()).UTC(), Format: tar.FormatPAX}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		h.Typeflag = tar.TypeDir
		h.Name = strings.TrimSuffix(tarName, "/") + "/"
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), tarName)
		defer f.Close()
		names, err := f.Readdirnames(-1)
		if err != nil {
			return err
		}
		slices.Sort(names)
		for _, n := range names {
			if err := tarWalk(ctx, tw, fd, n, path.Join(tarName, n), ids); err != nil {
				return err
			}
		}
		return nil
	case unix.S_IFREG:
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), tarName)
		defer f.Close()
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return fmt.Errorf("%s: changed while read", tarName)
		}
		h.Typeflag, h.Size = tar.TypeReg, st.Size
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = io.CopyN(tw, f, st.Size)
		return err
	case unix.S_IFLNK:
		buf := make([]byte, 4096)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return err
		}
		h.Typeflag, h.Linkname = tar.TypeSymlink, string(buf[:n])
	case unix.S_IFIFO:
		h.Typeflag = tar.TypeFifo
	case unix.S_IFCHR, unix.S_IFBLK:
		h.Typeflag = tar.TypeChar
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			h.Typeflag = tar.TypeBlock
		}
		h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	default:
		return nil // sockets mean nothing in a copy
	}
	return tw.WriteHeader(h)
}

// inside maps a host id to the container's view of it; one outside the
// container's range is the overflow id, as the kernel shows it there.
func (r IDRange) inside(host uint32) uint32 {
	if host >= r.Base && host-r.Base < r.Size {
		return host - r.Base
	}
	return 65534
}

// CopyTo extracts the tar r into the directory dst of the container, as
// docker cp does. The archive is read and vetted whole first (see
// archiveCheck), so a refused one writes nothing; owners are mapped into
// the container's user namespace; every path resolves inside the
// container's root.
func (a *Agent) CopyTo(ctx context.Context, ref, dst string, r io.Reader) error {
	rootfd, ids, id, err := a.containerRoot(ref)
	if err != nil {
		return err
	}
	defer unix.Close(rootfd)
	return extractInto(ctx, rootfd, dst, ids, a.dir(id), r, "container "+id)
}

// extractInto extracts the tar r into dst below the directory rootfd,
// spooling it in spoolDir to vet it whole first; what names the tree in
// errors.
func extractInto(ctx context.Context, rootfd int, dst string, ids IDRange, spoolDir string, r io.Reader, what string) error {
	dst = path.Clean("/" + dst)
	dfd, err := openInRoot(rootfd, dst, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return invalidf("%s: destination %s: not a directory", what, dst)
	}
	if err != nil {
		return fmt.Errorf("%s: destination %s: %w", what, dst, err)
	}
	unix.Close(dfd)

	// Spooled on the host, beside the tree, to be vetted whole.
	spool, err := os.CreateTemp(spoolDir, "upload-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	if _, err := io.Copy(spool, r); err != nil {
		return fmt.Errorf("copy to %s: read archive: %w", what, err)
	}
	chk := archiveCheck{ids: ids.Size}
	if err := eachEntry(spool, func(h *tar.Header, _ io.Reader) error {
		_, err := chk.check(h)
		return err
	}); err != nil {
		return err
	}
	chk = archiveCheck{ids: ids.Size}
	return eachEntry(spool, func(h *tar.Header, data io.Reader) error {
		name, err := chk.check(h)
		if err != nil || name == "" {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := extractEntry(rootfd, dst, name, h, data, ids); err != nil {
			return fmt.Errorf("copy to %s: %s: %w", what, path.Join(dst, name), err)
		}
		return nil
	})
}

// volumeIDs is how a volume's files are owned on disk: as the containers
// that mount it see them (the mount is idmapped), so copies keep those ids.
func volumeIDs() IDRange { return IDRange{Base: 0, Size: DefaultIDPool().Size} }

// VolumeCopyFrom writes a tar of a named volume's contents to w, owners as
// containers see them: what a move to another node copies.
func (a *Agent) VolumeCopyFrom(ctx context.Context, name string, w io.Writer) error {
	if !validName(name, 128, "_.-") {
		return invalidf("volume %q: invalid name", name)
	}
	data := filepath.Join(a.cfg.Root, "volumes", name, "_data")
	fd, err := unix.Open(data, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("volume %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	defer unix.Close(fd)
	return archiveFrom(ctx, fd, "/", volumeIDs(), w, "volume "+name)
}

// VolumeCopyTo extracts the tar r into a named volume, made if needed.
func (a *Agent) VolumeCopyTo(ctx context.Context, name string, r io.Reader) error {
	if !validName(name, 128, "_.-") {
		return invalidf("volume %q: invalid name", name)
	}
	data, err := a.ensureVolume(name)
	if err != nil {
		return err
	}
	fd, err := unix.Open(data, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	defer unix.Close(fd)
	return extractInto(ctx, fd, "/", volumeIDs(), filepath.Dir(data), r, "volume "+name)
}

func eachEntry(f *os.File, fn func(*tar.Header, io.Reader) error) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return invalidf("archive: %v", err)
		}
		if err := fn(h, tr); err != nil {
			return err
		}
	}
}

// extractEntry writes one vetted entry at dst/name. The parent is found
// inside the root; the entry itself is made with *at calls that never
// follow a symlink in its place.
func extractEntry(rootfd int, dst, name string, h *tar.Header, data io.Reader, ids IDRange) error {
	pfd, err := mkdirAllInRoot(rootfd, dst, path.Dir(name), ids)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	base := path.Base(name)
	uid, gid := int(ids.Base)+h.Uid, int(ids.Base)+h.Gid
	mode := uint32(h.Mode & 0o7777)

	var st unix.Stat_t
	exists := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	isDir := exists && st.Mode&unix.S_IFMT == unix.S_IFDIR
	if exists && h.Typeflag != tar.TypeDir {
		if isDir {
			return errors.New("a directory is in the way")
		}
		if err := unix.Unlinkat(pfd, base, 0); err != nil {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if exists && !isDir {
			return errors.New("exists and is not a directory")
		}
		if !exists {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return err
			}
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return ownAndMode(fd, uid, gid, mode)
	case tar.TypeReg:
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), base)
		defer f.Close()
		if _, err := io.Copy(f, data); err != nil {
			return err
		}
		if err := ownAndMode(fd, uid, gid, mode); err != nil {
			return err
		}
		ts := []unix.Timespec{unix.NsecToTimespec(h.ModTime.UnixNano()), unix.NsecToTimespec(h.ModTime.UnixNano())}
		return unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(h.Linkname, pfd, base); err != nil {
			return err
		}
		return unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	case tar.TypeLink:
		target := path.Join(dst, path.Clean(h.Linkname))
		lfd, err := openInRoot(rootfd, path.Dir(target), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return fmt.Errorf("hard link target %s: %w", h.Linkname, err)
		}
		defer unix.Close(lfd)
		return unix.Linkat(lfd, path.Base(target), pfd, base, 0)
	case tar.TypeFifo:
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return err
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return ownAndMode(fd, uid, gid, mode)
	}
	return nil
}

// ownAndMode sets an open file's owner, then its mode (a chown clears
// set-id bits).
func ownAndMode(fd, uid, gid int, mode uint32) error {
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return err
	}
	return unix.Fchmod(fd, mode)
}

// mkdirAllInRoot opens dst/rel inside the root, making missing
// directories of rel as the container's root.
func mkdirAllInRoot(rootfd int, dst, rel string, ids IDRange) (int, error) {
	fd, err := openInRoot(rootfd, path.Join(dst, rel), unix.O_PATH|unix.O_DIRECTORY)
	if !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	cur := dst
	for _, el := range strings.Split(rel, "/") {
		pfd, err := openInRoot(rootfd, cur, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return -1, err
		}
		err = unix.Mkdirat(pfd, el, 0o755)
		if err == nil {
			err = unix.Fchownat(pfd, el, int(ids.Base), int(ids.Base), unix.AT_SYMLINK_NOFOLLOW)
		} else if errors.Is(err, unix.EEXIST) {
			err = nil
		}
		unix.Close(pfd)
		if err != nil {
			return -1, err
		}
		cur = path.Join(cur, el)
	}
	return openInRoot(rootfd, cur, unix.O_PATH|unix.O_DIRECTORY)
}
