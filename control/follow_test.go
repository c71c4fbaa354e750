package control

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

// followAgent stands in for a node agent's follow of a container: the
// instance named "hangs" never gets one (the agent waits, as for a
// container it has yet to make); any other prints two lines and exits 3.
type followAgent struct{ got chan string }

func (a followAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.got <- r.URL.String()
	if !strings.HasSuffix(r.URL.Path, "/"+api.OpFollow) {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if strings.Contains(r.URL.Path, "hangs") {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		return
	}
	enc := json.NewEncoder(w)
	enc.Encode(api.FollowEvent{Log: &api.LogLine{Stream: "stdout", Log: "one"}})
	enc.Encode(api.FollowEvent{Log: &api.LogLine{Stream: "stderr", Log: "two"}})
	enc.Encode(api.FollowEvent{Exit: &api.ExitStatus{Code: 3}})
}

func TestFollowedRunStreamsTheOutputAndRemovesTheInstance(t *testing.T) {
	c := newCluster(t, true)
	c.tenant(t, "acme")
	agent := followAgent{got: make(chan string, 16)}
	// The node reports the instance "hangs" failed, as an agent does when
	// it cannot make a container (an image it cannot pull, say).
	c.nodeWithAgent(t, agent, func(in *api.Instance) api.InstanceStatus {
		if in.Name == "hangs" {
			return api.InstanceStatus{Phase: api.PhaseFailed, Reason: "image nosuch: not found"}
		}
		return api.InstanceStatus{Phase: api.PhaseRunning, StartedAt: time.Now()}
	})
	acme := c.token(t, "acme", "dev", api.RoleTenantAdmin, "")
	viewer := c.token(t, "acme", "viewer", api.RoleReadOnly, "")

	run := func(cl *api.Client, name string, rm bool) (*api.Instance, []string, *api.ExitStatus, error) {
		in := &api.Instance{Meta: api.Meta{Name: name, Tenant: "acme"}, Spec: api.InstanceSpec{AutoRemove: rm, Template: api.Template{Image: "busybox", Restart: api.RestartNever}}}
		var lines []string
		rctx, rcancel := context.WithTimeout(c.ctx, 20*time.Second)
		defer rcancel()
		exit, err := cl.Run(rctx, in, func(l api.LogLine) error {
			lines = append(lines, l.Stream+":"+l.Log)
			return nil
		})
		return in, lines, exit, err
	}
	in, lines, exit, err := run(acme, "once", true)
	if err != nil || exit.Code != 3 || strings.Join(lines, ",") != "stdout:one,stderr:two" {
		t.Fatalf("run = %+v, %v; lines %q", exit, err, lines)
	}
	if in.ResourceVersion == 0 || in.Created.IsZero() {
		t.Errorf("the instance as created did not come back: %+v", in.Meta)
	}
	u := <-agent.got
	if !strings.HasPrefix(u, "/containers/acme_once/follow?") || !strings.Contains(u, "await=1") ||
		!strings.Contains(u, "created="+strings.ReplaceAll(in.Created.UTC().Format(time.RFC3339Nano), ":", "%3A")) {
		t.Errorf("agent got %s", u)
	}
	if err := acme.Get(c.ctx, "acme", "once", &api.Instance{}); !api.IsNotFound(err) {
		t.Errorf("after a run with rm, the instance: %v", err)
	}
	// Its end is on record: the node's report did not make it before the
	// instance went, so an Event says it.
	evs, err := api.ListOf[*api.Event](c.ctx, acme, "acme", "")
	if err != nil {
		t.Fatal(err)
	}
	var ends []string
	for _, e := range evs.Items {
		if e.Object == "instances/once" {
			ends = append(ends, e.Reason+": "+e.Message)
		}
	}
	if len(ends) != 1 || ends[0] != "exited: exit code 3" {
		t.Errorf("events of instances/once: %q", ends)
	}

	// Without rm it stays; a second run of the name is refused, as a
	// second create is.
	if _, _, exit, err := run(acme, "kept", false); err != nil || exit.Code != 3 {
		t.Fatalf("run without rm = %+v, %v", exit, err)
	}
	<-agent.got
	if err := acme.Get(c.ctx, "acme", "kept", &api.Instance{}); err != nil {
		t.Errorf("after a run without rm: %v", err)
	}
	if _, _, _, err := run(acme, "kept", false); api.Code(err) != http.StatusConflict {
		t.Errorf("a run of a name in use: %v", err)
	}

	// A failure the node reports ends the run with 125 and its reason.
	if _, _, exit, err := run(acme, "hangs", true); err != nil || exit.Code != 125 || exit.Error != "image nosuch: not found" {
		t.Fatalf("run of an instance that failed = %+v, %v", exit, err)
	}

	// Following a run needs the right to make instances.
	if _, _, _, err := run(viewer, "nope", true); api.Code(err) != http.StatusForbidden {
		t.Errorf("a read-only token's run: %v", err)
	}
}
