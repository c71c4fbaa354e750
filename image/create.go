package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/image/reference"
)

// Compression is how Create stores new layers.
type Compression string

const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "none"
)

// NewImage describes an image to create from layer tars.
type NewImage struct {
	// Layers are uncompressed (or compressed: detected) tar streams, bottom
	// first, with whiteouts in the OCI .wh. form.
	Layers      []io.Reader
	Config      ocispec.ImageConfig
	Compression Compression
	Created     time.Time // zero means now
	Comment     string    // history entry for each layer
	// Base, when set, is an image whose layers and config come first.
	Base *Image
}

// Create builds an image from layer tars, stores it, unpacks its layers and
// tags it ref (when not empty). It is how `import` and the image builder add
// images.
func (s *Store) Create(ctx context.Context, ref string, spec NewImage) (*Image, error) {
	var r reference.Reference
	if ref != "" {
		var err error
		if r, err = reference.Parse(ref); err != nil {
			return nil, err
		}
	}
	unlock, err := s.gcShared()
	if err != nil {
		return nil, err
	}
	defer unlock()
	created := spec.Created
	if created.IsZero() {
		created = time.Now().UTC()
	}
	cfg := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config:   spec.Config,
		RootFS:   ocispec.RootFS{Type: "layers"},
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest}
	m.SchemaVersion = 2
	if spec.Base != nil {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, spec.Base.Config.RootFS.DiffIDs...)
		cfg.History = append(cfg.History, spec.Base.Config.History...)
		m.Layers = append(m.Layers, spec.Base.Manifest.Layers...)
	}
	for i, lr := range spec.Layers {
		if err := cancelled(ctx); err != nil {
			return nil, err
		}
		blob, diffID, err := s.putLayer(lr, spec.Compression)
		if err != nil {
			return nil, fmt.Errorf("create image: layer %d: %w", i, err)
		}
		if err := s.ensureLayer(Layer{Blob: blob, DiffID: diffID}, nil, nil); err != nil {
			// A layer that cannot be unpacked would unpack no better later:
			// leave nothing of it behind.
			os.Remove(s.blobPath(blob.Digest))
			return nil, fmt.Errorf("create image: %w", err)
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		m.Layers = append(m.Layers, blob)
		cfg.History = append(cfg.History, ocispec.History{Created: &created, CreatedBy: "berth", Comment: spec.Comment})
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	m.Config, err = s.putBytes(ocispec.MediaTypeImageConfig, cb)
	if err != nil {
		return nil, fmt.Errorf("create image: config: %w", err)
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	mdesc, err := s.putBytes(ocispec.MediaTypeImageManifest, mb)
	if err != nil {
		return nil, fmt.Errorf("create image: manifest: %w", err)
	}
	if ref != "" {
		if err := s.setRef(r, mdesc); err != nil {
			return nil, err
		}
		return s.Get(r.String())
	}
	return s.load(mdesc)
}

// putLayer compresses a tar stream into a blob, computing the diff ID of the
// uncompressed content on the way.
func (s *Store) putLayer(r io.Reader, c Compression) (ocispec.Descriptor, digest.Digest, error) {
	dr, err := decompress(r)
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	defer dr.Close()
	mt := ocispec.MediaTypeImageLayerGzip
	switch c {
	case Zstd:
		mt = ocispec.MediaTypeImageLayerZstd
	case Uncompressed:
		mt = ocispec.MediaTypeImageLayer
	case Gzip, "":
	default:
		return ocispec.Descriptor{}, "", fmt.Errorf("unknown compression %q", c)
	}
	w, err := s.newBlobWriter(ocispec.Descriptor{MediaType: mt})
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	var zw io.WriteCloser
	switch c {
	case Zstd:
		zw, err = zstd.NewWriter(w)
	case Uncompressed:
		zw = nopWriteCloser{w}
	default:
		zw = gzip.NewWriter(w)
	}
	if err != nil {
		w.Abort()
		return ocispec.Descriptor{}, "", err
	}
	h := digest.SHA256.Digester()
	if _, err := io.Copy(io.MultiWriter(zw, h.Hash()), dr); err != nil {
		w.Abort()
		return ocispec.Descriptor{}, "", err
	}
	if err := zw.Close(); err != nil {
		w.Abort()
		return ocispec.Descriptor{}, "", err
	}
	desc, err := w.Commit()
	return desc, h.Digest(), err
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// Import creates a one-layer image from a root filesystem tarball, with
// Dockerfile-style changes (`CMD ["sh"]`, `ENV A=b`) applied to its config.
func (s *Store) Import(ctx context.Context, r io.Reader, ref string, changes []string) (*Image, error) {
	var cfg ocispec.ImageConfig
	for _, c := range changes {
		if err := ApplyChange(&cfg, c); err != nil {
			return nil, err
		}
	}
	return s.Create(ctx, ref, NewImage{Layers: []io.Reader{r}, Config: cfg, Comment: "imported"})
}

// ApplyChange applies one Dockerfile-style instruction to an image config,
// as `docker import --change` does.
func ApplyChange(cfg *ocispec.ImageConfig, change string) error {
	instr, arg, _ := strings.Cut(strings.TrimSpace(change), " ")
	arg = strings.TrimSpace(arg)
	if arg == "" {
		return fmt.Errorf("change %q: missing argument", change)
	}
	switch strings.ToUpper(instr) {
	case "CMD", "ENTRYPOINT":
		var argv []string
		if strings.HasPrefix(arg, "[") {
			if err := json.Unmarshal([]byte(arg), &argv); err != nil {
				return fmt.Errorf("change %q: exec form is not a JSON array of strings: %w", change, err)
			}
		} else {
			argv = []string{"/bin/sh", "-c", arg}
		}
		if strings.EqualFold(instr, "CMD") {
			cfg.Cmd = argv
		} else {
			cfg.Entrypoint = argv
		}
	case "ENV":
		pairs, err := keyValues(arg)
		if err != nil {
			return fmt.Errorf("change %q: %w", change, err)
		}
		for _, kv := range pairs {
			cfg.Env = setEnv(cfg.Env, kv[0], kv[1])
		}
	case "LABEL":
		pairs, err := keyValues(arg)
		if err != nil {
			return fmt.Errorf("change %q: %w", change, err)
		}
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		for _, kv := range pairs {
			cfg.Labels[kv[0]] = kv[1]
		}
	case "WORKDIR":
		if !strings.HasPrefix(arg, "/") {
			return fmt.Errorf("change %q: WORKDIR must be absolute", change)
		}
		cfg.WorkingDir = arg
	case "USER":
		cfg.User = arg
	case "STOPSIGNAL":
		cfg.StopSignal = arg
	case "EXPOSE":
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range strings.Fields(arg) {
			port, proto, _ := strings.Cut(p, "/")
			if proto == "" {
				proto = "tcp"
			}
			if port == "" || strings.Trim(port, "0123456789-") != "" || (proto != "tcp" && proto != "udp" && proto != "sctp") {
				return fmt.Errorf("change %q: bad port %q", change, p)
			}
			cfg.ExposedPorts[port+"/"+proto] = struct{}{}
		}
	case "VOLUME":
		if cfg.Volumes == nil {
			cfg.Volumes = map[string]struct{}{}
		}
		vols := strings.Fields(arg)
		if strings.HasPrefix(arg, "[") {
			if err := json.Unmarshal([]byte(arg), &vols); err != nil {
				return fmt.Errorf("change %q: %w", change, err)
			}
		}
		for _, v := range vols {
			cfg.Volumes[v] = struct{}{}
		}
	default:
		return fmt.Errorf("change %q: unsupported instruction %q (CMD, ENTRYPOINT, ENV, LABEL, WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL)", change, instr)
	}
	return nil
}

// keyValues reads `A=b C="d e"` or the legacy `A b c` form.
func keyValues(s string) ([][2]string, error) {
	if !strings.Contains(strings.Fields(s)[0], "=") {
		k, v, _ := strings.Cut(s, " ")
		return [][2]string{{k, strings.TrimSpace(v)}}, nil
	}
	var out [][2]string
	for len(s) > 0 {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		k, rest, ok := strings.Cut(s, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("expected KEY=VALUE at %q", s)
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			end := strings.Index(rest[1:], `"`)
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote in %q", s)
			}
			v, s = rest[1:end+1], rest[end+2:]
		} else {
			v, s, _ = strings.Cut(rest, " ")
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

func setEnv(env []string, k, v string) []string {
	for i, e := range env {
		if strings.HasPrefix(e, k+"=") {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}
