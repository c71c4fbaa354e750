package agent

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

// prepNode is a node loop's state on a, for calling Prepare and sync
// directly: its control plane client is never used.
func prepNode(t *testing.T, a *Agent) *Node {
	t.Helper()
	n, err := NewNode(NodeConfig{Name: "n1", Client: api.NewClient("http://127.0.0.1:1", "unused", nil), Agent: a})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func prepInstance(name string, created time.Time) *api.Instance {
	return &api.Instance{Meta: api.Meta{Tenant: "t1", Name: name, Created: created},
		Spec: api.InstanceSpec{Node: "n1", Desired: api.DesiredRunning,
			Template: api.Template{Image: "busybox", Command: []string{"sleep", "100"}}}}
}

// oneContainer waits until a has exactly one container, in status st.
func oneContainer(t *testing.T, a *Agent, st Status) Container {
	t.Helper()
	var got []Container
	waitFor(t, fmt.Sprintf("one container %s", st), func() bool {
		got = a.List()
		return len(got) == 1 && got[0].State.Status == st
	})
	return got[0]
}

// A run prepared while its placement is written is made at once, not
// started; the stored placement starts that same container.
func TestPreparedRunStartsOnceStored(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	n := prepNode(t, a)
	in := prepInstance("r1", time.Now().UTC())
	stored := n.Prepare(in)
	prepared := oneContainer(t, a, StatusCreated)
	stored(true)
	n.sync(ctxT(t), in)
	c, err := a.Inspect(prepared.ID)
	if err != nil || c.State.Status != StatusRunning {
		t.Fatalf("the prepared container after the stored placement: %+v, %v", c.State, err)
	}
	if got := len(a.List()); got != 1 {
		t.Fatalf("%d containers, want the prepared one alone", got)
	}
}

// A placement that was not stored removes what was prepared for it; one
// stored as something else (here a later instance of the same name)
// replaces it with a container of its own.
func TestPreparedRunGoesUnlessItIsStoredAsPrepared(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	n := prepNode(t, a)
	created := time.Now().UTC()
	n.Prepare(prepInstance("r1", created))(false)
	waitFor(t, "the unstored run's container to go", func() bool { return len(a.List()) == 0 })

	n.Prepare(prepInstance("r2", created))(true)
	prepared := oneContainer(t, a, StatusCreated)
	later := prepInstance("r2", created.Add(time.Second))
	n.sync(ctxT(t), later)
	c := oneContainer(t, a, StatusRunning)
	if c.ID == prepared.ID || c.Spec.Labels[LabelCreated] != later.Created.Format(time.RFC3339Nano) {
		t.Fatalf("running %s (created %s), prepared %s", c.ID, c.Spec.Labels[LabelCreated], prepared.ID)
	}
}

// The agent holds a running container's mount namespace, so that its exit
// need not unmount it, and lets go once the exit is recorded.
func TestMountNamespaceIsHeldWhileTheContainerRuns(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	before := heldMountNamespaces(t)
	id := run(t, a, ContainerSpec{Image: "busybox", Cmd: []string{"sleep", "100"}})
	c, err := a.Inspect(id)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", c.State.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !heldMountNamespaces(t)[ns] {
		t.Fatalf("the agent does not hold the running container's mount namespace %s", ns)
	}
	if err := a.Stop(ctxT(t), id, time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Wait(ctxT(t), id); err != nil {
		t.Fatal(err)
	}
	after := heldMountNamespaces(t)
	if after[ns] || len(after) != len(before) {
		t.Fatalf("after the exit the agent holds mount namespaces %v, before the run %v", after, before)
	}
}

// heldMountNamespaces are the mount namespaces this process has open.
func heldMountNamespaces(t *testing.T) map[string]bool {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "mnt:[") {
			held[l] = true
		}
	}
	return held
}
