package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/berth-dev/berth/api"
	"github.com/spf13/cobra"
)

func newCpCmd(af *apiFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "cp NAME:PATH DEST|-  or  cp SRC|- NAME:DIR",
		Short: "Copy files out of or into a container",
		Long: `Copy files between a container and this machine, as a tar stream through the API.
NAME:PATH DEST copies PATH (a file or a directory) into DEST if DEST is a directory,
else to DEST itself; "-" as DEST writes the tar to stdout. SRC NAME:DIR copies SRC
into the container's directory DIR; "-" as SRC reads a tar from stdin.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := af.client()
			if name, p, ok := containerPath(args[0]); ok {
				if _, _, ok := containerPath(args[1]); ok {
					return errors.New("copying between two containers is not supported: copy through this machine")
				}
				return copyOut(cmd.Context(), c, af.tenant, name, p, args[1])
			}
			name, p, ok := containerPath(args[1])
			if !ok {
				return errors.New("one of SRC and DEST must be NAME:PATH")
			}
			return copyIn(cmd.Context(), c, af.tenant, name, args[0], p)
		},
	}
}

// containerPath splits NAME:PATH; a local path may hold a colon only after
// a slash (./a:b).
func containerPath(s string) (name, p string, ok bool) {
	name, p, ok = strings.Cut(s, ":")
	if !ok || name == "" || strings.ContainsAny(name, "/.") {
		return "", "", false
	}
	return name, p, true
}

func copyOut(ctx context.Context, c *api.Client, tenant, name, src, dest string) error {
	rc, err := c.CopyFrom(ctx, tenant, name, src)
	if err != nil {
		return err
	}
	defer rc.Close()
	if dest == "-" {
		_, err := io.Copy(os.Stdout, rc)
		return err
	}
	dir, rename := dest, ""
	if st, err := os.Stat(dest); err != nil || !st.IsDir() {
		// DEST names the copy itself.
		dir, rename = filepath.Dir(dest), filepath.Base(dest)
	}
	return extractTar(tar.NewReader(rc), dir, path.Base(path.Clean(src)), rename)
}

// extractTar writes a tar into dir without ever writing outside it; the
// top-level entry named from is written as rename when that is set.
func extractTar(tr *tar.Reader, dir, from, rename string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "./"))
		if rename != "" {
			if name == from {
				name = rename
			} else if rest, ok := strings.CutPrefix(name, from+"/"); ok {
				name = rename + "/" + rest
			}
		}
		if name == "." || name == ".." || strings.HasPrefix(name, "../") || path.IsAbs(name) {
			return fmt.Errorf("archive entry %q: outside the destination", h.Name)
		}
		mode := fs.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if err := root.Chmod(name, mode); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeReg:
			if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeSymlink:
			_ = root.Remove(name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		default:
			// Devices, fifos and hard links are left out of a copy to
			// this machine, as an unprivileged copy would.
		}
	}
}

func copyIn(ctx context.Context, c *api.Client, tenant, name, src, destDir string) error {
	if src == "-" {
		return c.CopyTo(ctx, tenant, name, destDir, os.Stdin)
	}
	if _, err := os.Lstat(src); err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src)) }()
	err := c.CopyTo(ctx, tenant, name, destDir, pr)
	pr.Close()
	return err
}

// writeTar writes src (a file or a directory tree) as a tar whose top
// entry is src's base name.
func writeTar(w io.Writer, src string) error {
	tw := tar.NewWriter(w)
	base := filepath.Dir(filepath.Clean(src))
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(base, p)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			h.Name += "/"
		}
		// Ownership inside the container is the container's root's.
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("archive %s: %w", src, err)
	}
	return tw.Close()
}
