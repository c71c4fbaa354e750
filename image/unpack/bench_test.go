package unpack

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkLayer unpacks a tree of a few thousand real files (Go's own
// sources), the shape of an application layer.
func BenchmarkLayer(b *testing.B) {
	src := "/usr/local/go/src/cmd"
	if _, err := os.Stat(src); err != nil || os.Getuid() != 0 {
		b.Skipf("needs root and %s", src)
	}
	var buf bytes.Buffer
	cmd := exec.Command("tar", "-C", src, "-cf", "-", ".")
	cmd.Stdout = &buf
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(b.TempDir(), "layer")
		os.Mkdir(dir, 0o755)
		if _, err := Layer(bytes.NewReader(buf.Bytes()), dir, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}
