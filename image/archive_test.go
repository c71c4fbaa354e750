package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func skopeo(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skipf("skopeo not installed (hack/deps.sh installs it): %v", err)
	}
	cmd := exec.Command("skopeo", append([]string{"--insecure-policy"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("skopeo %v: %v\n%s", args, err, out)
	}
}

// Berth's archives and skopeo's must be each other's input: save → skopeo →
// load, both as OCI layout and as docker-archive, keeps the image ID.
func TestArchivesRoundTripThroughSkopeo(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	img := multiLayer(t, s, "example.com/app:v1", Gzip)
	tmp := t.TempDir()

	layout := filepath.Join(tmp, "layout")
	if err := s.Save([]string{"example.com/app:v1"}, nil, layout); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(tmp, "saved.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Save([]string{"example.com/app:v1"}, f, ""); err != nil {
		t.Fatal(err)
	}
	f.Close()

	skopeo(t, "copy", "oci:"+layout+":v1", "docker-archive:"+filepath.Join(tmp, "docker.tar")+":other/app:v2")
	skopeo(t, "copy", "docker-archive:"+tarPath, "oci:"+filepath.Join(tmp, "fromtar")+":v3")
	skopeo(t, "copy", "oci-archive:"+tarPath+":v1", "oci:"+filepath.Join(tmp, "ociarchive")+":v4")

	cases := []struct{ src, name string }{
		{filepath.Join(tmp, "docker.tar"), "other/app:v2"},
		{filepath.Join(tmp, "fromtar"), "loaded:v3"},
		{filepath.Join(tmp, "ociarchive"), "loaded:v4"},
		{tarPath, "example.com/app:v1"},
	}
	for _, c := range cases {
		t.Run(filepath.Base(c.src), func(t *testing.T) {
			dst := newStore(t)
			imgs, err := dst.Load(context.Background(), c.src, Platform{})
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != 1 {
				t.Fatalf("loaded %d images", len(imgs))
			}
			got, err := dst.Get(c.name)
			if err != nil {
				t.Fatal(err)
			}
			if got.ConfigDigest != img.ConfigDigest {
				t.Fatalf("image ID %s, want %s", got.ConfigDigest, img.ConfigDigest)
			}
			rootfs, err := dst.Snapshot(context.Background(), got, "loaded")
			if err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(rootfs, "data", "new")); err != nil || string(b) != "new" {
				t.Fatalf("snapshot of loaded image: %q %v", b, err)
			}
			if _, err := os.Stat(filepath.Join(rootfs, "etc", "removed")); !os.IsNotExist(err) {
				t.Fatalf("whiteout lost: %v", err)
			}
		})
	}
}

func TestLoadRefusesWhatIsNotAnArchive(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	if _, err := s.Load(context.Background(), t.TempDir(), Platform{}); err == nil {
		t.Fatal("empty directory loaded")
	}
}
