// Package busybox builds minimal root filesystems from the host's static
// busybox (Debian's busybox-static), so tests, benchmarks and the demo can
// make real containers and images without reaching any registry.
package busybox

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Path is where Debian's busybox-static installs the binary.
const Path = "/bin/busybox"

// Available reports whether the static busybox is installed, with the reason
// when it is not, so tests can skip with a useful message.
func Available() error {
	out, err := exec.Command("file", "-L", Path).CombinedOutput()
	if err != nil {
		if _, statErr := os.Stat(Path); statErr != nil {
			return fmt.Errorf("busybox: %w (apt-get install busybox-static)", statErr)
		}
		// No file(1): trust the binary is there.
		return nil
	}
	if !bytes.Contains(out, []byte("statically linked")) && !bytes.Contains(out, []byte("static-pie")) {
		return fmt.Errorf("busybox: %s is not statically linked (apt-get install busybox-static)", Path)
	}
	return nil
}

// Rootfs fills dir with a busybox root filesystem: /bin/busybox, one symlink
// per applet in /bin, and the empty directories a container expects.
func Rootfs(dir string) error {
	if err := Available(); err != nil {
		return err
	}
	for _, d := range []string{"bin", "dev", "etc", "proc", "sys", "tmp", "root", "var", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	if err := copyFile(Path, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	applets, err := Applets()
	if err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		link := filepath.Join(dir, "bin", a)
		if err := os.Symlink("busybox", link); err != nil && !os.IsExist(err) {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":  "127.0.0.1 localhost\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("busybox rootfs: %w", err)
		}
	}
	return nil
}

// Applets lists the applet names the installed busybox provides.
func Applets() ([]string, error) {
	out, err := exec.Command(Path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	return strings.Fields(string(out)), nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
