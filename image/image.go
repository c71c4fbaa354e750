package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/image/reference"
)

// Media types Berth reads besides the OCI ones.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	MediaTypeDockerLayerGzip    = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerLayerForeign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
)

// Image is one image in the store: its manifest, its config and its layers.
type Image struct {
	// Digest is the manifest digest: the image's identity.
	Digest    digest.Digest
	MediaType string
	Size      int64
	// Names are the references that point at this image, fully qualified.
	Names    []string
	Manifest ocispec.Manifest
	// Config is the image config; Config.Config holds what a container
	// runs with: Entrypoint, Cmd, Env, WorkingDir, User, ExposedPorts,
	// Labels, StopSignal.
	Config ocispec.Image
	// ConfigDigest is what Docker shows as the image ID.
	ConfigDigest digest.Digest
}

// Layers pairs each layer blob with the digest of its uncompressed content,
// bottom layer first.
func (img *Image) Layers() []Layer {
	out := make([]Layer, len(img.Manifest.Layers))
	for i, l := range img.Manifest.Layers {
		out[i] = Layer{Blob: l, DiffID: img.Config.RootFS.DiffIDs[i]}
	}
	return out
}

// Layer is one layer of an image.
type Layer struct {
	Blob   ocispec.Descriptor
	DiffID digest.Digest
}

// Size is the sum of the image's compressed blobs, as registries count it.
func (img *Image) ContentSize() int64 {
	n := img.Size + img.Manifest.Config.Size
	for _, l := range img.Manifest.Layers {
		n += l.Size
	}
	return n
}

// parseManifest reads an image manifest, Docker schema 2 or OCI, and checks
// it is one Berth can use.
func parseManifest(b []byte) (ocispec.Manifest, string, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return m, "", fmt.Errorf("parse manifest: %w", err)
	}
	mt := m.MediaType
	if mt == "" {
		mt = ocispec.MediaTypeImageManifest
	}
	switch mt {
	case ocispec.MediaTypeImageManifest, MediaTypeDockerManifest:
	default:
		return m, "", fmt.Errorf("parse manifest: unsupported media type %q", mt)
	}
	if m.SchemaVersion != 2 {
		return m, "", fmt.Errorf("parse manifest: schema version %d, want 2", m.SchemaVersion)
	}
	if err := m.Config.Digest.Validate(); err != nil {
		return m, "", fmt.Errorf("parse manifest: config digest: %w", err)
	}
	for i, l := range m.Layers {
		if err := l.Digest.Validate(); err != nil {
			return m, "", fmt.Errorf("parse manifest: layer %d digest: %w", i, err)
		}
		if l.Size < 0 {
			return m, "", fmt.Errorf("parse manifest: layer %d: negative size", i)
		}
		if !isLayerMediaType(l.MediaType) {
			return m, "", fmt.Errorf("parse manifest: layer %d: unsupported media type %q", i, l.MediaType)
		}
	}
	return m, mt, nil
}

func isLayerMediaType(mt string) bool {
	switch mt {
	case ocispec.MediaTypeImageLayer, ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerZstd,
		ocispec.MediaTypeImageLayerNonDistributable, ocispec.MediaTypeImageLayerNonDistributableGzip, //nolint:staticcheck // still seen in the wild
		ocispec.MediaTypeImageLayerNonDistributableZstd, //nolint:staticcheck
		MediaTypeDockerLayerGzip, MediaTypeDockerLayerForeign:
		return true
	}
	return false
}

// parseConfig reads an image config and checks it matches the manifest.
func parseConfig(b []byte, m ocispec.Manifest) (ocispec.Image, error) {
	var c ocispec.Image
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("parse image config: %w", err)
	}
	if c.RootFS.Type != "layers" {
		return c, fmt.Errorf("parse image config: rootfs type %q, want layers", c.RootFS.Type)
	}
	if len(c.RootFS.DiffIDs) != len(m.Layers) {
		return c, fmt.Errorf("parse image config: %d diff IDs for %d layers", len(c.RootFS.DiffIDs), len(m.Layers))
	}
	for i, d := range c.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return c, fmt.Errorf("parse image config: diff ID %d: %w", i, err)
		}
	}
	return c, nil
}

// Platform is an OS/architecture pair an index entry is chosen by.
type Platform struct {
	OS, Architecture, Variant string
}

// ParsePlatform reads "linux/amd64" or "linux/arm64/v8".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// SelectManifest picks the manifest for p from an image index.
func SelectManifest(idx ocispec.Index, p Platform) (ocispec.Descriptor, error) {
	for _, m := range idx.Manifests {
		if m.Platform == nil || m.Platform.OS != p.OS || m.Platform.Architecture != p.Architecture {
			continue
		}
		if p.Variant != "" && m.Platform.Variant != p.Variant {
			continue
		}
		return m, nil
	}
	var have []string
	for _, m := range idx.Manifests {
		if m.Platform != nil {
			have = append(have, Platform{m.Platform.OS, m.Platform.Architecture, m.Platform.Variant}.String())
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no manifest for %s in index (has %s)", p, strings.Join(have, ", "))
}

// Get resolves a reference (or a manifest or config digest, or a unique
// prefix of one) to an image in the store.
func (s *Store) Get(name string) (*Image, error) {
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	var desc ocispec.Descriptor
	if r, err := reference.Parse(name); err == nil {
		if d, ok := refs[r.String()]; ok {
			desc = d
		} else if r.Digest != "" {
			for _, d := range refs {
				if d.Digest == r.Digest {
					desc = d
				}
			}
		}
	}
	if desc.Digest == "" {
		// An ID or a prefix of one, as Docker accepts.
		id := strings.TrimPrefix(name, "sha256:")
		if len(id) >= 4 && strings.Trim(id, "0123456789abcdef") == "" {
			for _, d := range refs {
				img, err := s.load(d)
				if err != nil {
					continue
				}
				if strings.HasPrefix(d.Digest.Encoded(), id) || strings.HasPrefix(img.ConfigDigest.Encoded(), id) {
					if desc.Digest != "" && desc.Digest != d.Digest {
						return nil, fmt.Errorf("image %q: ambiguous ID prefix", name)
					}
					desc = d
				}
			}
		}
	}
	if desc.Digest == "" {
		return nil, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	img, err := s.load(desc)
	if err != nil {
		return nil, err
	}
	for _, k := range slices.Sorted(maps.Keys(refs)) {
		if refs[k].Digest == img.Digest {
			img.Names = append(img.Names, k)
		}
	}
	return img, nil
}

// Error is the type of the store's sentinel errors: constants, so callers
// can test for them with errors.Is and nobody can reassign them.
type Error string

func (e Error) Error() string { return string(e) }

// ErrNotFound is returned for images, blobs and layers the store does not have.
const ErrNotFound = Error("not found")

func (s *Store) load(desc ocispec.Descriptor) (*Image, error) {
	mb, err := s.ReadBlob(desc.Digest)
	if err != nil {
		return nil, err
	}
	m, mt, err := parseManifest(mb)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", desc.Digest, err)
	}
	cb, err := s.ReadBlob(m.Config.Digest)
	if err != nil {
		return nil, err
	}
	c, err := parseConfig(cb, m)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", desc.Digest, err)
	}
	return &Image{Digest: desc.Digest, MediaType: mt, Size: int64(len(mb)), Manifest: m, Config: c, ConfigDigest: m.Config.Digest}, nil
}

// List returns every image in the store, one entry per manifest.
func (s *Store) List() ([]*Image, error) {
	refs, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	byDigest := map[digest.Digest]*Image{}
	var out []*Image
	for _, k := range slices.Sorted(maps.Keys(refs)) {
		d := refs[k]
		img, ok := byDigest[d.Digest]
		if !ok {
			img, err = s.load(d)
			if err != nil {
				return nil, err
			}
			byDigest[d.Digest] = img
			out = append(out, img)
		}
		img.Names = append(img.Names, k)
	}
	return out, nil
}

// Tag points target at the image src names.
func (s *Store) Tag(src, target string) error {
	img, err := s.Get(src)
	if err != nil {
		return err
	}
	r, err := reference.Parse(target)
	if err != nil {
		return err
	}
	if r.Digest != "" {
		return fmt.Errorf("tag %s: a tag cannot carry a digest", target)
	}
	return s.setRef(r, ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Digest, Size: img.Size})
}

// Untag removes the names given and returns the images that lost their last
// name; their content goes at the next Prune.
func (s *Store) Untag(names ...string) ([]digest.Digest, error) {
	var removed []digest.Digest
	err := s.updateRefs(func(refs refsFile) error {
		for _, name := range names {
			keys, err := matchRefs(refs, name, s)
			if err != nil {
				return err
			}
			for _, k := range keys {
				d := refs[k].Digest
				delete(refs, k)
				still := false
				for _, v := range refs {
					still = still || v.Digest == d
				}
				if !still {
					removed = append(removed, d)
				}
			}
		}
		return nil
	})
	return removed, err
}

func matchRefs(refs refsFile, name string, s *Store) ([]string, error) {
	if r, err := reference.Parse(name); err == nil {
		if _, ok := refs[r.String()]; ok {
			return []string{r.String()}, nil
		}
	}
	// An ID removes every name of that image, as `docker rmi ID -f` does.
	id := strings.TrimPrefix(name, "sha256:")
	var keys []string
	if len(id) >= 4 && strings.Trim(id, "0123456789abcdef") == "" {
		for _, k := range slices.Sorted(maps.Keys(refs)) {
			d := refs[k]
			img, err := s.load(d)
			if err != nil {
				continue
			}
			if strings.HasPrefix(d.Digest.Encoded(), id) || strings.HasPrefix(img.ConfigDigest.Encoded(), id) {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("image %q: %w", name, ErrNotFound)
	}
	return keys, nil
}

// Ensure returns the image ref names, pulling it first only when the store
// does not have it (Docker's "missing" pull policy). This is the call the
// node agent makes before Snapshot.
func (s *Store) Ensure(ctx context.Context, ref string, opt PullOptions) (*Image, error) {
	img, err := s.Get(ref)
	if err == nil {
		return img, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	return s.Pull(ctx, ref, opt)
}

// SkippedDevices lists the device nodes of img's layers that unpacking
// could not create (the kernel refused mknod, as in a user namespace), so
// the runtime can bind-mount them or warn.
func (s *Store) SkippedDevices(img *Image) ([]string, error) {
	var out []string
	for _, d := range img.Config.RootFS.DiffIDs {
		res, err := s.LayerInfo(d)
		if err != nil {
			return nil, err
		}
		out = append(out, res.SkippedDevices...)
	}
	return out, nil
}
