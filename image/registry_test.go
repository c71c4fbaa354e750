package image

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/berth-dev/berth/image/imagetest"
)

// smallImage is a three-layer image with a whiteout, quick to push.
func smallImage(t *testing.T, s *Store, ref, marker string, c Compression) *Image {
	t.Helper()
	img, err := s.Create(context.Background(), ref, NewImage{
		Layers: []io.Reader{
			imagetest.Tar(t, imagetest.File{Name: "etc/", Type: '5'}, imagetest.File{Name: "etc/gone", Body: "x"}),
			imagetest.Tar(t, imagetest.File{Name: "marker", Body: marker}),
			imagetest.Tar(t, imagetest.File{Name: "etc/.wh.gone"}),
		},
		Config:      ocispec.ImageConfig{Cmd: []string{"/marker"}, Labels: map[string]string{"marker": marker}},
		Compression: c,
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func readRootfs(t *testing.T, s *Store, img *Image, id, file string) string {
	t.Helper()
	rootfs, err := s.Snapshot(context.Background(), img, id)
	if err != nil {
		t.Fatal(err)
	}
	defer s.RemoveSnapshot(id)
	if _, err := os.Lstat(filepath.Join(rootfs, "etc", "gone")); !os.IsNotExist(err) {
		t.Errorf("whiteout not applied: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(rootfs, file))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRegistryRoundTripForEachCompression(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	for _, c := range []struct {
		c  Compression
		mt string
	}{{Gzip, ocispec.MediaTypeImageLayerGzip}, {Zstd, ocispec.MediaTypeImageLayerZstd}, {Uncompressed, ocispec.MediaTypeImageLayer}} {
		t.Run(string(c.c), func(t *testing.T) {
			src := newStore(t)
			img := smallImage(t, src, "app:"+string(c.c), string(c.c), c.c)
			ref := reg + "/round/" + string(c.c) + ":1"
			if _, err := src.Push(context.Background(), "app:"+string(c.c), ref, RegistryOptions{}); err != nil {
				t.Fatal(err)
			}
			dst := newStore(t)
			got, err := dst.Pull(context.Background(), ref, PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != img.Digest {
				t.Fatalf("pulled %s, pushed %s", got.Digest, img.Digest)
			}
			for _, l := range got.Manifest.Layers {
				if l.MediaType != c.mt {
					t.Errorf("layer media type %s, want %s", l.MediaType, c.mt)
				}
			}
			if m := readRootfs(t, dst, got, "rt", "marker"); m != string(c.c) {
				t.Fatalf("marker %q", m)
			}
		})
	}
}

// An image index on the registry: Berth takes this machine's platform, or
// the one asked for, and the reference names the platform's image.
func TestPullPicksThePlatformFromAnIndex(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	ctx := context.Background()
	src := newStore(t)
	here := smallImage(t, src, "app:here", "here", Gzip)
	other := smallImage(t, src, "app:other", "other", Gzip)
	for _, n := range []string{"here", "other"} {
		if _, err := src.Push(ctx, "app:"+n, reg+"/multi/app:"+n, RegistryOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The index is put together by go-containerregistry, not by Berth.
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	var adds []mutate.IndexAddendum
	for _, p := range []struct{ tag, arch string }{{"other", otherArch}, {"here", runtime.GOARCH}} {
		r, err := name.ParseReference(reg + "/multi/app:" + p.tag)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(r)
		if err != nil {
			t.Fatal(err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: p.arch}}})
	}
	idxRef, err := name.ParseReference(reg + "/multi/app:all")
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(idxRef, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	dst := newStore(t)
	got, err := dst.Pull(ctx, reg+"/multi/app:all", PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != here.Digest {
		t.Fatalf("default platform pulled %s, want this machine's %s", got.Digest, here.Digest)
	}
	got, err = dst.Pull(ctx, reg+"/multi/app@"+idxDigest.String(), PullOptions{Platform: Platform{OS: "linux", Architecture: otherArch}})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != other.Digest || got.Config.Config.Labels["marker"] != "other" {
		t.Fatalf("linux/%s pulled %s, want %s", otherArch, got.Digest, other.Digest)
	}
	if _, err := dst.Pull(ctx, reg+"/multi/app:all", PullOptions{Platform: Platform{OS: "linux", Architecture: "s390x"}}); err == nil || !strings.Contains(err.Error(), "no manifest for linux/s390x") {
		t.Fatalf("missing platform: %v", err)
	}
}

// skopeo, an independent tool, pushes a Docker schema 2 image; Berth pulls
// it, keeps its manifest byte for byte and runs it.
func TestPullDockerSchema2PushedBySkopeo(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skipf("skopeo not installed (hack/deps.sh installs it): %v", err)
	}
	reg := imagetest.Registry(t)
	src := newStore(t)
	smallImage(t, src, "app:v2s2", "docker", Gzip)
	layout := filepath.Join(t.TempDir(), "layout")
	if err := src.Save([]string{"app:v2s2"}, nil, layout); err != nil {
		t.Fatal(err)
	}
	ref := reg + "/docker/app:v2s2"
	skopeo(t, "copy", "--format", "v2s2", "--dest-tls-verify=false", "oci:"+layout+":v2s2", "docker://"+ref)
	out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", "docker://"+ref).Output()
	if err != nil {
		t.Fatal(err)
	}
	dst := newStore(t)
	got, err := dst.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.MediaType != MediaTypeDockerManifest || got.Digest.String() != strings.TrimSpace(string(out)) {
		t.Fatalf("pulled %s %s, skopeo pushed %s", got.MediaType, got.Digest, out)
	}
	for _, l := range got.Manifest.Layers {
		if l.MediaType != MediaTypeDockerLayerGzip {
			t.Errorf("layer media type %s", l.MediaType)
		}
	}
	if m := readRootfs(t, dst, got, "v2s2", "marker"); m != "docker" {
		t.Fatalf("marker %q", m)
	}
	// Pushed back by Berth, the registry gets the same manifest digest.
	back := reg + "/docker/back:1"
	if d, err := dst.Push(context.Background(), ref, back, RegistryOptions{}); err != nil || d != got.Digest {
		t.Fatalf("push back: %s %v", d, err)
	}
}

// Plain HTTP only to loopback and to registries marked insecure; the fake
// base transport records what would have gone out, so nothing leaves.
func TestPlainHTTPOnlyWhereAllowed(t *testing.T) {
	var sent []string
	opt := RegistryOptions{Insecure: []string{"lab.example:5000"}, Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		sent = append(sent, r.URL.String())
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
	})}
	rt := opt.transport()
	for url, allowed := range map[string]bool{
		"https://10.0.0.5:5000/v2/":   true,
		"http://10.0.0.5:5000/v2/":    false,
		"http://registry.local/v2/":   false,
		"http://127.0.0.1:5000/v2/":   true,
		"http://localhost:5000/v2/":   true,
		"http://[::1]:5000/v2/":       true,
		"http://lab.example:5000/v2/": true,
		"http://lab.example:5001/v2/": false,
		"https://index.docker.io/v2/": true,
		"http://index.docker.io/v2/":  false,
	} {
		sent = nil
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := rt.RoundTrip(req)
		if allowed && (err != nil || len(sent) != 1) {
			t.Errorf("%s: refused: %v", url, err)
		}
		if !allowed && (err == nil || len(sent) != 0 || !strings.Contains(err.Error(), "--insecure-registry")) {
			t.Errorf("%s: allowed (sent %v, err %v)", url, sent, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
}
