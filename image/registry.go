package image

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/berth-dev/berth/image/reference"
)

// RegistryOptions say how to reach registries. The HTTP and auth protocol
// is go-containerregistry's; what is fetched and how it is stored is ours.
type RegistryOptions struct {
	// Insecure registries (host[:port]) are spoken to over plain HTTP.
	// Loopback registries always may be, as Docker allows.
	Insecure []string
	// Keychain finds credentials; nil means the user's Docker config
	// (DockerConfig{}: ~/.docker/config.json, written by `berth login`).
	Keychain  authn.Keychain
	Transport http.RoundTripper
}

func (o RegistryOptions) name(r reference.Reference) (name.Reference, error) {
	var opts []name.Option
	if o.insecure(r.Registry) {
		opts = append(opts, name.Insecure)
	}
	s := r.Host() + "/" + r.Repository
	if r.Digest != "" {
		return name.NewDigest(s+"@"+r.Digest.String(), opts...)
	}
	return name.NewTag(s+":"+r.Tag, opts...)
}

func (o RegistryOptions) remote(ctx context.Context) []remote.Option {
	var kc authn.Keychain = DockerConfig{}
	if o.Keychain != nil {
		kc = o.Keychain
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithTransport(o.transport())}
}

// insecure says whether host may be spoken to over plain HTTP.
func (o RegistryOptions) insecure(host string) bool {
	if reference.IsLoopback(host) {
		return true
	}
	for _, h := range o.Insecure {
		if h == host || h == strings.TrimSuffix(host, ":80") {
			return true
		}
	}
	return false
}

// transport is the HTTP transport for registries, refusing plain HTTP to
// any host not marked insecure. go-containerregistry would otherwise fall
// back to HTTP for private addresses and .local names, which Docker does
// not do and which would let anyone on the network serve the image.
func (o RegistryOptions) transport() http.RoundTripper {
	base := o.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	return httpGuard{base: base, allow: o.insecure}
}

type httpGuard struct {
	base  http.RoundTripper
	allow func(host string) bool
}

func (g httpGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Scheme != "https" && !g.allow(r.URL.Host) {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, fmt.Errorf("%s: plain HTTP to %s refused: the registry is not marked insecure (--insecure-registry %s)", r.URL.Redacted(), r.URL.Host, r.URL.Host)
	}
	return g.base.RoundTrip(r)
}

// Progress is one report about a pull: a layer's bytes so far.
type Progress struct {
	Layer    digest.Digest
	Current  int64
	Total    int64
	Done     bool
	Existing bool // already in the store; nothing downloaded
}

// PullOptions tune Pull.
type PullOptions struct {
	RegistryOptions
	// Platform picks from image indexes; empty means this machine's
	// linux/GOARCH.
	Platform Platform
	// Progress, when set, is called from the pulling goroutines (one at a
	// time) as layers move.
	Progress func(Progress)
	// Jobs is how many layers download at once (default 4).
	Jobs int
}

// Pull fetches ref from its registry into the store, unpacking each layer
// as it arrives, and tags it. Layers already present are not fetched.
func (s *Store) Pull(ctx context.Context, ref string, opt PullOptions) (*Image, error) {
	r, err := reference.Parse(ref)
	if err != nil {
		return nil, err
	}
	nref, err := opt.name(r)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	ropts := opt.remote(ctx)
	unlock, err := s.gcShared()
	if err != nil {
		return nil, err
	}
	defer unlock()

	desc, err := remote.Get(nref, ropts...)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	mb, mdesc := desc.Manifest, ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: digest.Digest(desc.Digest.String()), Size: desc.Size}
	if desc.MediaType.IsIndex() {
		var idx ocispec.Index
		if err := json.Unmarshal(mb, &idx); err != nil {
			return nil, fmt.Errorf("pull %s: parse index: %w", r, err)
		}
		p := opt.Platform
		if p.OS == "" {
			p = Platform{OS: "linux", Architecture: runtime.GOARCH}
		}
		mdesc, err = SelectManifest(idx, p)
		if err != nil {
			return nil, fmt.Errorf("pull %s: %w", r, err)
		}
		d2, err := remote.Get(nref.Context().Digest(mdesc.Digest.String()), ropts...)
		if err != nil {
			return nil, fmt.Errorf("pull %s: manifest for %s: %w", r, p, err)
		}
		mb = d2.Manifest
	}
	if got := digest.FromBytes(mb); got != mdesc.Digest {
		return nil, fmt.Errorf("pull %s: manifest has digest %s, registry said %s", r, got, mdesc.Digest)
	}
	m, mt, err := parseManifest(mb)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	mdesc.MediaType = mt
	repo := nref.Context()
	blob := func(d digest.Digest) func() (io.ReadCloser, error) {
		return func() (io.ReadCloser, error) {
			l, err := remote.Layer(repo.Digest(d.String()), ropts...)
			if err != nil {
				return nil, err
			}
			return l.Compressed()
		}
	}
	// The config is small and says what the layers must unpack to.
	if !s.HasBlob(m.Config.Digest) {
		rc, err := blob(m.Config.Digest)()
		if err != nil {
			return nil, fmt.Errorf("pull %s: config: %w", r, err)
		}
		_, err = s.PutBlob(m.Config, io.LimitReader(rc, 16<<20))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("pull %s: config: %w", r, err)
		}
	}
	cb, err := s.ReadBlob(m.Config.Digest)
	if err != nil {
		return nil, err
	}
	cfg, err := parseConfig(cb, m)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	img := &Image{Digest: mdesc.Digest, MediaType: mt, Size: int64(len(mb)), Manifest: m, Config: cfg, ConfigDigest: m.Config.Digest}

	var progressMu sync.Mutex
	report := func(p Progress) {
		if opt.Progress != nil {
			progressMu.Lock()
			opt.Progress(p)
			progressMu.Unlock()
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := opt.Jobs
	if jobs <= 0 {
		jobs = 4
	}
	g.SetLimit(jobs)
	for _, l := range img.Layers() {
		g.Go(func() error {
			if err := cancelled(gctx); err != nil {
				return err
			}
			if s.HasBlob(l.Blob.Digest) && s.HasLayer(l.DiffID) {
				report(Progress{Layer: l.Blob.Digest, Current: l.Blob.Size, Total: l.Blob.Size, Done: true, Existing: true})
				return nil
			}
			var n int64
			report(Progress{Layer: l.Blob.Digest, Total: l.Blob.Size})
			err := s.ensureLayer(l, blob(l.Blob.Digest), func(k int64) {
				n += k
				report(Progress{Layer: l.Blob.Digest, Current: n, Total: l.Blob.Size})
			})
			if err != nil {
				return fmt.Errorf("pull %s: %w", r, err)
			}
			report(Progress{Layer: l.Blob.Digest, Current: l.Blob.Size, Total: l.Blob.Size, Done: true})
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// The manifest last: an image exists only once all it names does.
	if _, err := s.PutBlob(mdesc, bytes.NewReader(mb)); err != nil {
		return nil, fmt.Errorf("pull %s: %w", r, err)
	}
	if err := s.setRef(r, mdesc); err != nil {
		return nil, err
	}
	return s.Get(r.String())
}

// Push uploads the image src to the registry as dst (src when empty).
func (s *Store) Push(ctx context.Context, src, dst string, opt RegistryOptions) (digest.Digest, error) {
	img, err := s.Get(src)
	if err != nil {
		return "", err
	}
	if dst == "" {
		dst = src
	}
	r, err := reference.Parse(dst)
	if err != nil {
		return "", err
	}
	nref, err := opt.name(r)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", r, err)
	}
	core := &storeImage{s: s, img: img}
	vimg, err := partial.CompressedToImage(core)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", r, err)
	}
	if err := remote.Write(nref, vimg, opt.remote(ctx)...); err != nil {
		return "", fmt.Errorf("push %s: %w", r, err)
	}
	return img.Digest, nil
}

// storeImage presents a stored image to go-containerregistry's writer with
// its manifest bytes untouched, so the pushed digest is the stored one.
type storeImage struct {
	s   *Store
	img *Image
}

func (si *storeImage) RawConfigFile() ([]byte, error) { return si.s.ReadBlob(si.img.ConfigDigest) }
func (si *storeImage) MediaType() (types.MediaType, error) {
	return types.MediaType(si.img.MediaType), nil
}
func (si *storeImage) RawManifest() ([]byte, error) { return si.s.ReadBlob(si.img.Digest) }
func (si *storeImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h.String() == si.img.ConfigDigest.String() {
		return &storeLayer{si.s, si.img.Manifest.Config}, nil
	}
	for _, l := range si.img.Manifest.Layers {
		if l.Digest.String() == h.String() {
			return &storeLayer{si.s, l}, nil
		}
	}
	return nil, fmt.Errorf("blob %s is not part of %s", h, si.img.Digest)
}

type storeLayer struct {
	s    *Store
	desc ocispec.Descriptor
}

func (l *storeLayer) Digest() (v1.Hash, error)           { return v1.NewHash(l.desc.Digest.String()) }
func (l *storeLayer) Size() (int64, error)               { return l.desc.Size, nil }
func (l *storeLayer) Compressed() (io.ReadCloser, error) { return l.s.OpenBlob(l.desc.Digest) }
func (l *storeLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
