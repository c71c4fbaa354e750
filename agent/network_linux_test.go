package agent

import (
	"testing"
	"time"
)

// A container on a network gets its addresses before its workload starts
// (the workload reads its own address and listens only there), is
// reachable there, and is detached when it ends.
func TestNetworkerAttachesBeforeStartAndDetachesAtExit(t *testing.T) {
	e := newNetEnv(t)
	a := e.agentWith(t, e.nw)
	id := run(t, a, ContainerSpec{Network: "test", Tenant: "acme", Cmd: webCmd("eth0")})
	c, _ := a.Inspect(id)
	if len(c.State.Addresses) != 2 {
		t.Fatalf("addresses: %v", c.State.Addresses)
	}
	url := ipURL(c.State.Addresses[0].Addr(), "/")
	var body string
	waitFor(t, "the web server", func() bool {
		var err error
		body, err = get(e.nw.DialContext, url)
		return err == nil
	})
	if body != "ok" {
		t.Fatalf("GET %s: %q", url, body)
	}
	if err := a.Stop(ctxT(t), id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if l := e.hostLinks(t); len(l) != 0 {
		t.Fatalf("still attached after exit: %v", l)
	}
	if eps := e.nw.Endpoints(); len(eps) != 0 {
		t.Fatalf("policy endpoints after exit: %v", eps)
	}
}
