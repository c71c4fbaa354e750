// Package image is Berth's image store: content-addressed blobs verified as
// they stream in, layers unpacked once and shared, overlay snapshots for
// containers, registry pull and push, archive import and export, and garbage
// collection. The node agent uses it in-process; `berth image` drives it.
//
// On disk, under the store's directory:
//
//	blobs/sha256/<hex>     verified blobs (manifests, configs, compressed layers)
//	layers/<diffid hex>/   fs/ (the unpacked layer, overlay format) and meta.json
//	snapshots/<id>/        upper/, work/, rootfs/ (the overlay mount) and meta.json
//	refs.json              reference → manifest descriptor
//	locks/                 flock files: gc (shared by writers, exclusive for
//	                       prune), refs, one per blob and layer being fetched
//	tmp/                   work in progress; anything here is garbage after a crash
//
// A blob or layer becomes visible by one rename, after its digest checked
// out; an image, by its reference, written after everything it names.
package image

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/image/reference"
)

// Store is one image store rooted at a directory. It is safe for concurrent
// use by goroutines and by several processes sharing the directory.
type Store struct {
	dir string
	log *slog.Logger
	// Deduplicates concurrent downloads and unpacks in this process, so
	// one goroutine fetches and the others wait for its result instead of
	// queueing on the file lock and then finding the work done.
	flight singleflight.Group
	// refsMu serialises refs.json updates within the process; the refs
	// file lock does the same across processes.
	refsMu sync.Mutex
}

// Open creates (if needed) and opens the store at dir, usually
// <berth root>/image.
func Open(dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Content stays private; the path down to a snapshot's rootfs is
	// traversable (not listable) so a container whose root is mapped to
	// another uid by a user namespace can still reach its mount.
	for _, d := range []struct {
		name string
		perm os.FileMode
	}{{".", 0o711}, {"blobs/sha256", 0o700}, {"layers", 0o711}, {"snapshots", 0o711}, {"tmp", 0o700}, {"locks", 0o700}} {
		p := filepath.Join(dir, d.name)
		if err := os.MkdirAll(p, d.perm); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
		if err := os.Chmod(p, d.perm); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	return &Store{dir: abs, log: log}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) blobPath(d digest.Digest) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func (s *Store) layerDir(diffID digest.Digest) string {
	return filepath.Join(s.dir, "layers", diffID.Encoded())
}

// HasBlob reports whether the verified blob d is present.
func (s *Store) HasBlob(d digest.Digest) bool {
	_, err := os.Stat(s.blobPath(d))
	return err == nil
}

// ReadBlob returns the content of a small blob (manifest, config).
func (s *Store) ReadBlob(d digest.Digest) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("read blob %q: %w", d, err)
	}
	b, err := os.ReadFile(s.blobPath(d))
	if err != nil {
		return nil, fmt.Errorf("read blob %s: %w", d, err)
	}
	return b, nil
}

// OpenBlob opens a blob for streaming.
func (s *Store) OpenBlob(d digest.Digest) (*os.File, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("open blob %q: %w", d, err)
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		return nil, fmt.Errorf("open blob %s: %w", d, err)
	}
	return f, nil
}

// lock takes an flock on a named lock file, shared or exclusive; the
// returned function releases it.
func (s *Store) lock(name string, how int) (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, "locks", name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

// gcShared keeps garbage collection out while content is being added and
// not yet referenced; prune takes it exclusively.
func (s *Store) gcShared() (func(), error) { return s.lock("gc", unix.LOCK_SH) }

func (s *Store) tempDir(prefix string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	d := filepath.Join(s.dir, "tmp", prefix+hex.EncodeToString(b[:]))
	return d, os.Mkdir(d, 0o700)
}

// blobWriter streams a blob into tmp/ while hashing it; Commit makes it
// visible only when digest and size match what was expected.
type blobWriter struct {
	s        *Store
	f        *os.File
	digester digest.Digester
	n        int64
	want     ocispec.Descriptor
}

func (s *Store) newBlobWriter(want ocispec.Descriptor) (*blobWriter, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "blob-")
	if err != nil {
		return nil, fmt.Errorf("ingest %s: %w", want.Digest, err)
	}
	alg := digest.SHA256
	if want.Digest != "" {
		alg = want.Digest.Algorithm()
	}
	return &blobWriter{s: s, f: f, digester: alg.Digester(), want: want}, nil
}

func (w *blobWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.digester.Hash().Write(p[:n])
	w.n += int64(n)
	if err == nil && w.want.Size > 0 && w.n > w.want.Size {
		return n, fmt.Errorf("blob %s: more than the %d bytes announced", w.want.Digest, w.want.Size)
	}
	return n, err
}

// Abort drops the partial blob.
func (w *blobWriter) Abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// Commit verifies and publishes the blob, returning its descriptor. When the
// writer was created without an expected digest, whatever was written is
// accepted under its own digest.
func (w *blobWriter) Commit() (ocispec.Descriptor, error) {
	got := w.digester.Digest()
	if w.want.Digest != "" && got != w.want.Digest {
		w.Abort()
		return ocispec.Descriptor{}, fmt.Errorf("blob %s: content has digest %s", w.want.Digest, got)
	}
	if w.want.Digest != "" && w.want.Size > 0 && w.n != w.want.Size {
		w.Abort()
		return ocispec.Descriptor{}, fmt.Errorf("blob %s: %d bytes, want %d", w.want.Digest, w.n, w.want.Size)
	}
	if err := w.f.Sync(); err != nil {
		w.Abort()
		return ocispec.Descriptor{}, fmt.Errorf("blob %s: sync: %w", got, err)
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.f.Name())
		return ocispec.Descriptor{}, fmt.Errorf("blob %s: %w", got, err)
	}
	if err := os.Rename(w.f.Name(), w.s.blobPath(got)); err != nil {
		os.Remove(w.f.Name())
		return ocispec.Descriptor{}, fmt.Errorf("blob %s: publish: %w", got, err)
	}
	d := w.want
	d.Digest, d.Size = got, w.n
	return d, nil
}

// PutBlob stores r's content, verified against want when want.Digest is set.
func (s *Store) PutBlob(want ocispec.Descriptor, r io.Reader) (ocispec.Descriptor, error) {
	if want.Digest != "" && s.HasBlob(want.Digest) {
		return want, nil
	}
	w, err := s.newBlobWriter(want)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return ocispec.Descriptor{}, fmt.Errorf("ingest %s: %w", want.Digest, err)
	}
	return w.Commit()
}

// putJSON stores v as a blob and returns its descriptor.
func (s *Store) putBytes(mediaType string, b []byte) (ocispec.Descriptor, error) {
	want := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	return s.PutBlob(want, bytes.NewReader(b))
}

// refs.json: every tag and pinned reference the store knows.

type refsFile map[string]ocispec.Descriptor

func (s *Store) readRefs() (refsFile, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "refs.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return refsFile{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read refs: %w", err)
	}
	refs := refsFile{}
	if err := json.Unmarshal(b, &refs); err != nil {
		return nil, fmt.Errorf("read refs: %w", err)
	}
	return refs, nil
}

// updateRefs applies fn to refs.json under a lock and replaces the file
// atomically.
func (s *Store) updateRefs(fn func(refsFile) error) error {
	s.refsMu.Lock()
	defer s.refsMu.Unlock()
	unlock, err := s.lock("refs", unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	refs, err := s.readRefs()
	if err != nil {
		return err
	}
	if err := fn(refs); err != nil {
		return err
	}
	b, err := json.MarshalIndent(refs, "", "  ")
	if err != nil {
		return err
	}
	// Beside refs.json, not in tmp/ (which prune empties), and synced
	// before the rename so a crash leaves the old file or the new one,
	// never an empty one.
	tmp := filepath.Join(s.dir, "refs.json.new")
	if err := writeFileSync(tmp, b); err != nil {
		return fmt.Errorf("write refs: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "refs.json")); err != nil {
		return fmt.Errorf("write refs: %w", err)
	}
	return nil
}

func writeFileSync(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// setRef points ref at the manifest desc.
func (s *Store) setRef(ref reference.Reference, desc ocispec.Descriptor) error {
	return s.updateRefs(func(refs refsFile) error {
		refs[ref.String()] = desc
		return nil
	})
}

// cancelled lets long loops honour ctx.
func cancelled(ctx context.Context) error { return context.Cause(ctx) }
