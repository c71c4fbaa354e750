// Package unpack extracts one image layer (a tar stream) into a directory in
// the form overlayfs stacks: whiteouts become 0/0 character devices, opaque
// markers become the trusted.overlay.opaque xattr. Extraction goes through an
// os.Root, so no path, symlink or hard link in the tar can reach outside the
// target directory whatever the tar says; ownership is kept as the tar has it
// (uid 0 stays 0) so the runtime can use idmapped mounts instead of copying.
package unpack

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	// whiteoutMetaPrefix starts AUFS bookkeeping names, never real files.
	whiteoutMetaPrefix = ".wh..wh."
	// overlayXattrPrefix holds overlayfs's own metadata (opaque, redirect,
	// metacopy); a layer may only say "opaque", and only with its marker
	// file, or it could redirect lookups to paths it does not own.
	overlayXattrPrefix = "trusted.overlay."
	// A tar entry's name longer than PATH_MAX cannot be a real file.
	maxNameLen = 4096
)

// Result describes what extraction did that the caller must remember.
type Result struct {
	Files int
	// Devices that the kernel refused to create (an unprivileged user
	// namespace, say): recorded so the runtime can bind them in or warn.
	SkippedDevices []string `json:",omitempty"`
}

// Layer extracts the uncompressed tar r into dir, which must exist and be
// empty. It fails on the first entry that is malformed or would escape dir.
func Layer(r io.Reader, dir string, log *slog.Logger) (Result, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Result{}, fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()
	var res Result
	type dirTime struct {
		name  string
		mtime time.Time
	}
	var dirTimes []dirTime
	tr := tar.NewReader(r)
	buf := make([]byte, 128<<10)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, fmt.Errorf("unpack: read tar: %w", err)
		}
		name, err := Clean(hdr.Name)
		if err != nil {
			return res, fmt.Errorf("unpack: %w", err)
		}
		if name == "." {
			// The layer's root: only its metadata could apply, and the
			// snapshot's upper directory owns that.
			continue
		}
		dirName, base := path.Split(name)
		dirName = strings.TrimSuffix(dirName, "/")
		if dirName == "" {
			dirName = "."
		}
		if err := root.MkdirAll(dirName, 0o755); err != nil {
			return res, fmt.Errorf("unpack %s: parent: %w", hdr.Name, err)
		}
		if base == opaqueMarker {
			if err := setXattr(root, dirName, "trusted.overlay.opaque", []byte("y")); err != nil {
				return res, fmt.Errorf("unpack %s: opaque: %w", hdr.Name, err)
			}
			continue
		}
		if strings.HasPrefix(base, whiteoutMetaPrefix) {
			// Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs) means
			// nothing to overlayfs; Docker drops it too.
			continue
		}
		if strings.HasPrefix(base, whiteoutPrefix) {
			target := path.Join(dirName, strings.TrimPrefix(base, whiteoutPrefix))
			if err := replace(root, target, false); err != nil {
				return res, fmt.Errorf("unpack %s: %w", hdr.Name, err)
			}
			if err := mknod(root, target, unix.S_IFCHR, 0); err != nil {
				return res, fmt.Errorf("unpack %s: whiteout: %w", hdr.Name, err)
			}
			continue
		}
		isDir := hdr.Typeflag == tar.TypeDir
		if err := replace(root, name, isDir); err != nil {
			return res, fmt.Errorf("unpack %s: %w", hdr.Name, err)
		}
		mode := uint32(hdr.Mode) & 0o7777
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return res, fmt.Errorf("unpack %s: %w", hdr.Name, err)
			}
			dirTimes = append(dirTimes, dirTime{name, hdr.ModTime})
		case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
			// archive/tar expands GNU sparse maps; writeFile punches the
			// holes back. A contiguous file is a regular one to Linux.
			if err := writeFile(root, name, tr, hdr.Size, buf); err != nil {
				return res, fmt.Errorf("unpack %s: %w", hdr.Name, err)
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
			if err := mknod(root, name, kind|0o600, dev); err != nil {
				if errors.Is(err, unix.EPERM) && hdr.Typeflag != tar.TypeFifo {
					log.Warn("device node not created", "path", name, "err", err)
					res.SkippedDevices = append(res.SkippedDevices, "/"+name)
					continue
				}
				return res, fmt.Errorf("unpack %s: mknod: %w", hdr.Name, err)
			}
		case tar.TypeSymlink:
			if len(hdr.Linkname) > maxNameLen {
				return res, fmt.Errorf("unpack %s: symlink target too long", hdr.Name)
			}
			// The target is stored as written: it is resolved inside the
			// container's root at run time, and os.Root refuses to follow it
			// out of dir during extraction.
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return res, fmt.Errorf("unpack %s: %w", hdr.Name, err)
			}
		case tar.TypeLink:
			old, err := Clean(hdr.Linkname)
			if err != nil || old == "." {
				return res, fmt.Errorf("unpack %s: hard link target %q: outside the layer", hdr.Name, hdr.Linkname)
			}
			if err := root.Link(old, name); err != nil {
				return res, fmt.Errorf("unpack %s: hard link to %s: %w", hdr.Name, hdr.Linkname, err)
			}
			res.Files++
			continue // a hard link shares its target's metadata
		case tar.TypeXGlobalHeader:
			continue
		default:
			return res, fmt.Errorf("unpack %s: unsupported tar entry type %q", hdr.Name, hdr.Typeflag)
		}
		res.Files++
		if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return res, fmt.Errorf("unpack %s: chown: %w", hdr.Name, err)
		}
		if hdr.Typeflag == tar.TypeSymlink {
			if err := lutimes(root, name, hdr.ModTime); err != nil {
				return res, fmt.Errorf("unpack %s: times: %w", hdr.Name, err)
			}
			continue
		}
		for k, v := range hdr.PAXRecords {
			if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if strings.HasPrefix(attr, overlayXattrPrefix) {
					log.Warn("overlay xattr in layer ignored", "path", name, "xattr", attr)
					continue
				}
				if err := setXattr(root, name, attr, []byte(v)); err != nil {
					return res, fmt.Errorf("unpack %s: xattr %s: %w", hdr.Name, attr, err)
				}
			}
		}
		// After chown, which clears setuid bits.
		if err := root.Chmod(name, fs.FileMode(mode&0o777)|modeBits(mode)); err != nil {
			return res, fmt.Errorf("unpack %s: chmod: %w", hdr.Name, err)
		}
		if !isDir {
			if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
				return res, fmt.Errorf("unpack %s: times: %w", hdr.Name, err)
			}
		}
	}
	// Directory times last: creating entries inside changed them.
	for i := len(dirTimes) - 1; i >= 0; i-- {
		if err := root.Chtimes(dirTimes[i].name, dirTimes[i].mtime, dirTimes[i].mtime); err != nil {
			return res, fmt.Errorf("unpack %s: times: %w", dirTimes[i].name, err)
		}
	}
	return res, nil
}

// Clean turns a tar entry name into a path relative to the layer root,
// refusing names that climb out of it. Leading slashes are dropped, as every
// layer tool does, and the result is then checked inside the root anyway.
func Clean(name string) (string, error) {
	if len(name) > maxNameLen {
		return "", fmt.Errorf("entry name of %d bytes is too long", len(name))
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("entry name %q contains NUL", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q: path climbs out of the layer", name)
		}
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

func modeBits(m uint32) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// replace clears whatever is at name so a new entry can take its place; an
// existing directory stays when the new entry is a directory too (its
// contents merge, as tar does).
func replace(root *os.Root, name string, isDir bool) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if isDir && fi.IsDir() {
		return nil
	}
	return root.RemoveAll(name)
}

func writeFile(root *os.Root, name string, r io.Reader, size int64, buf []byte) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	// Runs of zeros become holes, so sparse files stay sparse on disk.
	var written int64
	for written < size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), size-written)])
		if n > 0 {
			if allZero(buf[:n]) {
				if _, err := f.Seek(int64(n), io.SeekCurrent); err != nil {
					f.Close()
					return err
				}
			} else if _, err := f.Write(buf[:n]); err != nil {
				f.Close()
				return err
			}
			written += int64(n)
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("read content: %w", err)
		}
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func allZero(b []byte) bool {
	return len(bytes.TrimLeft(b, "\x00")) == 0
}

// withParent runs fn with a descriptor of name's parent, opened through
// root so the kernel call that follows cannot be redirected outside it.
func withParent(root *os.Root, name string, fn func(dirfd int, base string) error) error {
	dir, base := path.Split(name)
	if dir == "" {
		dir = "."
	}
	d, err := root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()), base)
}

func mknod(root *os.Root, name string, mode uint32, dev int) error {
	return withParent(root, name, func(dirfd int, base string) error {
		return unix.Mknodat(dirfd, base, mode, dev)
	})
}

func lutimes(root *os.Root, name string, t time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(t.UnixNano()), unix.NsecToTimespec(t.UnixNano())}
	return withParent(root, name, func(dirfd int, base string) error {
		return unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

func setXattr(root *os.Root, name, attr string, value []byte) error {
	f, err := root.OpenFile(name, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// fsetxattr does not take O_PATH descriptors; the /proc path of the
	// descriptor names exactly the inode that was opened inside root.
	return unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), attr, value, 0)
}
