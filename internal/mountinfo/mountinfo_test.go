package mountinfo

import (
	"os"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:          "/plain",
		`/with\040space`:  "/with space",
		`/back\134slash`:  `/back\slash`,
		`/trailing\04`:    `/trailing\04`,
		`/not\999octal`:   `/not\999octal`,
		`/over\777range`:  `/over\777range`,
		`\011tab\012line`: "\ttab\nline",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsMountPoint(t *testing.T) {
	if ok, err := IsMountPoint("/proc"); err != nil || !ok {
		t.Errorf("/proc: %v %v, want a mount point", ok, err)
	}
	dir := t.TempDir()
	if ok, err := IsMountPoint(dir); err != nil || ok {
		t.Errorf("%s: %v %v, want not a mount point", dir, ok, err)
	}
	if _, err := IsMountPoint(dir + "/missing"); !os.IsNotExist(err) {
		t.Errorf("missing path: %v, want not-exist", err)
	}
}
