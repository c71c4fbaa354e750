package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The OCI backend drives runc, and Berth's own berth-runtime, through the
// same Runtime interface the agent uses.
func TestOCIBackend(t *testing.T) {
	needRoot(t)
	bins := map[string]string{}
	if p, err := exec.LookPath("runc"); err == nil {
		bins["runc"] = p
	}
	if d := os.Getenv("BERTH_BIN_DIR"); d != "" {
		bins["berth-runtime"] = filepath.Join(d, "berth-runtime")
	}
	if len(bins) == 0 {
		t.Skip("neither runc nor BERTH_BIN_DIR/berth-runtime is available")
	}
	for name, bin := range bins {
		t.Run(name, func(t *testing.T) {
			root := worldDir(t)
			o, err := NewOCI(bin, root, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				list, _ := o.List(context.Background())
				for _, s := range list {
					_ = o.Delete(context.Background(), s.ID, true)
				}
				// berth-runtime keeps a sealed, mounted copy of itself
				// under its root: unmounted, or the root stays behind.
				if n, err := NewNative(root, nil); err == nil {
					if err := n.ReleaseExecutables(); err != nil {
						t.Errorf("release executables: %v", err)
					}
				}
			})
			exerciseOCI(t, o)
		})
	}
}

func exerciseOCI(t *testing.T, o *OCI) {
	ctx := context.Background()
	bundle := testBundle(t, []string{"sh", "-c", "echo started; exec sleep 100"}, func(s *specs.Spec) {
		s.Version = "1.0.2" // what runc 1.1 writes and accepts
	})
	var out bytes.Buffer
	w := &syncWriter{b: &out}
	pidFile := filepath.Join(worldDir(t), "pid")
	var pid int
	if err := o.Create(ctx, "oci", bundle, CreateOpts{PidFile: pidFile, IO: IO{Stdout: w, Stderr: w}, Pid: &pid}); err != nil {
		t.Fatalf("create: %v", err)
	}
	if st, err := o.State(ctx, "oci"); err != nil || st.Status != Created || st.Pid <= 0 || st.Pid != pid {
		t.Fatalf("state after create: %+v %v (CreateOpts.Pid %d)", st, err, pid)
	}
	if _, err := os.Stat(pidFile); err != nil {
		t.Errorf("pid file: %v", err)
	}
	// Brought up at create, by whichever runtime: Berth's init, or the
	// backend for another.
	if out, err := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "ip", "-o", "link", "show", "lo").CombinedOutput(); err != nil || !strings.Contains(string(out), ",UP") {
		t.Errorf("lo after create: %s %v, want it up", out, err)
	}
	if err := o.Start(ctx, "oci"); err != nil {
		t.Fatalf("start: %v", err)
	}
	for i := 0; i < 200 && !strings.Contains(out.String(), "started"); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "started") {
		t.Errorf("container output did not reach the caller's writer: %q", out.String())
	}
	var execOut bytes.Buffer
	ew := &syncWriter{b: &execOut}
	code, err := o.Exec(ctx, "oci", specs.Process{Args: []string{"sh", "-c", "cat /proc/1/comm; exit 7"}, Cwd: "/", Env: []string{"PATH=/bin"}}, ExecOpts{IO: IO{Stdout: ew, Stderr: ew}})
	if err != nil || code != 7 {
		t.Errorf("exec: code %d err %v, want 7", code, err)
	}
	for i := 0; i < 200 && !strings.Contains(execOut.String(), "sleep"); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(execOut.String(), "sleep") {
		t.Errorf("exec output %q", execOut.String())
	}
	if _, err := o.Exec(ctx, "oci", specs.Process{Args: []string{"/no/such/binary"}, Cwd: "/"}, ExecOpts{}); err == nil {
		t.Errorf("exec of a missing binary succeeded")
	}
	if pids, err := o.Pids(ctx, "oci"); err != nil || len(pids) != 1 {
		t.Errorf("pids: %v %v", pids, err)
	}
	if err := o.Pause(ctx, "oci"); err != nil {
		t.Errorf("pause: %v", err)
	} else if st, _ := o.State(ctx, "oci"); st.Status != Paused {
		t.Errorf("state after pause: %s", st.Status)
	}
	if err := o.Resume(ctx, "oci"); err != nil {
		t.Errorf("resume: %v", err)
	}
	if list, err := o.List(ctx); err != nil || len(list) != 1 || list[0].ID != "oci" {
		t.Errorf("list: %+v %v", list, err)
	}
	if err := o.Kill(ctx, "oci", syscall.SIGKILL, false); err != nil {
		t.Fatalf("kill: %v", err)
	}
	for i := 0; i < 500; i++ {
		if st, _ := o.State(ctx, "oci"); st.Status == Stopped {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := o.Delete(ctx, "oci", false); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := o.State(ctx, "oci"); !errors.Is(err, ErrNotExist) {
		t.Errorf("state after delete: %v, want ErrNotExist", err)
	}
	// Created with Start, it runs without a Start of the caller's.
	if err := o.Create(ctx, "oci-now", bundle, CreateOpts{Start: true}); err != nil {
		t.Fatalf("create with start: %v", err)
	}
	if st, err := o.State(ctx, "oci-now"); err != nil || st.Status != Running {
		t.Errorf("state after create with start: %+v %v", st, err)
	}
	if err := o.Delete(ctx, "oci-now", true); err != nil {
		t.Fatalf("delete: %v", err)
	}
	// A failure carries the runtime's own message, not a bare exit status.
	err = o.Create(ctx, "bad", filepath.Join(worldDir(t), "nobundle"), CreateOpts{})
	if err == nil || strings.Contains(err.Error(), "exit status") {
		t.Errorf("create from a missing bundle: %v", err)
	}
}
