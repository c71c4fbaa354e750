package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/image/reference"
	"github.com/berth-dev/berth/image/unpack"
)

// Archives: `save` writes an OCI image layout with a Docker manifest.json
// beside it (the form Docker 25+ writes, readable by both Docker and OCI
// tools); `load` reads OCI layouts and classic `docker save` archives, as a
// tar or as a directory.

// annotation under which containerd and Docker keep the full image name.
const annotationImageName = "io.containerd.image.name"

type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// layoutSink receives the files of an archive: a directory or a tar stream.
type layoutSink interface {
	add(name string, size int64, r io.Reader) error
	close() error
}

type dirSink struct{ dir string }

func (d dirSink) add(name string, size int64, r io.Reader) error {
	p := filepath.Join(d.dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
func (dirSink) close() error { return nil }

type tarSink struct {
	tw   *tar.Writer
	dirs map[string]bool
}

func (t *tarSink) add(name string, size int64, r io.Reader) error {
	// Parent directories first, as tar readers that create files expect.
	var parents []string
	for d := path.Dir(name); d != "." && !t.dirs[d]; d = path.Dir(d) {
		t.dirs[d] = true
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		if err := t.tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
			return err
		}
	}
	if err := t.tw.WriteHeader(&tar.Header{Name: name, Size: size, Mode: 0o644, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := io.Copy(t.tw, r)
	return err
}
func (t *tarSink) close() error { return t.tw.Close() }

// Save writes the named images as an archive: to dir when dir is set (an OCI
// layout directory), else as a tar to w.
func (s *Store) Save(names []string, w io.Writer, dir string) error {
	var sink layoutSink
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("save: %w", err)
		}
		sink = dirSink{dir}
	} else {
		sink = &tarSink{tw: tar.NewWriter(w), dirs: map[string]bool{}}
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	var dm []dockerManifestEntry
	written := map[digest.Digest]bool{}
	blob := func(d ocispec.Descriptor) error {
		if written[d.Digest] {
			return nil
		}
		written[d.Digest] = true
		f, err := s.OpenBlob(d.Digest)
		if err != nil {
			return err
		}
		defer f.Close()
		return sink.add("blobs/"+d.Digest.Algorithm().String()+"/"+d.Digest.Encoded(), d.Size, f)
	}
	for _, n := range names {
		img, err := s.Get(n)
		if err != nil {
			return fmt.Errorf("save: %w", err)
		}
		mdesc := ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Digest, Size: img.Size}
		if err := blob(mdesc); err != nil {
			return fmt.Errorf("save %s: %w", n, err)
		}
		if err := blob(img.Manifest.Config); err != nil {
			return fmt.Errorf("save %s: %w", n, err)
		}
		entry := dockerManifestEntry{Config: "blobs/sha256/" + img.ConfigDigest.Encoded()}
		for _, l := range img.Manifest.Layers {
			if err := blob(l); err != nil {
				return fmt.Errorf("save %s: %w", n, err)
			}
			entry.Layers = append(entry.Layers, "blobs/sha256/"+l.Digest.Encoded())
		}
		// Name the image as asked when a name was given, else by all its names.
		tags := img.Names
		if r, err := reference.Parse(n); err == nil && r.Digest == "" {
			tags = []string{r.String()}
		}
		if len(tags) == 0 {
			idx.Manifests = append(idx.Manifests, mdesc)
		}
		for _, t := range tags {
			r, err := reference.Parse(t)
			if err != nil {
				continue
			}
			d := mdesc
			d.Annotations = map[string]string{annotationImageName: r.String()}
			if r.Tag != "" {
				d.Annotations[ocispec.AnnotationRefName] = r.Tag
			}
			idx.Manifests = append(idx.Manifests, d)
			if r.Tag != "" {
				entry.RepoTags = append(entry.RepoTags, r.Familiar())
			}
		}
		dm = append(dm, entry)
	}
	for _, f := range []struct {
		name string
		v    any
	}{{"index.json", idx}, {"manifest.json", dm}, {"oci-layout", ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion}}} {
		b, err := json.Marshal(f.v)
		if err != nil {
			return err
		}
		if err := sink.add(f.name, int64(len(b)), bytes.NewReader(b)); err != nil {
			return fmt.Errorf("save: %w", err)
		}
	}
	if err := sink.close(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return nil
}

// Load reads an OCI layout or a docker save archive (a tar file, or a
// directory) into the store and returns the images it named.
func (s *Store) Load(ctx context.Context, src string, p Platform) ([]*Image, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if !fi.IsDir() {
		f, err := os.Open(src)
		if err != nil {
			return nil, fmt.Errorf("load: %w", err)
		}
		defer f.Close()
		return s.loadStream(ctx, f, p, src)
	}
	unlock, err := s.gcShared()
	if err != nil {
		return nil, err
	}
	defer unlock()
	imgs, err := s.loadDir(ctx, src, p)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", src, err)
	}
	return imgs, nil
}

// LoadStream reads an archive (docker save or OCI layout, as a tar) from r,
// such as a pipe: it needs no seeking.
func (s *Store) LoadStream(ctx context.Context, r io.Reader, p Platform) ([]*Image, error) {
	return s.loadStream(ctx, r, p, "")
}

func (s *Store) loadStream(ctx context.Context, r io.Reader, p Platform, src string) ([]*Image, error) {
	what := "load"
	if src != "" {
		what += " " + src
	}
	// Held from the start: prune empties tmp/, where the archive unpacks.
	unlock, err := s.gcShared()
	if err != nil {
		return nil, err
	}
	defer unlock()
	tmp, err := s.tempDir("load-")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer os.RemoveAll(tmp)
	// The archive is untrusted too: the same safe extraction as layers.
	if _, err := unpack.Layer(r, tmp, s.log); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	imgs, err := s.loadDir(ctx, tmp, p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return imgs, nil
}

func (s *Store) loadDir(ctx context.Context, dir string, p Platform) ([]*Image, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if _, err := root.Stat("index.json"); err == nil {
		return s.loadOCI(ctx, root, p)
	}
	if _, err := root.Stat("manifest.json"); err == nil {
		return s.loadDocker(ctx, root)
	}
	return nil, fmt.Errorf("neither an OCI layout (index.json) nor a docker archive (manifest.json)")
}

func readJSON(root *os.Root, name string, v any) error {
	b, err := root.ReadFile(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func (s *Store) copyBlob(root *os.Root, d ocispec.Descriptor) error {
	if s.HasBlob(d.Digest) {
		return nil
	}
	if err := d.Digest.Validate(); err != nil {
		return err
	}
	f, err := root.Open("blobs/" + d.Digest.Algorithm().String() + "/" + d.Digest.Encoded())
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = s.PutBlob(d, f)
	return err
}

func (s *Store) loadOCI(ctx context.Context, root *os.Root, p Platform) ([]*Image, error) {
	var idx ocispec.Index
	if err := readJSON(root, "index.json", &idx); err != nil {
		return nil, err
	}
	if p.OS == "" {
		p = Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	var out []*Image
	for _, d := range idx.Manifests {
		name := d.Annotations[annotationImageName]
		if name == "" {
			name = d.Annotations[ocispec.AnnotationRefName]
		}
		if d.MediaType == ocispec.MediaTypeImageIndex || d.MediaType == MediaTypeDockerManifestList {
			if err := s.copyBlob(root, d); err != nil {
				return nil, fmt.Errorf("index %s: %w", d.Digest, err)
			}
			var inner ocispec.Index
			b, _ := s.ReadBlob(d.Digest)
			if err := json.Unmarshal(b, &inner); err != nil {
				return nil, fmt.Errorf("index %s: %w", d.Digest, err)
			}
			pick, err := SelectManifest(inner, p)
			if err != nil {
				return nil, err
			}
			d = pick
		}
		img, err := s.loadManifest(ctx, root, d, name)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

func (s *Store) loadManifest(ctx context.Context, root *os.Root, d ocispec.Descriptor, name string) (*Image, error) {
	if err := s.copyBlob(root, d); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	mb, err := s.ReadBlob(d.Digest)
	if err != nil {
		return nil, err
	}
	m, mt, err := parseManifest(mb)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", d.Digest, err)
	}
	d.MediaType, d.Annotations = mt, nil
	if err := s.copyBlob(root, m.Config); err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	cb, _ := s.ReadBlob(m.Config.Digest)
	cfg, err := parseConfig(cb, m)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", d.Digest, err)
	}
	for i, l := range m.Layers {
		if err := cancelled(ctx); err != nil {
			return nil, err
		}
		if err := s.copyBlob(root, l); err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		if err := s.ensureLayer(Layer{Blob: l, DiffID: cfg.RootFS.DiffIDs[i]}, nil, nil); err != nil {
			return nil, err
		}
	}
	if name != "" {
		// An OCI ref.name may be a bare tag; it has no repository then.
		r, err := reference.Parse(name)
		if err != nil || !strings.ContainsAny(name, "/:") {
			r, err = reference.Parse("loaded:" + name)
		}
		if err == nil {
			if err := s.setRef(r, d); err != nil {
				return nil, err
			}
			return s.Get(r.String())
		}
	}
	r := reference.Reference{Registry: "localhost", Repository: "loaded", Digest: d.Digest}
	if err := s.setRef(r, d); err != nil {
		return nil, err
	}
	return s.Get(r.String())
}

// loadDocker reads the classic `docker save` layout: manifest.json naming
// the config file and one tar per layer, compressed or not.
func (s *Store) loadDocker(ctx context.Context, root *os.Root) ([]*Image, error) {
	var entries []dockerManifestEntry
	if err := readJSON(root, "manifest.json", &entries); err != nil {
		return nil, err
	}
	var out []*Image
	for _, e := range entries {
		cf, err := root.Open(e.Config)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		cdesc, err := s.PutBlob(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig}, cf)
		cf.Close()
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		cb, _ := s.ReadBlob(cdesc.Digest)
		m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cdesc}
		m.SchemaVersion = 2
		var cfg ocispec.Image
		if err := json.Unmarshal(cb, &cfg); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if len(cfg.RootFS.DiffIDs) != len(e.Layers) {
			return nil, fmt.Errorf("config has %d diff IDs for %d layers", len(cfg.RootFS.DiffIDs), len(e.Layers))
		}
		for i, lp := range e.Layers {
			if err := cancelled(ctx); err != nil {
				return nil, err
			}
			lf, err := root.Open(lp)
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", lp, err)
			}
			head := make([]byte, 4)
			n, _ := io.ReadFull(lf, head)
			mt := ocispec.MediaTypeImageLayer
			switch {
			case n >= 2 && head[0] == 0x1f && head[1] == 0x8b:
				mt = ocispec.MediaTypeImageLayerGzip
			case n == 4 && string(head) == "\x28\xb5\x2f\xfd":
				mt = ocispec.MediaTypeImageLayerZstd
			}
			if _, err := lf.Seek(0, io.SeekStart); err != nil {
				lf.Close()
				return nil, err
			}
			ldesc, err := s.PutBlob(ocispec.Descriptor{MediaType: mt}, lf)
			lf.Close()
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", lp, err)
			}
			if err := s.ensureLayer(Layer{Blob: ldesc, DiffID: cfg.RootFS.DiffIDs[i]}, nil, nil); err != nil {
				return nil, err
			}
			m.Layers = append(m.Layers, ldesc)
		}
		mb, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		mdesc, err := s.putBytes(ocispec.MediaTypeImageManifest, mb)
		if err != nil {
			return nil, err
		}
		var img *Image
		for _, t := range e.RepoTags {
			r, err := reference.Parse(t)
			if err != nil {
				return nil, err
			}
			if err := s.setRef(r, mdesc); err != nil {
				return nil, err
			}
			if img, err = s.Get(r.String()); err != nil {
				return nil, err
			}
		}
		if img == nil {
			r := reference.Reference{Registry: "localhost", Repository: "loaded", Digest: mdesc.Digest}
			if err := s.setRef(r, mdesc); err != nil {
				return nil, err
			}
			if img, err = s.Get(r.String()); err != nil {
				return nil, err
			}
		}
		out = append(out, img)
	}
	return out, nil
}
