package image

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/image/unpack"
)

// layerMeta is written beside an unpacked layer once it is complete; its
// presence is what makes the layer exist.
type layerMeta struct {
	DiffID digest.Digest
	Blob   digest.Digest
	unpack.Result
}

// HasLayer reports whether the layer with diffID is unpacked.
func (s *Store) HasLayer(diffID digest.Digest) bool {
	_, err := os.Stat(filepath.Join(s.layerDir(diffID), "meta.json"))
	return err == nil
}

// LayerInfo reads what unpacking recorded about a layer, such as the device
// nodes it could not create.
func (s *Store) LayerInfo(diffID digest.Digest) (unpack.Result, error) {
	b, err := os.ReadFile(filepath.Join(s.layerDir(diffID), "meta.json"))
	if err != nil {
		return unpack.Result{}, fmt.Errorf("layer %s: %w", diffID, err)
	}
	var m layerMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return unpack.Result{}, fmt.Errorf("layer %s: %w", diffID, err)
	}
	return m.Result, nil
}

// decompress detects the layer's compression from its first bytes, so a
// registry's wrong media type does not matter.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		return zr, nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// unpackLayer extracts the layer stream r (compressed or not) into a
// temporary directory, checking the content's digest is diffID; publish
// makes it visible. The caller holds the layer's lock.
func (s *Store) unpackLayer(r io.Reader, diffID, blob digest.Digest) (_ string, err error) {
	tmp, err := s.tempDir("layer-")
	if err != nil {
		return "", fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	dr, err := decompress(r)
	if err != nil {
		return "", fmt.Errorf("unpack layer %s: decompress: %w", diffID, err)
	}
	defer dr.Close()
	fsDir := filepath.Join(tmp, "fs")
	if err := os.Mkdir(fsDir, 0o755); err != nil {
		return "", fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	h := diffID.Algorithm().Digester()
	res, err := unpack.Layer(io.TeeReader(dr, h.Hash()), fsDir, s.log)
	if err != nil {
		return "", fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	// The tar's end-of-archive padding counts towards the diff ID.
	if _, err := io.Copy(h.Hash(), dr); err != nil {
		return "", fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	if got := h.Digest(); got != diffID {
		return "", fmt.Errorf("unpack layer %s: uncompressed content has digest %s", diffID, got)
	}
	mb, err := json.Marshal(layerMeta{DiffID: diffID, Blob: blob, Result: res})
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), mb, 0o600); err != nil {
		return "", fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	return tmp, nil
}

func (s *Store) publishLayer(tmp string, diffID digest.Digest) error {
	// The rename below must not outrun the data after a crash.
	if d, err := os.Open(tmp); err == nil {
		unix.Syncfs(int(d.Fd()))
		d.Close()
	}
	final := s.layerDir(diffID)
	// A half-written layer from a crash has no meta.json; clear it away.
	if err := os.RemoveAll(final); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("unpack layer %s: %w", diffID, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("unpack layer %s: publish: %w", diffID, err)
	}
	return nil
}

// ensureLayer makes sure layer l has both its blob and its unpacked tree,
// fetching the blob with open when missing. Download, verification and
// unpacking happen in one pass; nothing is published until both the blob's
// digest and the diff ID check out. Concurrent callers for the same layer
// share one download.
func (s *Store) ensureLayer(l Layer, open func() (io.ReadCloser, error), progress func(int64)) error {
	if err := l.DiffID.Validate(); err != nil {
		return fmt.Errorf("layer: diff ID: %w", err)
	}
	// Keyed by blob and diff ID: the same content compressed two ways is
	// one layer but two blobs, and each image needs its own blob.
	_, err, _ := s.flight.Do("layer/"+l.Blob.Digest.String()+"/"+l.DiffID.String(), func() (any, error) {
		if s.HasBlob(l.Blob.Digest) && s.HasLayer(l.DiffID) {
			return nil, nil
		}
		unlockB, err := s.lock("blob-"+l.Blob.Digest.Encoded(), unix.LOCK_EX)
		if err != nil {
			return nil, err
		}
		defer unlockB()
		unlockL, err := s.lock("layer-"+l.DiffID.Encoded(), unix.LOCK_EX)
		if err != nil {
			return nil, err
		}
		defer unlockL()
		haveBlob, haveLayer := s.HasBlob(l.Blob.Digest), s.HasLayer(l.DiffID)
		switch {
		case haveBlob && haveLayer:
			return nil, nil
		case haveBlob:
			f, err := s.OpenBlob(l.Blob.Digest)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			tmp, err := s.unpackLayer(f, l.DiffID, l.Blob.Digest)
			if err != nil {
				return nil, err
			}
			return nil, s.publishLayer(tmp, l.DiffID)
		}
		if open == nil {
			return nil, fmt.Errorf("layer %s: blob %s: %w", l.DiffID, l.Blob.Digest, ErrNotFound)
		}
		rc, err := open()
		if err != nil {
			return nil, fmt.Errorf("fetch layer %s: %w", l.Blob.Digest, err)
		}
		defer rc.Close()
		w, err := s.newBlobWriter(l.Blob)
		if err != nil {
			return nil, err
		}
		src := io.TeeReader(&countingReader{r: rc, fn: progress}, w)
		var tmp string
		if !haveLayer {
			if tmp, err = s.unpackLayer(src, l.DiffID, l.Blob.Digest); err != nil {
				w.Abort()
				return nil, err
			}
		}
		// Whatever the unpacker did not need (compression trailer) still
		// belongs to the blob.
		if _, err := io.Copy(io.Discard, src); err != nil {
			w.Abort()
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("fetch layer %s: %w", l.Blob.Digest, err)
		}
		if _, err := w.Commit(); err != nil {
			// Unpacked from content that failed verification: never let
			// anyone see it.
			os.RemoveAll(tmp)
			return nil, fmt.Errorf("fetch layer: %w", err)
		}
		if tmp != "" {
			return nil, s.publishLayer(tmp, l.DiffID)
		}
		return nil, nil
	})
	return err
}

type countingReader struct {
	r  io.Reader
	fn func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 && c.fn != nil {
		c.fn(int64(n))
	}
	return n, err
}
