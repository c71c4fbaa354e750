// Package imagetest gives the image tests and benchmarks their real parts: a
// Debian docker-registry on a free loopback port, busybox root filesystems
// as tar streams, and a runc-run container on a snapshot.
package imagetest

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/crypto/bcrypt"

	"github.com/berth-dev/berth/internal/busybox"
)

// RegistryBin is Debian's docker-registry.
const RegistryBin = "/usr/bin/docker-registry"

// Registry starts a registry on 127.0.0.1 with its storage in a temporary
// directory and returns its host:port; it stops when the test ends.
func Registry(tb testing.TB) string {
	tb.Helper()
	return registry(tb, "")
}

// RegistryWithLogin starts a registry that wants HTTP basic auth with user
// and password for everything.
func RegistryWithLogin(tb testing.TB, user, password string) string {
	tb.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return registry(tb, fmt.Sprintf("auth:\n  htpasswd:\n    realm: berth-test\n    path: %s\n", htpasswd))
}

func registry(tb testing.TB, extra string) string {
	tb.Helper()
	if _, err := os.Stat(RegistryBin); err != nil {
		tb.Skipf("docker-registry not installed (hack/deps.sh installs it): %v", err)
	}
	dir := tb.TempDir()
	// The free port is found by binding and closing it, so another process
	// may take it first: then the registry exits and we try another.
	var failures []string
	for attempt := 0; attempt < 5; attempt++ {
		addr, logs, err := startRegistry(tb, dir, extra)
		if err == nil {
			return addr
		}
		failures = append(failures, fmt.Sprintf("%v\n%s", err, logs))
	}
	tb.Fatalf("registry did not start:\n%s", strings.Join(failures, "\n"))
	return ""
}

func startRegistry(tb testing.TB, dir, extra string) (string, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", err
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: %s/data
  delete:
    enabled: true
http:
  addr: %s
%s`, dir, addr, extra)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return "", "", err
	}
	logs := &lockedBuffer{}
	cmd := exec.Command(RegistryBin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		return "", "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	client := &http.Client{Timeout: time.Second}
	for i := 0; i < 400; i++ {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			return "", logs.String(), fmt.Errorf("registry on %s exited: %v", addr, err)
		default:
		}
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			// 200, or 401 when it wants a login: either way it serves, and
			// only a registry sets this header.
			resp.Body.Close()
			if resp.Header.Get("Docker-Distribution-Api-Version") == "" {
				return "", "", fmt.Errorf("something else answers on %s", addr)
			}
			return addr, "", nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return "", logs.String(), fmt.Errorf("registry on %s did not answer in 10s", addr)
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// BusyboxTar is a tar stream of a busybox root filesystem.
func BusyboxTar(tb testing.TB) *bytes.Buffer {
	tb.Helper()
	if err := busybox.Available(); err != nil {
		tb.Skip(err)
	}
	dir := tb.TempDir()
	if err := busybox.Rootfs(dir); err != nil {
		tb.Fatal(err)
	}
	return DirTar(tb, dir)
}

// DirTar tars a directory with GNU tar, an independent writer.
func DirTar(tb testing.TB, dir string) *bytes.Buffer {
	tb.Helper()
	var buf bytes.Buffer
	cmd := exec.Command("tar", "-C", dir, "--numeric-owner", "--xattrs", "-cf", "-", ".")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("tar: %v %s", err, stderr.String())
	}
	return &buf
}

// File is one entry of a handmade layer.
type File struct {
	Name, Body, Link string
	Type             byte
	Mode             int64
}

// Tar makes a layer from entries.
func Tar(tb testing.TB, files ...File) *bytes.Buffer {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Linkname: f.Link, Typeflag: f.Type, Mode: f.Mode, Size: int64(len(f.Body)), ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			tb.Fatal(err)
		}
		tw.Write([]byte(f.Body))
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	return &buf
}

// RunC runs args in a container whose root is rootfs with runc and returns
// its output.
func RunC(tb testing.TB, rootfs string, args ...string) string {
	tb.Helper()
	return RunProcess(tb, rootfs, specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin:/usr/bin"}})
}

// RunProcess runs proc (args, env, cwd, user) with runc in a bundle whose
// root is rootfs and whose config is otherwise what `runc spec` writes, and
// returns its output.
func RunProcess(tb testing.TB, rootfs string, proc specs.Process) string {
	tb.Helper()
	if _, err := exec.LookPath("runc"); err != nil {
		tb.Skipf("runc not installed: %v", err)
	}
	bundle := tb.TempDir()
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		tb.Fatalf("runc spec: %v %s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		tb.Fatal(err)
	}
	spec.Root = &specs.Root{Path: rootfs}
	spec.Process.Terminal = false
	spec.Process.Args, spec.Process.Env, spec.Process.Cwd, spec.Process.User = proc.Args, proc.Env, proc.Cwd, proc.User
	if b, err = json.Marshal(spec); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		tb.Fatal(err)
	}
	id := fmt.Sprintf("berth-image-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	stateRoot := tb.TempDir()
	tb.Cleanup(func() { exec.Command("runc", "--root", stateRoot, "delete", "-f", id).Run() })
	out, err := exec.Command("runc", "--root", stateRoot, "run", "--bundle", bundle, id).CombinedOutput()
	if err != nil {
		tb.Fatalf("runc run %s: %v\n%s", strings.Join(proc.Args, " "), err, out)
	}
	return string(out)
}
