package image

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/image/imagetest"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: overlay mounts, ownership, device nodes")
	}
}

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "image"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ids, _ := s.Snapshots()
		for _, id := range ids {
			s.RemoveSnapshot(id)
		}
	})
	return s
}

// multiLayer makes busybox plus two layers exercising whiteouts and opaque
// directories.
func multiLayer(t *testing.T, s *Store, ref string, c Compression) *Image {
	t.Helper()
	base := imagetest.BusyboxTar(t)
	l2 := imagetest.Tar(t,
		imagetest.File{Name: "etc/removed", Body: "should vanish"},
		imagetest.File{Name: "data/", Type: '5'},
		imagetest.File{Name: "data/old", Body: "old"},
		imagetest.File{Name: "keep", Body: "kept"},
	)
	l3 := imagetest.Tar(t,
		imagetest.File{Name: "etc/.wh.removed"},
		imagetest.File{Name: "data/", Type: '5'},
		imagetest.File{Name: "data/.wh..wh..opq"},
		imagetest.File{Name: "data/new", Body: "new"},
	)
	img, err := s.Create(context.Background(), ref, NewImage{
		Layers:      []io.Reader{base, l2, l3},
		Config:      ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}, WorkingDir: "/"},
		Compression: c,
	})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestSnapshotIsAUsableContainerRootfs(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	img := multiLayer(t, s, "test/multi:1", Zstd)
	rootfs, err := s.Snapshot(context.Background(), img, "c1")
	if err != nil {
		t.Fatal(err)
	}
	out := imagetest.RunC(t, rootfs, "/bin/sh", "-c",
		`test ! -e /etc/removed && ls /data && cat /keep && echo written > /tmp/w && echo ok`)
	if want := "new\nkept" + "ok\n"; out != want {
		t.Fatalf("container saw %q, want %q", out, want)
	}
	// The write landed in the upper directory, not in a shared layer.
	if b, err := os.ReadFile(filepath.Join(s.Dir(), "snapshots", "c1", "upper", "tmp", "w")); err != nil || string(b) != "written\n" {
		t.Fatalf("upper dir: %q %v", b, err)
	}
	rootfs2, err := s.Snapshot(context.Background(), img, "c2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs2, "tmp", "w")); !os.IsNotExist(err) {
		t.Fatalf("second snapshot sees the first's write: %v", err)
	}
	if _, err := s.Snapshot(context.Background(), img, "c1"); err == nil {
		t.Fatal("a second snapshot with the same ID succeeded")
	}
	// A caller that builds the overlay itself gets the parts, and the same
	// files through them, with the store's mount gone.
	parts, err := s.DetachSnapshot("c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "keep")); !os.IsNotExist(err) {
		t.Errorf("the store's mount is still there after DetachSnapshot: %v", err)
	}
	again := filepath.Join(t.TempDir(), "rootfs")
	if err := os.Mkdir(again, 0o755); err != nil {
		t.Fatal(err)
	}
	lowers := slices.Clone(parts.Layers)
	slices.Reverse(lowers)
	if err := MountOverlay(lowers, parts.Upper, parts.Work, again, false); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(again, "tmp", "w"))
	unix.Unmount(again, unix.MNT_DETACH)
	if err != nil || string(b) != "written\n" || len(parts.Layers) != len(img.Config.RootFS.DiffIDs) {
		t.Errorf("overlay of the detached parts: %q %v, %d layers", b, err, len(parts.Layers))
	}
	if _, err := s.DetachSnapshot("nosuch"); err == nil {
		t.Error("DetachSnapshot of a missing snapshot succeeded")
	}
	for _, id := range []string{"c1", "c2"} {
		if err := s.RemoveSnapshot(id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "snapshots", "c1")); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir left: %v", err)
	}
	if err := s.RemoveSnapshot("c1"); err != nil {
		t.Fatalf("removing twice: %v", err)
	}
}

func TestLayersSharedBetweenImagesAreStoredOnce(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	a := multiLayer(t, s, "test/a", Gzip)
	b, err := s.Create(context.Background(), "test/b", NewImage{Base: a, Layers: []io.Reader{imagetest.Tar(t, imagetest.File{Name: "b", Body: "b"})}})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Manifest.Layers) != 4 {
		t.Fatalf("b has %d layers", len(b.Manifest.Layers))
	}
	ents, _ := os.ReadDir(filepath.Join(s.Dir(), "layers"))
	if len(ents) != 4 {
		t.Fatalf("%d unpacked layers for 4 distinct ones", len(ents))
	}
}

func TestPullPushRoundTripThroughARealRegistry(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	src := newStore(t)
	img := multiLayer(t, src, "test/src", Gzip)
	ref := reg + "/berth/multi:v1"
	pushed, err := src.Push(context.Background(), "test/src", ref, RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pushed != img.Digest {
		t.Fatalf("pushed %s, stored %s", pushed, img.Digest)
	}
	// skopeo, an independent client, sees the same manifest digest.
	if out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", "docker://"+ref).CombinedOutput(); err != nil {
		t.Fatalf("skopeo inspect: %v %s", err, out)
	} else if strings.TrimSpace(string(out)) != img.Digest.String() {
		t.Fatalf("skopeo sees %s, want %s", out, img.Digest)
	}

	dst := newStore(t)
	var gets atomic.Int64
	opt := PullOptions{RegistryOptions: RegistryOptions{Transport: countBlobGets(&gets)}}
	var events []Progress
	opt.Progress = func(p Progress) { events = append(events, p) }
	got, err := dst.Pull(context.Background(), ref, opt)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != img.Digest || got.ConfigDigest != img.ConfigDigest {
		t.Fatalf("pulled %s/%s, pushed %s/%s", got.Digest, got.ConfigDigest, img.Digest, img.ConfigDigest)
	}
	if len(events) == 0 || !events[len(events)-1].Done {
		t.Fatalf("progress events: %v", events)
	}
	rootfs, err := dst.Snapshot(context.Background(), got, "pulled")
	if err != nil {
		t.Fatal(err)
	}
	if out := imagetest.RunC(t, rootfs, "/bin/cat", "/data/new"); out != "new" {
		t.Fatalf("container read %q", out)
	}
	// A second pull fetches no layer again.
	before := gets.Load()
	if _, err := dst.Pull(context.Background(), ref, opt); err != nil {
		t.Fatal(err)
	}
	if gets.Load() != before {
		t.Fatalf("second pull fetched %d blobs", gets.Load()-before)
	}
}

func TestConcurrentPullsDownloadEachLayerOnce(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	src := newStore(t)
	a := multiLayer(t, src, "test/a", Gzip)
	if _, err := src.Create(context.Background(), "test/b", NewImage{Base: a, Layers: []io.Reader{imagetest.Tar(t, imagetest.File{Name: "b", Body: "b"})}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := src.Push(context.Background(), "test/"+n, reg+"/berth/"+n, RegistryOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dst := newStore(t)
	// A second Store on the same directory stands for another process:
	// only the file locks keep the two from fetching the same layer.
	other, err := Open(dst.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	fetched := map[string]int{} // blob digest → GETs
	opt := PullOptions{RegistryOptions: RegistryOptions{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if _, d, ok := strings.Cut(r.URL.Path, "/blobs/"); ok && r.Method == http.MethodGet {
			mu.Lock()
			fetched[d]++
			mu.Unlock()
		}
		return http.DefaultTransport.RoundTrip(r)
	})}}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := []*Store{dst, other}[i/2]
			_, errs[i] = s.Pull(context.Background(), reg+"/berth/"+[]string{"a", "b"}[i%2], opt)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// A config may be fetched by each of the pulls racing for it (it is
	// small and not locked); a layer exactly once.
	b, err := dst.Get(reg + "/berth/b")
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Manifest.Layers) != 4 {
		t.Fatalf("b has %d layers", len(b.Manifest.Layers))
	}
	for _, l := range b.Manifest.Layers {
		if n := fetched[l.Digest.String()]; n != 1 {
			t.Errorf("layer %s downloaded %d times", l.Digest, n)
		}
	}
}

// countBlobGets counts blob downloads (GET .../blobs/...) on the way out.
func countBlobGets(n *atomic.Int64) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			n.Add(1)
		}
		return http.DefaultTransport.RoundTrip(r)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestPruneReturnsTheStoreToNearlyZeroBytes(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	empty := s.TotalBytes()
	img := multiLayer(t, s, "test/p", Gzip)
	if _, err := s.Snapshot(context.Background(), img, "user"); err != nil {
		t.Fatal(err)
	}
	full := s.TotalBytes()
	if full < empty+1<<20 {
		t.Fatalf("store with busybox uses only %d bytes", full)
	}
	if _, err := s.Untag("test/p"); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Prune(PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot keeps its layers, but not the blobs.
	if rep.Layers != 0 || rep.Blobs == 0 {
		t.Fatalf("prune with a snapshot alive: %+v", rep)
	}
	if err := s.RemoveSnapshot("user"); err != nil {
		t.Fatal(err)
	}
	rep2, err := s.Prune(PruneOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	left := s.TotalBytes()
	if left > empty+64<<10 {
		t.Fatalf("after prune the store holds %d bytes (empty: %d)", left, empty)
	}
	freed := rep.BytesFreed + rep2.BytesFreed
	if freed < (full-left)/2 {
		t.Fatalf("prune reported %d bytes freed, the store shrank by %d", freed, full-left)
	}
	usage, err := s.DiskUsage()
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range usage {
		if u.Count != 0 {
			t.Errorf("after prune %s: %+v", u.Kind, u)
		}
	}
}

func TestCorruptBlobIsNeverVisible(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	content := imagetest.Tar(t, imagetest.File{Name: "f", Body: "hello"})
	l, diffID, err := s.putLayer(bytes.NewReader(content.Bytes()), Gzip)
	if err != nil {
		t.Fatal(err)
	}
	// Drop the layer we just stored, then fetch it again from a source that
	// flips a byte.
	blob, _ := s.ReadBlob(l.Digest)
	os.Remove(s.blobPath(l.Digest))
	bad := bytes.Clone(blob)
	bad[len(bad)/2] ^= 0xff
	err = s.ensureLayer(Layer{Blob: l, DiffID: diffID}, func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(bad)), nil
	}, nil)
	if err == nil {
		t.Fatal("corrupt layer accepted")
	}
	if s.HasBlob(l.Digest) || s.HasLayer(diffID) {
		t.Fatal("corrupt content became visible")
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), "tmp")); len(ents) != 0 {
		t.Fatalf("leftovers in tmp: %v", ents)
	}
	// The right content then goes through.
	if err := s.ensureLayer(Layer{Blob: l, DiffID: diffID}, func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(blob)), nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	if !s.HasBlob(l.Digest) || !s.HasLayer(diffID) {
		t.Fatal("good content not stored")
	}
}

func TestInterruptedPullLeavesTheStoreConsistentAndResumes(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	src := newStore(t)
	img := multiLayer(t, src, "test/cut", Zstd)
	ref := reg + "/berth/cut:1"
	if _, err := src.Push(context.Background(), "test/cut", ref, RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := newStore(t)
	// The connection dies 100 kB into every layer download.
	cut := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil && strings.Contains(r.URL.Path, "/blobs/") && resp.ContentLength > 100_000 {
			resp.Body = struct {
				io.Reader
				io.Closer
			}{io.MultiReader(io.LimitReader(resp.Body, 100_000), errReader{}), resp.Body}
		}
		return resp, err
	})
	_, err := dst.Pull(context.Background(), ref, PullOptions{RegistryOptions: RegistryOptions{Transport: cut}})
	if err == nil {
		t.Fatal("pull over a dying connection succeeded")
	}
	if _, err := dst.Get(ref); err == nil {
		t.Fatal("image visible after a failed pull")
	}
	for _, l := range img.Layers() {
		if l.Blob.Size > 100_000 && (dst.HasBlob(l.Blob.Digest) || dst.HasLayer(l.DiffID)) {
			t.Fatalf("layer %s visible after its download failed", l.DiffID)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dst.Dir(), "tmp")); len(ents) != 0 {
		t.Fatalf("leftovers in tmp: %v", ents)
	}
	got, err := dst.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatalf("pull after the failure: %v", err)
	}
	if got.Digest != img.Digest {
		t.Fatalf("pulled %s, want %s", got.Digest, img.Digest)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestHostileLayerLeavesNothingBehind(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	evil := imagetest.Tar(t, imagetest.File{Name: "x", Link: "/etc", Type: '2'}, imagetest.File{Name: "x/pwned", Body: "x"})
	_, err := s.Create(context.Background(), "test/evil", NewImage{Layers: []io.Reader{evil}})
	if err == nil || !strings.Contains(err.Error(), "x/pwned") {
		t.Fatalf("want an error naming x/pwned, got %v", err)
	}
	if _, err := os.Stat("/etc/pwned"); err == nil {
		t.Fatal("/etc/pwned written")
	}
	for _, d := range []string{"blobs/sha256", "layers", "tmp"} {
		if ents, _ := os.ReadDir(filepath.Join(s.Dir(), d)); len(ents) != 0 {
			t.Errorf("%s holds %v", d, ents)
		}
	}
}

func TestTagGetAndUntagByNameAndID(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	img, err := s.Import(context.Background(), imagetest.Tar(t, imagetest.File{Name: "f", Body: "x"}), "app:1", []string{"CMD [\"/f\"]"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Tag("app:1", "registry.example:5000/team/app:2"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"app:1", "docker.io/library/app:1", "registry.example:5000/team/app:2", img.ConfigDigest.Encoded()[:12], img.Digest.String()} {
		got, err := s.Get(n)
		if err != nil {
			t.Fatalf("Get(%q): %v", n, err)
		}
		if got.Digest != img.Digest || len(got.Names) != 2 || got.Config.Config.Cmd[0] != "/f" {
			t.Fatalf("Get(%q) = %+v", n, got)
		}
	}
	if _, err := s.Get("app:3"); err == nil {
		t.Fatal("unknown tag found")
	}
	removed, err := s.Untag("app:1")
	if err != nil || len(removed) != 0 {
		t.Fatalf("untag one of two names: %v %v", removed, err)
	}
	removed, err = s.Untag(img.ConfigDigest.Encoded()[:12])
	if err != nil || len(removed) != 1 {
		t.Fatalf("untag by ID: %v %v", removed, err)
	}
	if imgs, _ := s.List(); len(imgs) != 0 {
		t.Fatalf("images left: %v", imgs)
	}
}

// After a reboot the mounts are gone but the container's writes are not:
// MountSnapshot brings the same rootfs back, even once the image is pruned.
func TestMountSnapshotAfterTheMountIsGone(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	img := smallImage(t, s, "app:remount", "remount", Zstd)
	rootfs, err := s.Snapshot(context.Background(), img, "survivor")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "written"), []byte("by the container"), 0o644); err != nil {
		t.Fatal(err)
	}
	if again, err := s.MountSnapshot("survivor"); err != nil || again != rootfs {
		t.Fatalf("mounting a mounted snapshot: %q %v", again, err)
	}
	if err := unix.Unmount(rootfs, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Untag("app:remount"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(PruneOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	got, err := s.MountSnapshot("survivor")
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"written": "by the container", "marker": "remount"} {
		if b, err := os.ReadFile(filepath.Join(got, file)); err != nil || string(b) != want {
			t.Errorf("%s after remount: %q %v", file, b, err)
		}
	}
	if _, err := s.MountSnapshot("nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown snapshot: %v", err)
	}
	if _, err := s.Snapshot(context.Background(), img, "../escape"); err == nil {
		t.Error("a container ID with a path in it was accepted")
	}
}

func TestEnsurePullsOnlyWhatIsMissing(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	src := newStore(t)
	img := smallImage(t, src, "app:ensure", "ensure", Gzip)
	ref := reg + "/ensure/app:1"
	if _, err := src.Push(context.Background(), "app:ensure", ref, RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := newStore(t)
	var requests atomic.Int64
	opt := PullOptions{RegistryOptions: RegistryOptions{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		requests.Add(1)
		return http.DefaultTransport.RoundTrip(r)
	})}}
	got, err := dst.Ensure(context.Background(), ref, opt)
	if err != nil || got.Digest != img.Digest {
		t.Fatalf("first Ensure: %v", err)
	}
	before := requests.Load()
	if before == 0 {
		t.Fatal("first Ensure did not reach the registry")
	}
	if got, err = dst.Ensure(context.Background(), ref, opt); err != nil || got.Digest != img.Digest {
		t.Fatalf("second Ensure: %v", err)
	}
	if n := requests.Load() - before; n != 0 {
		t.Fatalf("Ensure of a present image made %d requests", n)
	}
	if devs, err := dst.SkippedDevices(got); err != nil || len(devs) != 0 {
		t.Fatalf("skipped devices %v %v", devs, err)
	}
}
