package control

import (
	"context"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func TestFabricLongPollHearsOfChanges(t *testing.T) {
	c := newCluster(t, false)
	c.tenant(t, "acme")
	node := c.token(t, api.SystemTenant, "node-n1", api.RoleNode, "n1")
	ctx, cancel := context.WithTimeout(c.ctx, 20*time.Second)
	defer cancel()
	if _, err := node.Fabric(ctx, "n2", 0); api.Code(err) != 403 {
		t.Fatalf("node n1 reading n2's fabric: %v, want 403", err)
	}
	f0, err := node.Fabric(ctx, "n1", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan api.Fabric, 1)
	errs := make(chan error, 1)
	go func() {
		f, err := node.Fabric(ctx, "n1", f0.Revision)
		if err != nil {
			errs <- err
			return
		}
		got <- f
	}()
	in := &api.Instance{Meta: api.Meta{Name: "web-1", Tenant: "acme", Labels: map[string]string{"app": "web"}},
		Spec: api.InstanceSpec{Template: api.Template{Image: "busybox", Labels: map[string]string{"app": "web"}}}}
	if err := c.admin.Create(ctx, in); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		t.Fatal(err)
	case f := <-got:
		if f.Revision <= f0.Revision {
			t.Fatalf("long poll answered revision %d, not newer than %d", f.Revision, f0.Revision)
		}
		if len(f.Endpoints) != 1 || f.Endpoints[0].Tenant != "acme" || f.Endpoints[0].Instance != "web-1" || f.Endpoints[0].Ready {
			t.Fatalf("endpoints %+v, want acme/web-1, not ready", f.Endpoints)
		}
	case <-ctx.Done():
		t.Fatal("the long poll did not answer after the instance was created")
	}
	// Deleted, it leaves the fabric.
	f1, err := node.Fabric(ctx, "n1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.admin.Delete(ctx, api.KindInstance, "acme", "web-1", 0); err != nil {
		t.Fatal(err)
	}
	f2, err := node.Fabric(ctx, "n1", f1.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if len(f2.Endpoints) != 0 {
		t.Fatalf("endpoints after delete: %+v", f2.Endpoints)
	}
}
