package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/runtime"
)

// upProcess is a running `berth up`.
type upProcess struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

func startUp(t *testing.T, berth, dataDir string, args ...string) *upProcess {
	t.Helper()
	cmd := exec.Command(berth, append([]string{"up", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--node-name", "up-test"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &upProcess{cmd: cmd, done: make(chan error, 1)}
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() { p.stop(t) })
	for want := range 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("berth up ended: %s", stderr.String())
			}
			switch {
			case want == 0 && strings.HasPrefix(l, "API: http://"):
				p.addr = strings.TrimPrefix(l, "API: ")
			case want == 1 && l == "admin token: "+filepath.Join(dataDir, "admin-token"):
			default:
				t.Fatalf("berth up printed %q", l)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("berth up did not start: %s", stderr.String())
		}
	}
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *upProcess) stop(t *testing.T) {
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

// pidOf finds the process whose command line contains mark.
func pidOf(mark string) int {
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err == nil && bytes.Contains(b, []byte(mark)) && !bytes.Contains(b, []byte("berth-init")) {
			var pid int
			fmt.Sscanf(filepath.Base(filepath.Dir(m)), "%d", &pid)
			return pid
		}
	}
	return 0
}

// `berth up` runs a service's container; stopping it leaves the container
// running, starting it again adopts the container, and scaling to zero
// removes it.
func TestUpRunsContainersThatOutliveIt(t *testing.T) {
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth, berth-runtime and berth-init there")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: containers")
	}
	berth := filepath.Join(bin, "berth")
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
	// Whatever happens, no container outlives the test.
	t.Cleanup(func() { removeAll(t, bin, data) })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startUp(t, berth, data, "--network", "none")
	secret, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	admin := api.NewClient(p.addr, strings.TrimSpace(string(secret)), nil)
	if err := admin.Create(ctx, &api.Tenant{Meta: api.Meta{Name: "t1"}}); err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("berth-up-test-%d", os.Getpid())
	svc := &api.Service{Meta: api.Meta{Name: "app", Tenant: "t1"}, Spec: api.ServiceSpec{Replicas: 1, Template: api.Template{
		Image: "busybox", Command: []string{"sh", "-c", "sleep 1000; echo " + mark}}}}
	if err := admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	runningOnce := func(c *api.Client) error {
		list, err := api.ListOf[*api.Instance](ctx, c, "t1", "")
		if err != nil {
			return err
		}
		if len(list.Items) != 1 || list.Items[0].Status.Phase != api.PhaseRunning || list.Items[0].Status.Restarts != 0 {
			var st []api.InstanceStatus
			for _, in := range list.Items {
				st = append(st, in.Status)
			}
			return fmt.Errorf("instance status %+v", st)
		}
		return nil
	}
	wait(t, "instance running", func() error { return runningOnce(admin) })
	pid := pidOf(mark)
	if pid == 0 {
		t.Fatal("the workload is not among the host's processes")
	}

	p.stop(t)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("workload %d gone with berth up: %v", pid, err)
	}

	p = startUp(t, berth, data, "--network", "none")
	admin = api.NewClient(p.addr, strings.TrimSpace(string(secret)), nil)
	wait(t, "instance adopted", func() error {
		if err := runningOnce(admin); err != nil {
			return err
		}
		if got := pidOf(mark); got != pid {
			return fmt.Errorf("workload pid %d, was %d", got, pid)
		}
		return nil
	})

	if err := admin.Get(ctx, "t1", "app", svc); err != nil {
		t.Fatal(err)
	}
	svc.Spec.Replicas = 0
	if err := admin.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	wait(t, "container removed", func() error {
		if pidOf(mark) != 0 {
			return fmt.Errorf("still running")
		}
		ents, err := os.ReadDir(filepath.Join(data, "agent", "containers"))
		if err != nil || len(ents) != 0 {
			return fmt.Errorf("agent containers: %d, %v", len(ents), err)
		}
		return nil
	})
	p.stop(t)
}

func wait(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeAll removes every container berth up left under data, their
// mounts and the agent's parent cgroup.
func removeAll(t *testing.T, bin, data string) {
	ctx := context.Background()
	images, err := image.Open(filepath.Join(data, "image"), nil)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	rt, err := runtime.NewNative(filepath.Join(data, "runtime"), nil)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	rt.InitPath = filepath.Join(bin, "berth-runtime")
	root := filepath.Join(data, "agent")
	a, err := agent.New(ctx, agent.Config{Root: root, Images: images, Runtime: rt, InitPath: filepath.Join(bin, "berth-init")})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		// At least leave no mount behind, so the directory can go.
		b, _ := os.ReadFile("/proc/self/mountinfo")
		lines := strings.Split(string(b), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if f := strings.Fields(lines[i]); len(f) > 4 && strings.HasPrefix(f[4], data+"/") {
				_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
			}
		}
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
