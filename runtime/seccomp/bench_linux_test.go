package seccomp

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// go test -run '^$' -bench . ./runtime/seccomp/
//
// Compile is what crun pays on every start; a cache hit is what Berth pays
// once a profile has been seen; Load is what the container's init pays.

func BenchmarkCompileDefaultProfile(b *testing.B) {
	for b.Loop() {
		if _, err := Compile(DefaultProfile()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCompileCachedHit(b *testing.B) {
	dir := b.TempDir()
	if _, err := CompileCached(DefaultProfile(), dir); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		c := NewCache(dir)
		if _, err := c.Compile(DefaultProfile()); err != nil {
			b.Fatal(err)
		}
		if c.Stats().Hits != 1 {
			b.Fatal("cache miss")
		}
	}
}

// onFreshThread runs f on a new OS thread that exits afterwards, so that
// filters loaded by f never pile up (the kernel caps a thread's total).
func onFreshThread(b *testing.B, f func() error) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		errc <- f()
	}()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkThreadBaseline(b *testing.B) {
	for b.Loop() {
		onFreshThread(b, func() error { return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
	}
}

func BenchmarkLoadDefaultProfile(b *testing.B) {
	p, err := Compile(DefaultProfile())
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		onFreshThread(b, func() error {
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				return err
			}
			_, err := p.Load()
			return err
		})
	}
}

// BenchmarkSummary times the same operations side by side and prints the
// ratios (testing.Benchmark cannot be nested inside a running benchmark).
func BenchmarkSummary(b *testing.B) {
	p, err := Compile(DefaultProfile())
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if _, err := CompileCached(DefaultProfile(), dir); err != nil {
		b.Fatal(err)
	}
	perOp := func(n int, f func() error) time.Duration {
		start := time.Now()
		for range n {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(n)
	}
	nnp := func() error { return unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
	thread := func(f func() error) func() error {
		return func() error {
			errc := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				errc <- f()
			}()
			return <-errc
		}
	}
	for b.Loop() {
		compile := perOp(200, func() error { _, err := Compile(DefaultProfile()); return err })
		hit := perOp(2000, func() error { _, err := NewCache(dir).Compile(DefaultProfile()); return err })
		base := perOp(2000, thread(nnp))
		load := perOp(2000, thread(func() error {
			if err := nnp(); err != nil {
				return err
			}
			_, err := p.Load()
			return err
		})) - base
		fmt.Printf("default profile: %d BPF instructions\n", len(p.Instructions))
		fmt.Printf("compile              %10v/op\n", compile)
		fmt.Printf("cache hit            %10v/op   compile/hit = %.1fx\n", hit, float64(compile)/float64(hit))
		fmt.Printf("load (thread excl.)  %10v/op   (thread start+exit %v/op)\n", load, base)
		fmt.Printf("compile / (hit+load) = %.1fx\n", float64(compile)/float64(hit+max(load, 0)))
	}
}
