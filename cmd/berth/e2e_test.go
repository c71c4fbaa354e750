package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/busybox"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/internal/uptest"
	"github.com/berth-dev/berth/network/netnstest"
)

// e2e is one `berth up` run the way a user runs it, except that it lives in
// a network namespace and a mount namespace of the test's own ("the
// host"), so that its routes, nftables policy, veths and mounts never
// touch the machine's.
type e2e struct {
	t     *testing.T
	berth string
	data  string
	ns    netnstest.NS
	// holder keeps the mount namespace (and a reference to the network
	// namespace) alive across restarts of berth up.
	holder *exec.Cmd
	up     *uptest.Process
	secret string
	// hc dials from inside the host namespace; probe never reuses a
	// connection, so every request proves reachability anew.
	hc, probe *http.Client
	admin     *api.Client
}

func newE2E(t *testing.T) *e2e {
	t.Helper()
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth, berth-runtime and berth-init there")
	}
	netnstest.RequireRoot(t, "nsenter", "tar")
	if err := busybox.Available(); err != nil {
		t.Skip(err)
	}
	goBin, err := uptest.GoTool()
	if err != nil {
		t.Skip(err)
	}
	e := &e2e{t: t, berth: filepath.Join(bin, "berth")}
	// Reached by the containers' unprivileged host uids, unlike t.TempDir.
	dir := testdir.World(t)
	e.data = filepath.Join(dir, "data")

	bb := filepath.Join(dir, "busybox.tar")
	if err := os.WriteFile(bb, imagetest.BusyboxTar(t).Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	e.hostBerth("image", "--root", e.data, "import", bb, "busybox:latest", "-c", "ENV PATH=/bin")
	web := filepath.Join(dir, "web.tar")
	if err := os.WriteFile(web, uptest.GoImageTar(t, goBin, dir, "web", uptest.WebServer), 0o600); err != nil {
		t.Fatal(err)
	}
	e.hostBerth("image", "--root", e.data, "import", web, "web:latest", "-c", `CMD ["/web"]`)

	e.ns = netnstest.New(t, "be2e-"+netnstest.Unique())
	// The host's own address, on a veth looped back into the namespace: a
	// host without one (only loopback) has no source address to reach its
	// containers with.
	e.ns.Run(t, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
	e.ns.Run(t, "ip", "addr", "add", "10.214.0.1/24", "dev", "uplink0")
	e.ns.Run(t, "ip", "link", "set", "uplink0", "up")
	e.ns.Run(t, "ip", "link", "set", "uplink1", "up")

	e.holder = exec.Command("nsenter", "--net="+e.ns.Path, "--", "sleep", "1000000")
	// Go makes every mount private in the new mount namespace: nothing
	// mounted there propagates to the machine's.
	e.holder.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	if err := e.holder.Start(); err != nil {
		t.Fatal(err)
	}
	// Runs after the containers are killed (cleanups run last first): the
	// namespaces then die with their last process, taking every mount,
	// veth and route with them; testdir's removal of dir comes later.
	t.Cleanup(func() {
		e.holder.Process.Kill()
		e.holder.Wait()
	})
	t.Cleanup(e.killContainers)
	// Until nsenter has switched, the holder is in the machine's network
	// namespace, and a berth up joining it then would run there.
	poll(t, "the namespace holder to enter "+e.ns.Path, 10*time.Second, func() error {
		return uptest.SameNetns(e.holder.Process.Pid, e.ns.Path)
	})

	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := e.ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	e.hc = &http.Client{Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16}}
	e.probe = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	e.start()
	return e
}

// hostBerth runs berth in the machine's namespaces (image commands touch no
// network).
func (e *e2e) hostBerth(args ...string) string {
	e.t.Helper()
	out, err := exec.Command(e.berth, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cli runs berth inside the host namespace against the API as token.
func (e *e2e) cli(token string, args ...string) string {
	e.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + e.ns.Path, "--", e.berth}, args...)...)
	cmd.Env = append(os.Environ(), "BERTH_SERVER="+e.up.Addr, "BERTH_TOKEN="+token)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	timer := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	out, err := cmd.Output()
	timer.Stop()
	if err != nil {
		e.t.Fatalf("berth %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// start runs berth up in the test's namespaces and waits until it serves.
func (e *e2e) start() {
	t := e.t
	t.Helper()
	p := uptest.Start(t, uptest.Config{Berth: e.berth, Data: e.data, Node: "e2e",
		Wrap: []string{"nsenter", "--target", strconv.Itoa(e.holder.Process.Pid), "--mount", "--net", "--"}})
	e.up = p
	if err := uptest.SameNetns(p.Pid(), e.ns.Path); err != nil {
		t.Fatalf("berth up: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(e.data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	e.secret = strings.TrimSpace(string(b))
	e.admin = api.NewClient(p.Addr, e.secret, e.hc)
}

// killContainers is the cleanup for a test that failed half way: every
// process in the agent's cgroups is killed and the cgroups removed. (A
// test that passed has removed its containers through the API already.)
func (e *e2e) killContainers() { uptest.KillContainers(filepath.Join(e.data, "agent")) }

// poll calls check until it succeeds or the deadline passes.
func poll(t *testing.T, what string, d time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", d, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctxE2E(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// get fetches http://ip:8080/ from the host namespace on a new connection
// and returns the body, trimmed.
func (e *e2e) get(ip netip.Addr) (string, error) {
	resp, err := e.probe.Get("http://" + netip.AddrPortFrom(ip, 8080).String() + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", ip, resp.Status)
	}
	return strings.TrimSpace(string(b)), nil
}

// containers reads the agent's record of each container, by
// "tenant/instance": its ID (the host name the web server answers) and the
// host pid of its init.
func (e *e2e) containers() (map[string]agent.Container, error) {
	ms, err := filepath.Glob(filepath.Join(e.data, "agent", "containers", "*", "meta.json"))
	if err != nil {
		return nil, err
	}
	out := map[string]agent.Container{}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			return nil, err
		}
		var c agent.Container
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("%s: %w", m, err)
		}
		out[c.Spec.Labels[agent.LabelTenant]+"/"+c.Spec.Labels[agent.LabelInstance]] = c
	}
	return out, nil
}

// workloadPid is the host pid of the container's workload: the child of
// its init.
func workloadPid(initPid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", initPid, initPid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("init %d has children %v, want one workload", initPid, f)
	}
	return strconv.Atoi(f[0])
}

// web is a running web instance as the test last saw it.
type web struct {
	name, host string
	ip         netip.Addr
	initPid    int
	pid        int
	restarts   int
}

// webInstances waits until the service's n instances run and answer from
// the host by their own IPs with their own host names; the IPs are read
// from `berth service ps`.
func (e *e2e) webInstances(t *testing.T, tenant, token, svc string, n int) map[string]web {
	t.Helper()
	var got map[string]web
	poll(t, fmt.Sprintf("%d instances of %s/%s answering by their IPs", n, tenant, svc), 60*time.Second, func() error {
		var items []*api.Instance
		out := e.cli(token, "service", "--tenant", tenant, "ps", svc, "--format", "json")
		if err := json.Unmarshal([]byte(out), &items); err != nil {
			return fmt.Errorf("service ps: %w: %q", err, out)
		}
		cs, err := e.containers()
		if err != nil {
			return err
		}
		got = map[string]web{}
		hosts := map[string]bool{}
		for _, in := range items {
			st := in.Status
			if st.Phase != api.PhaseRunning || !st.IP.IsValid() {
				return fmt.Errorf("instance %s: %s %s ip %v", in.Name, st.Phase, st.Reason, st.IP)
			}
			c, ok := cs[tenant+"/"+in.Name]
			if !ok || c.State.Pid == 0 {
				return fmt.Errorf("instance %s: no running container", in.Name)
			}
			host, err := e.get(st.IP)
			if err != nil {
				return fmt.Errorf("instance %s at %s: %w", in.Name, st.IP, err)
			}
			if want := c.ID[:12]; host != want {
				return fmt.Errorf("instance %s at %s answered %q, want its container's host name %q", in.Name, st.IP, host, want)
			}
			if hosts[host] {
				return fmt.Errorf("two instances answered as %s", host)
			}
			hosts[host] = true
			pid, err := workloadPid(c.State.Pid)
			if err != nil {
				return err
			}
			got[in.Name] = web{name: in.Name, host: host, ip: st.IP, initPid: c.State.Pid, pid: pid, restarts: st.Restarts}
		}
		if len(got) != n {
			return fmt.Errorf("%d instances, want %d", len(got), n)
		}
		return nil
	})
	return got
}

// oneShot runs a standalone busybox instance that is never restarted and
// returns its final status.
func (e *e2e) oneShot(t *testing.T, c *api.Client, tenant, name string, mem int64, script string) api.InstanceStatus {
	t.Helper()
	ctx := ctxE2E(t)
	in := &api.Instance{Meta: api.Meta{Name: name, Tenant: tenant}, Spec: api.InstanceSpec{Template: api.Template{
		Image: "busybox", Command: []string{"sh", "-c", script}, Restart: api.RestartNever, Resources: api.Resources{Memory: mem}}}}
	if err := c.Create(ctx, in); err != nil {
		t.Fatalf("create instance %s/%s: %v", tenant, name, err)
	}
	var st api.InstanceStatus
	poll(t, "instance "+tenant+"/"+name+" to end", 60*time.Second, func() error {
		if err := c.Get(ctx, tenant, name, in); err != nil {
			return err
		}
		st = in.Status
		if st.Phase != api.PhaseExited && st.Phase != api.PhaseFailed {
			return fmt.Errorf("phase %q", st.Phase)
		}
		return nil
	})
	return st
}

// checkScript is a shell loop that retries cond for up to 15 s, then fails
// with code. (Debian's static busybox wget crashes on -T: timeout bounds it.)
func checkScript(cond string, code int) string {
	return fmt.Sprintf(`ok=; for i in $(seq 30); do if %s; then ok=1; break; fi; sleep 0.5; done; [ -n "$ok" ] || exit %d; `, cond, code)
}

// One machine, the whole product: `berth up`, images imported with the
// CLI, a replicated web service whose instances each have their own
// routable IP, restarts of a killed workload, OOM reporting, tenant
// isolation in the API and on the wire, and a restart of berth up that
// loses nothing.
func TestEndToEnd(t *testing.T) {
	e := newE2E(t)
	ctx := ctxE2E(t)
	for _, tn := range []string{"a", "b"} {
		if err := e.admin.Create(ctx, &api.Tenant{Meta: api.Meta{Name: tn}}); err != nil {
			t.Fatal(err)
		}
	}
	tokA := &api.Token{Meta: api.Meta{Name: "a-admin", Tenant: "a"}, Role: api.RoleTenantAdmin}
	tokB := &api.Token{Meta: api.Meta{Name: "b-admin", Tenant: "b"}, Role: api.RoleTenantAdmin}
	for _, tok := range []*api.Token{tokA, tokB} {
		if err := e.admin.Create(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	a, b := e.admin.WithToken(tokA.Secret), e.admin.WithToken(tokB.Secret)
	e.cli(tokA.Secret, "service", "--tenant", "a", "create", "web", "--image", "web", "--replicas", "3", "--stop-grace-period", "1500ms")
	var created api.Service
	if err := json.Unmarshal([]byte(e.cli(tokA.Secret, "service", "--tenant", "a", "inspect", "web")), &created); err != nil ||
		created.Spec.Template.GracePeriod() != 1500*time.Millisecond {
		t.Fatalf("service create --stop-grace-period 1500ms: %v, grace %v", err, created.Spec.Template.GracePeriod())
	}
	var webs map[string]web

	if !t.Run("each web instance answers by its own IP from the host and from a container", func(t *testing.T) {
		webs = e.webInstances(t, "a", tokA.Secret, "web", 3)
		var script strings.Builder
		for _, w := range slices.SortedFunc(maps.Values(webs), func(x, y web) int { return strings.Compare(x.name, y.name) }) {
			script.WriteString(checkScript(fmt.Sprintf(`[ "$(timeout 3 wget -qO- http://%s:8080/)" = %s ]`, w.ip, w.host), 3))
		}
		script.WriteString("exit 0")
		if st := e.oneShot(t, a, "a", "client", 0, script.String()); st.Phase != api.PhaseExited || st.ExitCode != 0 {
			t.Fatalf("a container of tenant a could not reach every web instance by its IP: %+v", st)
		}
	}) {
		t.FailNow()
	}

	t.Run("a killed workload comes back", func(t *testing.T) {
		var victim web
		for _, w := range webs {
			victim = w
			break
		}
		if err := syscall.Kill(victim.pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %s's workload %d: %v", victim.name, victim.pid, err)
		}
		poll(t, victim.name+" restarted and reachable", 60*time.Second, func() error {
			in := &api.Instance{}
			if err := a.Get(ctx, "a", victim.name, in); err != nil {
				return err
			}
			if in.Status.Restarts <= victim.restarts || in.Status.Phase != api.PhaseRunning || !in.Status.IP.IsValid() {
				return fmt.Errorf("status %+v", in.Status)
			}
			host, err := e.get(in.Status.IP)
			if err != nil {
				return err
			}
			if host != victim.host {
				return fmt.Errorf("answered %q, want %q", host, victim.host)
			}
			return nil
		})
		webs = e.webInstances(t, "a", tokA.Secret, "web", 3)
		if webs[victim.name].pid == victim.pid {
			t.Fatalf("workload pid %d unchanged: it never died", victim.pid)
		}
	})

	t.Run("a container past its memory limit is OOM-killed and reported so", func(t *testing.T) {
		st := e.oneShot(t, a, "a", "hog", 32<<20, `x=$(head -c 200000000 /dev/zero | tr '\0' a); echo survived`)
		if st.Phase != api.PhaseExited || st.Reason != "OOMKilled" {
			t.Fatalf("status %+v, want exited with reason OOMKilled", st)
		}
		// The limit is what killed it: the same script without one lives.
		if st := e.oneShot(t, a, "a", "nohog", 0, `x=$(head -c 2000000 /dev/zero | tr '\0' a); exit 0`); st.Reason == "OOMKilled" || st.ExitCode != 0 {
			t.Fatalf("a container within its memory: %+v", st)
		}
	})

	t.Run("tenant b can neither list nor reach tenant a", func(t *testing.T) {
		if _, err := api.ListOf[*api.Instance](ctx, b, "a", ""); api.Code(err) != http.StatusForbidden {
			t.Errorf("tenant b listing tenant a's instances: %v, want 403", err)
		}
		for name := range webs {
			err := b.Get(ctx, "a", name, &api.Instance{})
			if c := api.Code(err); c != http.StatusForbidden && c != http.StatusNotFound {
				t.Errorf("tenant b reading tenant a's instance %s: %v, want 403 or 404", name, err)
			}
		}
		if _, err := api.ListOf[*api.Instance](ctx, a, "a", ""); err != nil {
			t.Fatalf("tenant a listing its own instances: %v", err)
		}
		// B's own web instance is the control: B's container reaches it, so
		// a failure to reach A's is the policy's doing.
		e.cli(tokB.Secret, "service", "--tenant", "b", "create", "web", "--image", "web", "--replicas", "1")
		var own web
		for _, w := range e.webInstances(t, "b", tokB.Secret, "web", 1) {
			own = w
		}
		script := checkScript(fmt.Sprintf(`[ "$(timeout 3 wget -qO- http://%s:8080/)" = %s ]`, own.ip, own.host), 3)
		for _, w := range webs {
			// Any answer from A is a breach; the connection must time out.
			script += fmt.Sprintf(`(timeout 4 wget -qO- http://%s:8080/ && touch /tmp/breach) & `, w.ip)
		}
		script += `wait; [ -e /tmp/breach ] && exit 4; exit 0`
		st := e.oneShot(t, b, "b", "probe", 0, script)
		switch {
		case st.Phase == api.PhaseExited && st.ExitCode == 0:
		case st.ExitCode == 3:
			t.Fatalf("tenant b's container could not reach tenant b's own web instance %s", own.ip)
		case st.ExitCode == 4:
			t.Fatalf("tenant b's container reached tenant a's web instances")
		default:
			t.Fatalf("probe: %+v", st)
		}
		// The same probe from tenant a reaches them: the drop is by tenant.
		var scriptA strings.Builder
		for _, w := range webs {
			scriptA.WriteString(checkScript(fmt.Sprintf(`timeout 3 wget -qO- http://%s:8080/ >/dev/null`, w.ip), 3))
		}
		if st := e.oneShot(t, a, "a", "probe", 0, scriptA.String()+"exit 0"); st.ExitCode != 0 || st.Phase != api.PhaseExited {
			t.Fatalf("tenant a's own container could not reach its web instances: %+v", st)
		}
	})

	t.Run("restarting berth up loses nothing", func(t *testing.T) {
		webs = e.webInstances(t, "a", tokA.Secret, "web", 3)
		// A container that exits with 7 on SIGTERM, sent while berth up is down.
		in := &api.Instance{Meta: api.Meta{Name: "exiter", Tenant: "a"}, Spec: api.InstanceSpec{Template: api.Template{
			Image: "busybox", Command: []string{"sh", "-c", `trap "exit 7" TERM; while :; do sleep 0.2; done`}, Restart: api.RestartNever}}}
		if err := a.Create(ctx, in); err != nil {
			t.Fatal(err)
		}
		var exiterInit, exiterPid int
		poll(t, "exiter running", 60*time.Second, func() error {
			if err := a.Get(ctx, "a", "exiter", in); err != nil {
				return err
			}
			cs, err := e.containers()
			if err != nil {
				return err
			}
			if in.Status.Phase != api.PhaseRunning || cs["a/exiter"].State.Pid == 0 {
				return fmt.Errorf("status %+v", in.Status)
			}
			exiterInit = cs["a/exiter"].State.Pid
			exiterPid, err = workloadPid(exiterInit)
			return err
		})

		e.up.Stop(t)
		for _, w := range webs {
			if err := syscall.Kill(w.pid, 0); err != nil {
				t.Fatalf("workload %s (pid %d) died with berth up: %v", w.name, w.pid, err)
			}
		}
		if err := syscall.Kill(exiterPid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		poll(t, "exiter's init to end", 20*time.Second, func() error {
			if syscall.Kill(exiterInit, 0) == nil {
				if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", exiterInit)); !strings.Contains(string(b), ") Z ") {
					return fmt.Errorf("pid %d still runs", exiterInit)
				}
			}
			return nil
		})

		e.start()
		a = e.admin.WithToken(tokA.Secret)
		after := e.webInstances(t, "a", tokA.Secret, "web", 3)
		for name, w := range webs {
			if got := after[name]; got.pid != w.pid || got.ip != w.ip || got.host != w.host {
				t.Errorf("instance %s: pid %d ip %s host %s after the restart, was pid %d ip %s host %s", name, got.pid, got.ip, got.host, w.pid, w.ip, w.host)
			}
		}
		poll(t, "exiter's exit code reported", 30*time.Second, func() error {
			if err := a.Get(ctx, "a", "exiter", in); err != nil {
				return err
			}
			if in.Status.Phase != api.PhaseExited || in.Status.ExitCode != 7 {
				return fmt.Errorf("status %+v, want exited with code 7", in.Status)
			}
			return nil
		})
	})

	// Removing everything through the API leaves no container behind.
	for _, s := range []struct{ tenant string }{{"a"}, {"b"}} {
		if err := e.admin.Delete(ctx, api.KindService, s.tenant, "web", 0); err != nil && !api.IsNotFound(err) {
			t.Errorf("delete service: %v", err)
		}
		list, err := api.ListOf[*api.Instance](ctx, e.admin, s.tenant, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range list.Items {
			if in.Spec.Service == "" {
				if err := e.admin.Delete(ctx, api.KindInstance, s.tenant, in.Name, 0); err != nil && !api.IsNotFound(err) {
					t.Errorf("delete instance %s: %v", in.Name, err)
				}
			}
		}
	}
	poll(t, "every container removed", 60*time.Second, func() error {
		cs, err := e.containers()
		if err != nil {
			return err
		}
		if len(cs) > 0 {
			return fmt.Errorf("%d containers left", len(cs))
		}
		return nil
	})
}
