// Package imagebench compares pulling and unpacking one multi-layer image
// from a loopback registry with Berth, with skopeo copy + umoci unpack and
// with podman pull, in one run, and measures the snapshot (image present →
// rootfs ready). Run as root:
//
//	go test -run '^$' -bench . -benchtime 5x ./bench/image/
package imagebench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/imagetest"
)

// layerSources are real files (tens of MB over several layers): source
// text compresses well, binaries less so, as in application images.
var layerSources = []string{
	"/usr/local/go/src/net",
	"/usr/local/go/src/cmd/compile",
	"/usr/local/go/pkg/tool/linux_amd64",
	"/usr/local/go/src/crypto",
}

func needs(b *testing.B, tools ...string) {
	b.Helper()
	if os.Getuid() != 0 {
		b.Skip("needs root")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			b.Skipf("%s not installed: %v", t, err)
		}
	}
}

// pushImage builds busybox plus the source layers and pushes them to a
// fresh loopback registry, returning the reference.
func pushImage(b *testing.B, src *image.Store) (string, *image.Image) {
	b.Helper()
	reg := imagetest.Registry(b)
	layers := []io.Reader{imagetest.BusyboxTar(b)}
	for _, d := range layerSources {
		if _, err := os.Stat(d); err != nil {
			b.Skipf("layer source %s: %v", d, err)
		}
		layers = append(layers, imagetest.DirTar(b, d))
	}
	img, err := src.Create(context.Background(), "bench/app", image.NewImage{Layers: layers})
	if err != nil {
		b.Fatal(err)
	}
	ref := reg + "/bench/app:1"
	if _, err := src.Push(context.Background(), "bench/app", ref, image.RegistryOptions{}); err != nil {
		b.Fatal(err)
	}
	return ref, img
}

func run(b *testing.B, name string, args ...string) {
	b.Helper()
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkPullAndUnpack times each tool from empty local storage to an
// unpacked image, b.N rounds each, interleaved, and prints the medians and
// ratios to Berth.
func BenchmarkPullAndUnpack(b *testing.B) {
	needs(b, "skopeo", "umoci", "podman", imagetest.RegistryBin)
	work := b.TempDir()
	src, err := image.Open(filepath.Join(work, "src"), nil)
	if err != nil {
		b.Fatal(err)
	}
	ref, img := pushImage(b, src)
	var size int64
	for _, l := range img.Manifest.Layers {
		size += l.Size
	}
	times := map[string][]time.Duration{}
	// podman refuses a run root longer than 50 characters: that one lives
	// in /run, its storage on the same disk as everyone else's.
	podmanFlags := func(dir string) []string {
		return []string{"--root", dir + "/root", "--runroot", "/run/bb-" + filepath.Base(dir), "--storage-driver", "overlay"}
	}
	tools := []struct {
		name  string
		pull  func(dir string)
		clean func(dir string) // outside the timing
	}{
		{"berth", func(dir string) {
			s, err := image.Open(filepath.Join(dir, "image"), nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Pull(context.Background(), ref, image.PullOptions{}); err != nil {
				b.Fatal(err)
			}
		}, nil},
		{"skopeo+umoci", func(dir string) {
			run(b, "skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false", "docker://"+ref, "oci:"+dir+"/layout:1")
			run(b, "umoci", "unpack", "--image", dir+"/layout:1", dir+"/bundle")
		}, nil},
		{"podman", func(dir string) {
			run(b, "podman", append(podmanFlags(dir), "pull", "-q", "--tls-verify=false", ref)...)
		}, func(dir string) {
			// podman leaves its overlay mounts behind; tear them down.
			exec.Command("podman", append(podmanFlags(dir), "system", "reset", "-f")...).Run()
		}},
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, t := range tools {
			dir, err := os.MkdirTemp("/var/tmp", "bb-"+t.name[:2]+"-")
			if err != nil {
				b.Fatal(err)
			}
			exec.Command("sync").Run()
			start := time.Now()
			t.pull(dir)
			times[t.name] = append(times[t.name], time.Since(start))
			if t.clean != nil {
				t.clean(dir)
			}
			exec.Command("umount", "-R", dir).Run()
			os.RemoveAll(dir)
			os.RemoveAll("/run/bb-" + filepath.Base(dir))
		}
	}
	b.StopTimer()
	berth := median(times["berth"])
	fmt.Printf("\nimage: %d layers, %.1f MB compressed\n", len(img.Manifest.Layers), float64(size)/1e6)
	for _, t := range tools {
		m := median(times[t.name])
		fmt.Printf("%-14s median %8s over %d runs   %.2fx Berth's time\n", t.name, m.Round(time.Millisecond), len(times[t.name]), float64(m)/float64(berth))
		b.ReportMetric(float64(m.Milliseconds()), t.name+"-ms")
	}
}

// BenchmarkSnapshot times "image present" → "rootfs ready" (and removal)
// for a small and a large image: it should not depend on size.
func BenchmarkSnapshot(b *testing.B) {
	needs(b)
	work := b.TempDir()
	s, err := image.Open(filepath.Join(work, "image"), nil)
	if err != nil {
		b.Fatal(err)
	}
	small, err := s.Create(context.Background(), "bench/small", image.NewImage{Layers: []io.Reader{imagetest.BusyboxTar(b)}})
	if err != nil {
		b.Fatal(err)
	}
	layers := []io.Reader{imagetest.BusyboxTar(b)}
	for _, d := range layerSources {
		layers = append(layers, imagetest.DirTar(b, d))
	}
	large, err := s.Create(context.Background(), "bench/large", image.NewImage{Layers: layers})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		img  *image.Image
	}{{"small", small}, {"large", large}} {
		b.Run(c.name, func(b *testing.B) {
			var create, remove time.Duration
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("bench-%d", i)
				start := time.Now()
				if _, err := s.Snapshot(context.Background(), c.img, id); err != nil {
					b.Fatal(err)
				}
				create += time.Since(start)
				start = time.Now()
				if err := s.RemoveSnapshot(id); err != nil {
					b.Fatal(err)
				}
				remove += time.Since(start)
			}
			b.ReportMetric(float64(create.Microseconds())/float64(b.N), "snapshot-µs")
			b.ReportMetric(float64(remove.Microseconds())/float64(b.N), "remove-µs")
		})
	}
}
