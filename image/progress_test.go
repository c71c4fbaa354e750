package image

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func TestProgressPlainLinesWhenNotATerminal(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(100, 0)
	p := NewProgressPrinter(&out, false, func() time.Time { return now })
	have := digest.Digest("sha256:" + strings.Repeat("cd", 32))
	d := digest.Digest("sha256:" + strings.Repeat("ab", 32))
	p.Update(Progress{Layer: have, Total: 10, Current: 10, Done: true, Existing: true})
	p.Update(Progress{Layer: d, Total: 2_000_000})
	now = now.Add(time.Second)
	p.Update(Progress{Layer: d, Current: 1_000_000, Total: 2_000_000})
	now = now.Add(time.Second)
	p.Update(Progress{Layer: d, Current: 2_000_000, Total: 2_000_000, Done: true})
	p.Finish()
	want := "cdcdcdcdcdcd: already present\nabababababab: downloading 2.0MB\nabababababab: done 2.0MB in 2s (1.0MB/s)\n"
	if out.String() != want {
		t.Fatalf("got %q, want %q", out.String(), want)
	}
}

func TestProgressRedrawsInPlaceOnATerminal(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(100, 0)
	p := NewProgressPrinter(&out, true, func() time.Time { return now })
	d := digest.Digest("sha256:" + strings.Repeat("ab", 32))
	p.Update(Progress{Layer: d, Total: 2000})
	now = now.Add(time.Second)
	p.Update(Progress{Layer: d, Current: 1000, Total: 2000})
	got := out.String()
	if !strings.Contains(got, "\x1b[1A") || !strings.Contains(got, "abababababab: 1.0kB / 2.0kB (1.0kB/s)") {
		t.Fatalf("terminal output %q", got)
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 999: "999B", 1000: "1.0kB", 35_500_000: "35.5MB", 2e12: "2.0TB"} {
		if got := HumanSize(n); got != want {
			t.Errorf("HumanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
