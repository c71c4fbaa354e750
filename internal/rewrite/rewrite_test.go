package rewrite

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	for _, c := range []struct{ write, want string }{
		{"a longer first version", "a longer first version"},
		{"short", "short"}, // cut to its length, no old bytes after it
		{"longer than short", "longer than short"},
		{"", ""},
	} {
		if err := File(p, []byte(c.write), 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Fatalf("after writing %q: %q", c.write, got)
		}
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("made with mode %v (%v), want 0640", st.Mode(), err)
	}
}

func TestEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("old bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Empty(p); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Size() != 0 {
		t.Fatalf("emptied file: %v, %v", st.Size(), err)
	}
	if err := Empty(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) {
		t.Fatalf("emptying a missing file: %v, want not-exist", err)
	}
}

func TestFileErrorNamesThePath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "no-such-dir", "f")
	err := File(p, []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("writing into a missing directory: %v, want an error naming %s", err, p)
	}
}
