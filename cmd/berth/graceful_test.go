package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

// lbClient is a client of a service as a caching load balancer would be:
// it looks the service's endpoints up once a second and sends each request,
// on a new connection, to the next of them.
type lbClient struct {
	stop, done chan struct{}

	mu sync.Mutex
	// failures, served (requests per answering host) and requests are
	// guarded by mu.
	failures []string
	served   map[string]int
	requests int
}

func (e *e2e) startLB(ctx context.Context, tenant, svc string) *lbClient {
	c := &lbClient{stop: make(chan struct{}), done: make(chan struct{}), served: map[string]int{}}
	go func() {
		defer close(c.done)
		var eps []api.Endpoint
		var refreshed time.Time
		for i := 0; ; i++ {
			select {
			case <-c.stop:
				return
			default:
			}
			if time.Since(refreshed) > time.Second {
				l, err := e.admin.Endpoints(ctx, tenant, svc)
				if err != nil {
					c.fail("endpoints: " + err.Error())
					continue
				}
				eps, refreshed = l.Items, time.Now()
			}
			if len(eps) == 0 {
				c.fail("no endpoints")
				refreshed = time.Time{}
				continue
			}
			ep := eps[i%len(eps)]
			host, err := e.get(ep.IP)
			c.mu.Lock()
			if err != nil {
				c.failures = append(c.failures, fmt.Sprintf("%s at %s: %v", ep.Instance, ep.IP, err))
			} else {
				c.served[host]++
			}
			c.requests++
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *lbClient) fail(msg string) {
	c.mu.Lock()
	c.failures = append(c.failures, msg)
	c.mu.Unlock()
}

// counts returns how many requests were sent and how many hosts answered.
func (c *lbClient) counts() (requests, hosts int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.requests, len(c.served)
}

// halt stops the client.
func (c *lbClient) halt() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// end stops the client and fails the test if any request failed.
func (c *lbClient) end(t *testing.T, what string) {
	t.Helper()
	c.halt()
	t.Logf("%s: %d requests, served by %v", what, c.requests, c.served)
	if len(c.failures) > 0 {
		t.Fatalf("%s: %d of %d requests failed, first: %v", what, len(c.failures), c.requests, c.failures[:min(5, len(c.failures))])
	}
}

// goOn waits for the client to make n more requests.
func (c *lbClient) goOn(t *testing.T, n int) {
	t.Helper()
	from, _ := c.counts()
	poll(t, "more requests", 30*time.Second, func() error {
		if r, _ := c.counts(); r-from < n {
			return fmt.Errorf("%d requests since", r-from)
		}
		return nil
	})
}

// A client that looks its service's endpoints up once a second does not
// fail one request while the service is scaled in, then rolled to a new
// template, on a real berth up: each instance leaves the endpoints first,
// keeps serving through its grace period, and only then is stopped; a
// rolling update retires an old instance only once a new one serves. (With
// a grace period of 0 the same client fails hundreds of requests.)
func TestScaleInAndUpdateDropNoRequest(t *testing.T) {
	e := newE2E(t)
	ctx := ctxE2E(t)
	const tenant = api.DefaultTenant
	grace := api.Duration(4 * time.Second)
	svc := &api.Service{Meta: api.Meta{Name: "web", Tenant: tenant}, Spec: api.ServiceSpec{Replicas: 4,
		Template: api.Template{Image: "web", Ports: []api.Port{{Port: 8080}}, StopGracePeriod: &grace}}}
	if err := e.admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	webs := e.webInstances(t, tenant, e.secret, "web", 4)

	// The CLI lists the same endpoints.
	var listed api.List[api.Endpoint]
	if err := json.Unmarshal([]byte(e.cli(e.secret, "service", "endpoints", "web", "--format", "json")), &listed); err != nil {
		t.Fatal(err)
	}
	for _, ep := range listed.Items {
		if w, ok := webs[ep.Instance]; !ok || w.ip != ep.IP || len(ep.Ports) != 1 || ep.Ports[0].Port != 8080 {
			t.Fatalf("endpoint %+v is not one of the running instances %v", ep, webs)
		}
	}
	if table := e.cli(e.secret, "service", "endpoints", "web"); len(listed.Items) != 4 || strings.Count(table, "8080/tcp") != 4 {
		t.Fatalf("endpoints: %d listed, table:\n%s", len(listed.Items), table)
	}
	modify := func(what string, f func(*api.Service)) {
		poll(t, what, 10*time.Second, func() error {
			cur := &api.Service{}
			if err := e.admin.Get(ctx, tenant, "web", cur); err != nil {
				return err
			}
			f(cur)
			return e.admin.Update(ctx, cur)
		})
	}
	containers := func(what string, n int) {
		poll(t, what, 60*time.Second, func() error {
			cs, err := e.containers()
			if err != nil {
				return err
			}
			if len(cs) != n {
				return fmt.Errorf("%d containers", len(cs))
			}
			return nil
		})
	}

	lb := e.startLB(ctx, tenant, "web")
	defer lb.halt()
	poll(t, "every instance to serve the client", 30*time.Second, func() error {
		if _, hosts := lb.counts(); hosts < 4 {
			return fmt.Errorf("served by %d instances", hosts)
		}
		return nil
	})
	modify("scale in to 1", func(s *api.Service) { s.Spec.Replicas = 1 })
	containers("the retired containers to be stopped and removed", 1)
	// The client goes on past its next refresh, on the one instance left.
	lb.goOn(t, 20)
	lb.end(t, "scale-in")

	// A rolling update of the single instance: the new one serves before
	// the old one leaves.
	lb = e.startLB(ctx, tenant, "web")
	defer lb.halt()
	lb.goOn(t, 20)
	modify("update", func(s *api.Service) { s.Spec.Template.Env = map[string]string{"V": "2"} })
	poll(t, "the update rolled out", 60*time.Second, func() error {
		cur := &api.Service{}
		if err := e.admin.Get(ctx, tenant, "web", cur); err != nil {
			return err
		}
		st := cur.Status
		if st.TemplateHash != cur.Spec.Template.Hash() || st.Rollout != api.RolloutComplete || st.Updated != 1 || st.Retiring != 0 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	containers("the old container to be stopped and removed", 1)
	lb.goOn(t, 20)
	if _, hosts := lb.counts(); hosts != 2 {
		t.Fatalf("served by %d hosts during the update, want the old and the new", hosts)
	}
	lb.end(t, "update")

	if err := e.admin.Delete(ctx, api.KindService, tenant, "web", 0); err != nil {
		t.Fatal(err)
	}
	containers("every container removed", 0)
}
