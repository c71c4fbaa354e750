package runtime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A container created with Start runs its process at once: no Start
// follows, and one would find it running.
func TestCreateWithStartRunsAtOnce(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	bundle := testBundle(t, []string{"sleep", "100"}, nil)
	var pid int
	if err := r.Create(ctx, "now", bundle, CreateOpts{Pid: &pid, Start: true}); err != nil {
		t.Fatal(err)
	}
	if st, err := r.State(ctx, "now"); err != nil || st.Status != Running {
		t.Fatalf("after create with start: %+v, %v", st, err)
	}
	waitComm(t, pid, "sleep")
	if err := r.Start(ctx, "now"); err == nil {
		t.Fatal("start after a create with start succeeded")
	}
	if err := r.Kill(ctx, "now", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, r, "now", Stopped)
	if err := r.Delete(ctx, "now", false); err != nil {
		t.Fatal(err)
	}
}

// With PlanInitPath the fast init's plan runs in that executable (berth-init
// links it in), not in the runtime's; one built without it is refused in
// words, and the refused container leaves nothing.
func TestPlanInitPathRunsThePlan(t *testing.T) {
	r := testRuntime(t)
	if r.GoInit {
		t.Skip("the Go init runs no plan")
	}
	ctx := context.Background()
	dir := worldDir(t)
	r.PlanInitPath = buildBerthInit(t, filepath.Join(dir, "berth-init"), true)
	bundle := testBundle(t, []string{"sleep", "100"}, nil)
	var pid int
	if err := r.Create(ctx, "plan", bundle, CreateOpts{Pid: &pid}); err != nil {
		t.Fatal(err)
	}
	// Until Start, the init waits in the executable that ran its plan.
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != r.PlanInitPath {
		t.Fatalf("the created container's init runs %q (%v), want %s", exe, err, r.PlanInitPath)
	}
	if err := r.Start(ctx, "plan"); err != nil {
		t.Fatal(err)
	}
	waitComm(t, pid, "sleep")
	if err := r.Delete(ctx, "plan", true); err != nil {
		t.Fatal(err)
	}

	r.PlanInitPath = buildBerthInit(t, filepath.Join(dir, "berth-init-plain"), false)
	err := r.Create(ctx, "noplan", testBundle(t, []string{"true"}, nil), CreateOpts{})
	if err == nil || !strings.Contains(err.Error(), "built without the fast init") {
		t.Fatalf("create with a berth-init without the fast init: %v", err)
	}
	if _, err := r.State(ctx, "noplan"); err == nil {
		t.Fatal("the refused container has a state")
	}
}

// buildBerthInit compiles berth-init to out, with the fast init or
// without.
func buildBerthInit(t *testing.T, out string, withPlan bool) string {
	t.Helper()
	args := []string{"-static", "-Os", "-o", out, "../cmd/berth-init/berth-init.c"}
	if withPlan {
		args = append(args, "fastinit/fastinit.c")
	}
	if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		t.Fatalf("build berth-init: %v\n%s", err, b)
	}
	return out
}

// waitComm waits until pid runs the command named comm.
func waitComm(t *testing.T, pid int, comm string) {
	t.Helper()
	var got []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got, _ = os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(got)) == comm {
			return
		}
	}
	t.Fatalf("process %d runs %q, not %s", pid, strings.TrimSpace(string(got)), comm)
}
