package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/image/imagetest"
)

// A full disk mid-pull: the pull fails naming the cause, nothing partial is
// visible, and once there is room the same pull completes.
func TestFullDiskMidPullLeavesTheStoreConsistent(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	src := newStore(t)
	img := multiLayer(t, src, "test/big", Gzip)
	ref := reg + "/full/big:1"
	if _, err := src.Push(context.Background(), "test/big", ref, RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	// A tmpfs too small for the unpacked busybox layer.
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	dst, err := Open(filepath.Join(mnt, "image"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dst.Pull(context.Background(), ref, PullOptions{Jobs: 1})
	if err == nil || !strings.Contains(err.Error(), syscall.ENOSPC.Error()) {
		t.Fatalf("pull onto a full disk: want %q, got %v", syscall.ENOSPC.Error(), err)
	}
	if _, err := dst.Get(ref); err == nil {
		t.Fatal("image visible after a failed pull")
	}
	for _, l := range img.Layers() {
		if dst.HasBlob(l.Blob.Digest) != dst.HasLayer(l.DiffID) {
			t.Errorf("layer %s half stored: blob %v, unpacked %v", l.DiffID, dst.HasBlob(l.Blob.Digest), dst.HasLayer(l.DiffID))
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dst.Dir(), "tmp")); len(ents) != 0 {
		t.Fatalf("leftovers in tmp: %v", ents)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", unix.MS_REMOUNT, "size=64m"); err != nil {
		t.Fatal(err)
	}
	got, err := dst.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatalf("pull once there is room: %v", err)
	}
	if m := readRootfs(t, dst, got, "after", "data/new"); m != "new" {
		t.Fatalf("read %q", m)
	}
}

// What a crash leaves (a layer directory without its meta.json, partial
// files in tmp/) does not stop the next pull, and prune clears it.
func TestPullAfterACrashReplacesHalfWrittenState(t *testing.T) {
	needRoot(t)
	reg := imagetest.Registry(t)
	src := newStore(t)
	img := smallImage(t, src, "app:crash", "crash", Gzip)
	ref := reg + "/crash/app:1"
	if _, err := src.Push(context.Background(), "app:crash", ref, RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := newStore(t)
	half := filepath.Join(dst.Dir(), "layers", img.Layers()[1].DiffID.Encoded(), "fs")
	if err := os.MkdirAll(half, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(half, "junk"), []byte("from before the crash"), 0o644)
	os.WriteFile(filepath.Join(dst.Dir(), "tmp", "blob-123"), []byte("partial"), 0o600)
	// A snapshot whose process died before it wrote its record.
	if err := os.MkdirAll(filepath.Join(dst.Dir(), "snapshots", "torn", "upper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if dst.HasLayer(img.Layers()[1].DiffID) {
		t.Fatal("a layer without meta.json counts as unpacked")
	}
	got, err := dst.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(half, "junk")); !os.IsNotExist(err) {
		t.Fatalf("junk from the crash survived into the layer: %v", err)
	}
	if m := readRootfs(t, dst, got, "c", "marker"); m != "crash" {
		t.Fatalf("marker %q", m)
	}
	rep, err := dst.Prune(PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dst.Dir(), "tmp")); len(ents) != 0 || rep.BytesFreed == 0 {
		t.Fatalf("prune left %v in tmp, freed %d", ents, rep.BytesFreed)
	}
	if ids, _ := dst.Snapshots(); len(ids) != 0 || rep.Snapshots != 1 {
		t.Fatalf("after prune snapshots %v, report %+v", ids, rep)
	}
}
