package unpack

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

type entry struct {
	name, link, body string
	typ              byte
	mode             int64
	pax              map[string]string
	uid              int
	major, minor     int64
}

func mkTar(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), PAXRecords: e.pax, Uid: e.uid, Gid: e.uid, Devmajor: e.major, Devminor: e.minor}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return &buf
}

func TestCleanRefusesClimbing(t *testing.T) {
	for in, want := range map[string]string{"a/b": "a/b", "/etc/passwd": "etc/passwd", "./x/": "x", "/": ".", "a//b/.": "a/b"} {
		got, err := Clean(in)
		if err != nil || got != want {
			t.Errorf("Clean(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"../x", "a/../../x", "a/..", "a\x00b", strings.Repeat("a", 5000)} {
		if _, err := Clean(in); err == nil {
			t.Errorf("Clean(%q) succeeded", in)
		}
	}
}

// hostile layers: each must fail with a clear error, and nothing outside the
// target may change.
func TestHostileLayersAreRefusedOrContained(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to keep ownership")
	}
	cases := []struct {
		name    string
		tar     func(t *testing.T, outside string) *bytes.Buffer
		wantErr string // empty: contained without error
	}{
		{"dotdot path", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "../" + filepath.Base(o) + "/pwned", body: "x"})
		}, "climbs out"},
		{"absolute path stays inside", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: o + "/pwned", body: "x"})
		}, ""},
		{"symlink then file through it", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "evil", link: o, typ: tar.TypeSymlink}, entry{name: "evil/pwned", body: "x"})
		}, "evil/pwned"},
		{"relative symlink climbing then file", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "evil", link: "../../../../../../../../" + o, typ: tar.TypeSymlink}, entry{name: "evil/pwned", body: "x"})
		}, "evil/pwned"},
		{"symlink then file replacing it", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "evil", link: o + "/victim", typ: tar.TypeSymlink}, entry{name: "evil", body: "x"})
		}, ""},
		{"hard link to /etc/shadow", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "shadow", link: "/etc/shadow", typ: tar.TypeLink})
		}, "hard link"},
		{"hard link climbing", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "v", link: "../" + filepath.Base(o) + "/victim", typ: tar.TypeLink})
		}, "outside the layer"},
		{"hard link through symlink", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "d", link: o, typ: tar.TypeSymlink}, entry{name: "v", link: "d/victim", typ: tar.TypeLink})
		}, "hard link"},
		{"huge pax header", func(t *testing.T, o string) *bytes.Buffer {
			return hugePax(t)
		}, "read tar"},
		{"whiteout of parent", func(t *testing.T, o string) *bytes.Buffer {
			return mkTar(t, entry{name: "../.wh." + filepath.Base(o)})
		}, "climbs out"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			target := filepath.Join(base, "target")
			os.Mkdir(outside, 0o755)
			os.Mkdir(target, 0o755)
			os.WriteFile(filepath.Join(outside, "victim"), []byte("safe"), 0o644)
			_, err := Layer(c.tar(t, outside), target, nil)
			if c.wantErr == "" && err != nil {
				t.Fatalf("want contained, got %v", err)
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("want error containing %q, got %v", c.wantErr, err)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Fatalf("outside dir changed: %v", ents)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "victim")); string(b) != "safe" {
				t.Fatalf("victim changed: %q", b)
			}
			ents, _ = os.ReadDir(base)
			if len(ents) != 2 {
				t.Fatalf("files appeared beside the target: %v", ents)
			}
		})
	}
}

func TestLayerKeepsOverlayFormatAndMetadata(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for ownership, devices and trusted xattrs")
	}
	dir := t.TempDir()
	sparse := make([]byte, 1<<20)
	copy(sparse[len(sparse)-5:], "tail!")
	res, err := Layer(mkTar(t,
		entry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "etc/owned", body: "x", uid: 1234},
		entry{name: "etc/suid", body: "x", mode: 0o4755},
		entry{name: "etc/hard", link: "etc/owned", typ: tar.TypeLink},
		entry{name: "etc/sym", link: "/etc/owned", typ: tar.TypeSymlink},
		entry{name: "etc/.wh.gone"},
		entry{name: "opq/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "opq/.wh..wh..opq"},
		entry{name: "attr", body: "x", pax: map[string]string{"SCHILY.xattr.user.berth": "yes"}},
		entry{name: "sparse", body: string(sparse)},
		entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
	), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	check := func(name string) {
		t.Helper()
		if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Fatal(err)
		}
	}
	check("etc/owned")
	if st.Uid != 1234 || st.Nlink != 2 {
		t.Errorf("etc/owned uid %d nlink %d", st.Uid, st.Nlink)
	}
	check("etc/suid")
	if st.Mode&unix.S_ISUID == 0 {
		t.Errorf("setuid bit lost: %o", st.Mode)
	}
	check("etc/gone")
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout is not a 0/0 char device: mode %o rdev %d", st.Mode, st.Rdev)
	}
	buf := make([]byte, 8)
	if n, err := unix.Getxattr(filepath.Join(dir, "opq"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque xattr: %q %v", buf[:n], err)
	}
	if n, err := unix.Getxattr(filepath.Join(dir, "attr"), "user.berth", buf); err != nil || string(buf[:n]) != "yes" {
		t.Errorf("user xattr: %q %v", buf[:n], err)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "etc/sym")); l != "/etc/owned" {
		t.Errorf("symlink target %q", l)
	}
	check("sparse")
	if st.Size != 1<<20 || st.Blocks*512 >= 1<<20 {
		t.Errorf("sparse file: size %d, %d bytes allocated", st.Size, st.Blocks*512)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "sparse")); !bytes.Equal(b, sparse) {
		t.Error("sparse file content differs")
	}
	check("dev/null")
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || len(res.SkippedDevices) != 0 {
		t.Errorf("device: mode %o, skipped %v", st.Mode, res.SkippedDevices)
	}
}

// hugePax writes a PAX extended header of 2 MiB, which archive/tar's writer
// would refuse to make: a regular entry whose type byte is patched to 'x'.
func hugePax(t *testing.T) *bytes.Buffer {
	t.Helper()
	rec := "comment=" + strings.Repeat("A", 2<<20) + "\n"
	n := len(rec) + 8
	rec = strconv.Itoa(n) + " " + rec
	buf := mkTar(t, entry{name: "PaxHeaders/big", body: rec}, entry{name: "big", body: "x"})
	b := buf.Bytes()
	b[156] = 'x'
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return buf
}

// GNU tar's own sparse encoding (-S) must come out as a sparse file with the
// same content.
func TestGNUSparseFileStaysSparse(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to keep ownership")
	}
	src := t.TempDir()
	f, err := os.Create(filepath.Join(src, "holes"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("tail"), 8<<20)
	f.Close()
	for _, format := range []string{"gnu", "posix"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			cmd := exec.Command("tar", "-C", src, "-S", "--format="+format, "-cf", "-", "holes")
			cmd.Stdout = &buf
			if err := cmd.Run(); err != nil {
				t.Fatalf("tar: %v", err)
			}
			dir := t.TempDir()
			if _, err := Layer(&buf, dir, nil); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(dir, "holes"), &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != 8<<20+4 || st.Blocks*512 > 1<<20 {
				t.Fatalf("size %d, %d bytes allocated", st.Size, st.Blocks*512)
			}
			b, _ := os.ReadFile(filepath.Join(dir, "holes"))
			if string(b[:4]) != "head" || string(b[8<<20:]) != "tail" || !allZero(b[4:8<<20]) {
				t.Fatal("content differs")
			}
		})
	}
}

// A layer may not set overlayfs's own xattrs (a redirect could point
// lookups anywhere) nor smuggle AUFS metadata in as files.
func TestOverlayMetadataFromTheTarIsIgnored(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root for trusted xattrs")
	}
	dir := t.TempDir()
	_, err := Layer(mkTar(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o755, pax: map[string]string{"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.ok": "1"}},
		entry{name: ".wh..wh.plnk/", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/.wh..wh.aufs", body: "x"},
	), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := unix.Getxattr(filepath.Join(dir, "d"), "trusted.overlay.redirect", buf); err == nil {
		t.Error("trusted.overlay.redirect was set from the tar")
	}
	if n, err := unix.Getxattr(filepath.Join(dir, "d"), "user.ok", buf); err != nil || string(buf[:n]) != "1" {
		t.Errorf("ordinary xattr lost: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "d"))
	if top, _ := os.ReadDir(dir); len(top) != 1 || len(ents) != 0 {
		t.Errorf("AUFS metadata extracted: %v %v", top, ents)
	}
}

// A header that promises more content than the stream holds fails cleanly.
func TestTruncatedLayerFails(t *testing.T) {
	b := mkTar(t, entry{name: "big", body: strings.Repeat("x", 100_000)}).Bytes()
	_, err := Layer(bytes.NewReader(b[:50_000]), t.TempDir(), nil)
	if err == nil || !strings.Contains(err.Error(), "big: read content") {
		t.Fatalf("want an error naming big's content, got %v", err)
	}
}
