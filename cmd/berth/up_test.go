package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/internal/uptest"
)

// startUp runs `berth up` on data with --network none, until the test ends.
func startUp(t *testing.T, berth, data string) *uptest.Process {
	t.Helper()
	return uptest.Start(t, uptest.Config{Berth: berth, Data: data, Node: "up-test", Args: []string{"--network", "none"}})
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

// upData skips without the built binaries or root, and returns berth's
// path and a data directory with busybox imported, whose containers are
// removed when the test ends, whatever happens.
func upData(t *testing.T) (berth, data string) {
	t.Helper()
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth, berth-runtime and berth-init there")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: containers")
	}
	berth = filepath.Join(bin, "berth")
	data = uptest.BusyboxData(t, berth)
	t.Cleanup(func() { uptest.RemoveContainers(t, bin, data) })
	return berth, data
}

// `berth up` runs a service's container; stopping it leaves the container
// running, starting it again adopts the container, and scaling to zero
// removes it.
func TestUpRunsContainersThatOutliveIt(t *testing.T) {
	berth, data := upData(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startUp(t, berth, data)
	secret, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	admin := api.NewClient(p.Addr, strings.TrimSpace(string(secret)), nil)
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
	// Running means init runs; its workload may be a fork away.
	var pid int
	wait(t, "the workload among the host's processes", func() error {
		if pid = pidOf(mark); pid == 0 {
			return fmt.Errorf("no process with %s in its command line", mark)
		}
		return nil
	})

	p.Stop(t)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("workload %d gone with berth up: %v", pid, err)
	}

	p = startUp(t, berth, data)
	admin = api.NewClient(p.Addr, strings.TrimSpace(string(secret)), nil)
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
		// .spare holds emptied directories kept for the next containers.
		if err != nil || len(ents) > 1 || len(ents) == 1 && ents[0].Name() != ".spare" {
			return fmt.Errorf("agent containers: %v, %v", ents, err)
		}
		return nil
	})
	p.Stop(t)
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
