// Package uptest runs `berth up` for tests that drive Berth from outside, as
// users do, and cleans up after it even when the test fails.
package uptest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/statedir"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/runtime"
)

// BusyboxData makes a data directory for berth up holding a busybox image
// (busybox:latest, PATH=/bin), imported with berth's own CLI.
func BusyboxData(t testing.TB, berth string) string {
	t.Helper()
	// Reached by the containers' unprivileged host uids, unlike t.TempDir.
	dir := testdir.World(t)
	data := filepath.Join(dir, "data")
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := os.WriteFile(tarPath, imagetest.BusyboxTar(t).Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(berth, "image", "--root", data, "import", tarPath, "busybox:latest", "-c", "ENV PATH=/bin").CombinedOutput(); err != nil {
		t.Fatalf("import: %v %s", err, out)
	}
	return data
}

// Process is a running `berth up`.
type Process struct {
	// Addr is the API's URL, as berth up printed it (http://HOST:PORT or
	// unix:///PATH).
	Addr string
	cmd  *exec.Cmd
	done chan error
	log  *Buffer
}

// Config says how to run berth up.
type Config struct {
	Berth, Data, Node string
	// Listen is berth up's --listen, "127.0.0.1:0" (a free loopback port)
	// if empty; "unix://" + an absolute path serves the API on that socket.
	Listen string
	// Args are more flags (--network none).
	Args []string
	// Wrap, if set, is a command that runs berth up (nsenter ... --).
	Wrap []string
}

// Start runs `berth up` (with a free loopback API port unless c.Listen
// says otherwise), waits for it to print where its API is, and stops it
// when the test ends.
func Start(t testing.TB, c Config) *Process {
	t.Helper()
	listen := c.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	argv := append([]string{c.Berth, "up", "--data-dir", c.Data, "--listen", listen, "--node-name", c.Node}, c.Args...)
	argv = append(append([]string(nil), c.Wrap...), argv...)
	cmd := exec.Command(argv[0], argv[1:]...)
	data := c.Data
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{cmd: cmd, done: make(chan error, 1), log: &Buffer{}}
	cmd.Stderr = p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("berth up's log:\n%s", p.log.String())
		}
	})
	for want := range 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("berth up ended: %s", p.log.String())
			}
			switch {
			case want == 0 && (strings.HasPrefix(l, "API: http://") || strings.HasPrefix(l, "API: unix://")):
				p.Addr = strings.TrimPrefix(l, "API: ")
			case want == 1 && l == "admin token: "+filepath.Join(data, "admin-token"):
			default:
				t.Fatalf("berth up printed %q", l)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("berth up did not start: %s", p.log.String())
		}
	}
	return p
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM and waits for a clean exit.
func (p *Process) Stop(t testing.TB) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("berth up after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("berth up did not stop on SIGTERM")
	}
}

// RemoveContainers removes every container berth up left under data, their
// mounts and the agent's parent cgroup, so that a failed run leaves nothing.
func RemoveContainers(t testing.TB, bin, data string) {
	ctx := context.Background()
	images, err := image.Open(filepath.Join(data, "image"), nil)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	// berth up's default --state-dir, which is not under data.
	state, err := statedir.Default(data)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer func() {
		unmountUnder(state)
		_ = os.RemoveAll(state)
	}()
	rt, err := runtime.NewNative(filepath.Join(state, "runtime"), nil)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	rt.InitPath = filepath.Join(bin, "berth-runtime")
	root := filepath.Join(data, "agent")
	a, err := agent.New(ctx, agent.Config{Root: root, StateRoot: filepath.Join(state, "agent"), Images: images, Runtime: rt,
		InitPath: filepath.Join(bin, "berth-init")})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		// At least leave no mount behind, so the directory can go.
		unmountUnder(data)
		return
	}
	for _, c := range a.List() {
		if err := a.Remove(ctx, c.ID, true); err != nil {
			t.Errorf("cleanup: remove %s: %v", c.ID, err)
		}
	}
	a.Close()
	// The agent's default cgroup parent, /berth/<hash of its root>.
	h := sha256.Sum256([]byte(root))
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, d := range append(hs, "/sys/fs/cgroup") {
		_ = os.Remove(filepath.Join(d, "berth", hex.EncodeToString(h[:6])))
	}
}

// unmountUnder detaches every mount below dir, the last made first.
func unmountUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if f := strings.Fields(lines[i]); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}

// SameNetns reports an error unless process pid is in the network
// namespace at path.
func SameNetns(pid int, path string) error {
	var have, want syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &have); err != nil {
		return err
	}
	if err := syscall.Stat(path, &want); err != nil {
		return err
	}
	if have.Dev != want.Dev || have.Ino != want.Ino {
		return fmt.Errorf("pid %d is not in %s yet", pid, path)
	}
	return nil
}

// Buffer is a bytes.Buffer safe for one writer and concurrent readers.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// KillContainers kills every process in the cgroups of the agent whose
// root is agentRoot (its default parent, /berth/<hash of the root>) and
// removes the cgroups and the node's default state directory (of the data
// directory above agentRoot): the clean-up of a test or benchmark that
// failed, or that leaves its containers running.
func KillContainers(agentRoot string) {
	sum := sha256.Sum256([]byte(agentRoot))
	parent := filepath.Join("berth", hex.EncodeToString(sum[:6]))
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		alive := 0
		for _, r := range roots {
			filepath.WalkDir(filepath.Join(r, parent), func(p string, d os.DirEntry, err error) error {
				if err != nil || d.Name() != "cgroup.procs" {
					return nil
				}
				raw, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(raw)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
						alive++
					}
				}
				return nil
			})
		}
		if alive == 0 {
			break
		}
	}
	for _, r := range roots {
		var dirs []string
		filepath.WalkDir(filepath.Join(r, parent), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for _, d := range slices.Backward(dirs) {
			os.Remove(d)
		}
	}
	// Its mounts first. Those in a mount namespace of the test's own are
	// not seen here, nor reached through: here they are empty directories.
	if state, err := statedir.Default(filepath.Dir(agentRoot)); err == nil {
		unmountUnder(state)
		os.RemoveAll(state)
	}
}

// WebServer is a static Go web server for test images: it answers every
// request on :8080 with the container's host name.
const WebServer = `package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	h, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, h) })
	if err := http.ListenAndServe(":8080", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`

// GoTool finds the go command that builds test programs.
func GoTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	p := filepath.Join(goruntime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no go command to build the test's programs: %w", err)
	}
	return p, nil
}

// GoImageTar builds src (a main package using only the standard library)
// statically as /name and packs it as an image's root filesystem.
func GoImageTar(t testing.TB, goBin, dir, name, src string) []byte {
	t.Helper()
	exe := GoBuild(t, goBin, dir, name, src)
	body, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	files := []imagetest.File{{Name: name, Body: string(body), Mode: 0o755}}
	for _, d := range []string{"dev", "etc", "proc", "sys", "tmp"} {
		files = append(files, imagetest.File{Name: d + "/", Type: tar.TypeDir})
	}
	return imagetest.Tar(t, files...).Bytes()
}

// GoBuild builds src statically into dir/name and returns its path.
func GoBuild(t testing.TB, goBin, dir, name, src string) string {
	t.Helper()
	srcDir := filepath.Join(dir, name+"-src")
	if err := os.MkdirAll(srcDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, body := range map[string]string{"main.go": src, "go.mod": "module " + name + "\n\ngo 1.22\n"} {
		if err := os.WriteFile(filepath.Join(srcDir, file), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(dir, name)
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", exe, ".")
	cmd.Dir = srcDir
	// Standard library only: nothing to download.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local", "GOPROXY=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return exe
}
