package agent_bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/network/netnstest"
)

// dockerCgroup is the parent cgroup of the benchmark engine's containers,
// removed when it stops.
const dockerCgroup = "berth-bench-docker"

// dockerEngine is a Docker engine (Debian's docker.io: dockerd and its
// containerd) started for one benchmark, with busybox imported. It has its
// own data and exec roots, API socket, network and mount namespaces, no
// bridge and no iptables rules, so it leaves the machine as it found it.
type dockerEngine struct {
	sock string
}

// startDocker starts an engine, or says why none can run here: no dockerd,
// or one that does not come up.
func startDocker(b *testing.B, tarball string) (*dockerEngine, error) {
	b.Helper()
	if _, err := exec.LookPath("dockerd"); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, err
	}
	dir := testdir.World(b)
	ns := netnstest.New(b, "bd"+netnstest.Unique())
	e := &dockerEngine{sock: filepath.Join(dir, "docker.sock")}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		return nil, err
	}
	d := exec.Command("nsenter", "--net="+ns.Path, "--", "dockerd",
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"), "--host", "unix://"+e.sock,
		"--iptables=false", "--ip6tables=false", "--bridge=none", "--cgroup-parent", "/"+dockerCgroup,
		"--containerd-namespace", "berth-bench", "--containerd-plugins-namespace", "berth-bench-plugins")
	// Its own mount namespace (made private by Go) keeps the engine's
	// overlay and shm mounts off the machine's table.
	d.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { d.Wait(); close(exited) }()
	b.Cleanup(func() {
		d.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			d.Process.Kill()
			<-exited
		}
		logf.Close()
		removeCgroup(dockerCgroup)
	})
	for deadline := time.Now().Add(30 * time.Second); e.cmd("version").Run() != nil; time.Sleep(50 * time.Millisecond) {
		select {
		case <-exited:
			deadline = time.Time{}
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("dockerd did not answer: %s", tail(log, 2000))
		}
	}
	if out, err := e.cmd("import", tarball, "busybox:latest").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("docker import: %v %s", err, out)
	}
	return e, nil
}

// cmd is the docker client, talking to this engine.
func (e *dockerEngine) cmd(args ...string) *exec.Cmd {
	c := exec.Command("docker", args...)
	c.Env = append(os.Environ(), "DOCKER_HOST=unix://"+e.sock)
	return c
}

// removeCgroup removes an emptied parent cgroup from every hierarchy.
func removeCgroup(name string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", name))
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
