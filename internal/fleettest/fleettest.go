// Package fleettest builds a Berth cluster on one machine for tests and
// benchmarks: a control-plane host running berth server and node hosts
// running berth agent, each host a network namespace (nodes also a mount
// namespace) plugged into a bridge in a hub namespace that stands for the
// switch. Everything is removed by the test's cleanup, even on failure.
package fleettest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
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

// Config says what fleet to build.
type Config struct {
	// Nodes is the number of node hosts (n1, n2, ...).
	Nodes int
	// CertTTL is the life of the node certificates (24 h when zero).
	CertTTL time.Duration
	// Servers is the number of berth servers, each on its own host with
	// a member of one etcd cluster (1 when zero: embedded single etcd).
	Servers int
	// Images are more image tars every node imports: name → (tar, config
	// lines for berth image import -c).
	Images []Image
}

// Image is an image every node imports.
type Image struct {
	Tar, Name string
	Config    []string
}

// Poll calls check until it succeeds or d passes.
func Poll(t testing.TB, what string, d time.Duration, check func() error) {
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
		time.Sleep(50 * time.Millisecond)
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return c
}

// Fleet is a cluster on one machine: a control-plane host and node hosts,
// each a network namespace (and, for nodes, a mount namespace) of its own,
// plugged into a bridge in a hub namespace that stands for the switch.
type Fleet struct {
	t          testing.TB
	cfg        Config
	bin, berth string
	dir        string
	Hub        netnstest.NS
	// Ctl is the control-plane host the test's client and CLI use: the
	// last server's (so that killing server 0 leaves it).
	Ctl     *Host
	Hosts   []*Host
	Secret  string
	Admin   *api.Client
	servers []*server
	prefer  int
	token   string
}

// server is one berth server on its own host.
type server struct {
	host *Host
	name string
	data string
	proc *proc
	log  *uptest.Buffer
}

// Host is one host of the fleet.
type Host struct {
	Name  string
	NS    netnstest.NS
	Addr  netip.Addr
	Port  string // its veth in the hub
	Data  string
	hold  *exec.Cmd
	agent *proc
	log   *uptest.Buffer
	probe *http.Client
}

const FabricNet = "10.216.0."

func New(t testing.TB, cfg Config) *Fleet {
	t.Helper()
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth, berthd, berth-runtime and berth-init there")
	}
	netnstest.RequireRoot(t, "nsenter", "tar")
	if err := busybox.Available(); err != nil {
		t.Skip(err)
	}
	goBin, err := uptest.GoTool()
	if err != nil {
		t.Skip(err)
	}
	if cfg.CertTTL == 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	f := &Fleet{t: t, cfg: cfg, bin: bin, berth: filepath.Join(bin, "berth"), dir: testdir.World(t)}
	bb := filepath.Join(f.dir, "busybox.tar")
	if err := os.WriteFile(bb, imagetest.BusyboxTar(t).Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	web := filepath.Join(f.dir, "web.tar")
	if err := os.WriteFile(web, uptest.GoImageTar(t, goBin, f.dir, "web", uptest.WebServer), 0o600); err != nil {
		t.Fatal(err)
	}

	u := netnstest.Unique()
	f.Hub = netnstest.New(t, "bfh-"+u)
	f.Hub.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	f.Hub.Run(t, "ip", "link", "set", "br0", "up")
	plug := func(name string, i int) *Host {
		h := &Host{Name: name, NS: netnstest.New(t, fmt.Sprintf("bf%s-%s", name, u)), Addr: netip.MustParseAddr(FabricNet + strconv.Itoa(i)),
			Port: "p" + name, log: &uptest.Buffer{}}
		netnstest.Link(t, f.Hub, h.Port, "", h.NS, "eth0", h.Addr.String()+"/24", 1500)
		f.Hub.Run(t, "ip", "link", "set", h.Port, "master", "br0")
		h.probe = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: h.dialer(), DisableKeepAlives: true}}
		return h
	}
	nServers := max(cfg.Servers, 1)
	for i := range nServers {
		name := "ctl"
		if nServers > 1 {
			name = fmt.Sprintf("ctl%d", i+1)
		}
		f.servers = append(f.servers, &server{host: plug(name, 1+i), name: fmt.Sprintf("s%d", i+1), data: filepath.Join(f.dir, "server-"+name)})
	}
	for i := range cfg.Nodes {
		h := plug(fmt.Sprintf("n%d", i+1), 11+i)
		h.Data = filepath.Join(f.dir, h.Name)
		f.hostBerth("image", "--root", h.Data, "import", bb, "busybox:latest", "-c", "ENV PATH=/bin")
		f.hostBerth("image", "--root", h.Data, "import", web, "web:latest", "-c", `CMD ["/web"]`)
		for _, im := range cfg.Images {
			args := []string{"image", "--root", h.Data, "import", im.Tar, im.Name}
			for _, c := range im.Config {
				args = append(args, "-c", c)
			}
			f.hostBerth(args...)
		}
		// A mount namespace per host, so that the agents' mounts never
		// show on the machine (Go makes them private there).
		h.hold = exec.Command("nsenter", "--net="+h.NS.Path, "--", "sleep", "1000000")
		h.hold.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
		if err := h.hold.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.hold.Process.Kill(); h.hold.Wait() })
		t.Cleanup(func() { uptest.KillContainers(filepath.Join(h.Data, "agent")) })
		Poll(t, "the namespace holder of "+h.Name, 10*time.Second, func() error { return uptest.SameNetns(h.hold.Process.Pid, h.NS.Path) })
		f.Hosts = append(f.Hosts, h)
	}
	secret, err := randomHex(12)
	if err != nil {
		t.Fatal(err)
	}
	f.Secret = "system.admin." + secret
	// All at once: each etcd member waits for a quorum of the others.
	for _, srv := range f.servers {
		f.startServer(srv)
	}
	for _, srv := range f.servers {
		f.waitServer(srv)
	}
	f.UseServer(nServers - 1)
	ctx := ctx(t)
	jt, err := f.Admin.JoinToken(ctx, 10*time.Minute)
	if err != nil {
		t.Fatalf("join token: %v", err)
	}
	f.token = jt.Token
	for _, h := range f.Hosts {
		f.StartAgent(h, true)
	}
	f.WaitNodes(len(f.Hosts))
	return f
}

func (f *Fleet) hostBerth(args ...string) {
	f.t.Helper()
	if out, err := exec.Command(f.berth, args...).CombinedOutput(); err != nil {
		f.t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// RestartServer stops the first berth server (SIGTERM) and starts it
// again on its data directory after down has passed.
func (f *Fleet) RestartServer(down time.Duration) {
	f.t.Helper()
	srv := f.servers[0]
	srv.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-srv.proc.exited:
		if srv.proc.err != nil {
			f.t.Fatalf("berth server after SIGTERM: %v\n%s", srv.proc.err, srv.log.String())
		}
	case <-time.After(20 * time.Second):
		f.t.Fatal("berth server did not stop on SIGTERM")
	}
	time.Sleep(down)
	f.startServer(srv)
	f.waitServer(srv)
}

// KillServer SIGKILLs berth server i (0-based) and its etcd member.
func (f *Fleet) KillServer(i int) {
	srv := f.servers[i]
	srv.proc.kill()
}

// ServerPid is the pid of berth server i, which its leader identity
// (host-pid) ends with.
func (f *Fleet) ServerPid(i int) int { return f.servers[i].proc.cmd.Process.Pid }

// UseServer points Admin and CLI at berth server i.
func (f *Fleet) UseServer(i int) {
	f.Ctl = f.servers[i].host
	f.Admin = api.NewClient("http://127.0.0.1:7070", f.Secret, &http.Client{Transport: &http.Transport{DialContext: f.Ctl.dialer()}})
}

// startServer runs a berth server on its host: plain HTTP on the host's
// loopback for the test, TLS on the fabric for the agents; with several
// servers, an etcd member each.
func (f *Fleet) startServer(srv *server) {
	t := f.t
	addr := srv.host.Addr.String()
	args := []string{f.berth, "server", "--data-dir", srv.data, "--listen", "127.0.0.1:7070", "--admin-token", f.Secret,
		"--tls-listen", addr + ":7443", "--node-cert-ttl", f.cfg.CertTTL.String()}
	if len(f.servers) > 1 {
		var members []string
		for _, o := range f.servers {
			members = append(members, o.name+"=http://"+o.host.Addr.String()+":2380")
		}
		args = append(args, "--etcd-name", srv.name, "--etcd-listen", "http://"+addr+":2379",
			"--etcd-peer-listen", "http://"+addr+":2380", "--etcd-initial-cluster", strings.Join(members, ","))
	}
	srv.log = &uptest.Buffer{}
	srv.proc = startProc(t, srv.host.NS.Cmd(args...), srv.log, "berth server "+srv.name)
}

// waitServer waits until srv answers on its host's loopback.
func (f *Fleet) waitServer(srv *server) {
	c := api.NewClient("http://127.0.0.1:7070", f.Secret, &http.Client{Transport: &http.Transport{DialContext: srv.host.dialer()}})
	Poll(f.t, "berth server "+srv.name+" to answer", 60*time.Second, func() error {
		_, err := api.ListOf[*api.Node](context.Background(), c, "", "")
		return err
	})
}

// joinURL lists every server's TLS API, the preferred one first: agents
// use the first that answers.
func (f *Fleet) joinURL() string {
	var us []string
	for i := range f.servers {
		srv := f.servers[(f.prefer+i)%len(f.servers)]
		us = append(us, "https://"+srv.host.Addr.String()+":7443")
	}
	return strings.Join(us, ",")
}

// PreferServer makes agents started from now on use server i first.
func (f *Fleet) PreferServer(i int) { f.prefer = i }

// dialer dials from inside h's network namespace.
func (h *Host) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.NS.Do(func() (err error) {
			d := net.Dialer{Timeout: 2 * time.Second}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// StartAgent runs berth agent on h; join gives it the join token (a
// restart finds its certificate instead).
func (f *Fleet) StartAgent(h *Host, join bool) {
	t := f.t
	args := []string{"--target", strconv.Itoa(h.hold.Process.Pid), "--mount", "--net", "--", f.berth, "agent",
		"--join", f.joinURL(), "--data-dir", h.Data, "--node-name", h.Name,
		"--address", h.Addr.String(), "--label", "zone=" + h.Name}
	if join {
		tf := filepath.Join(f.dir, "join-token")
		if err := os.WriteFile(tf, []byte(f.token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--token-file", tf)
	}
	h.agent = startProc(t, exec.Command("nsenter", args...), h.log, "agent "+h.Name)
}

// proc is a process of the fleet (a server, an agent), stopped with
// SIGTERM when the test ends unless it has exited already.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once it has exited
	err    error         // how it exited; read after exited
}

// startProc starts cmd with its output in log, and at cleanup stops it
// and, if the test failed, shows the log under what.
func startProc(t testing.TB, cmd *exec.Cmd, log *uptest.Buffer, what string) *proc {
	t.Helper()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(15 * time.Second):
				p.kill()
			}
		}
		if t.Failed() {
			t.Logf("%s's log:\n%s", what, log.String())
		}
	})
	return p
}

// kill SIGKILLs the process and waits for it.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// KillAgent SIGKILLs h's agent: the host's containers stay.
func (f *Fleet) KillAgent(h *Host) {
	h.agent.kill()
}

// Nodes reads the control plane's nodes by name.
func (f *Fleet) Nodes() map[string]*api.Node {
	f.t.Helper()
	l, err := api.ListOf[*api.Node](context.Background(), f.Admin, "", "")
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]*api.Node{}
	for _, n := range l.Items {
		out[n.Name] = n
	}
	return out
}

// WaitNodes waits until n nodes are alive: ready, or drained but
// heartbeating.
func (f *Fleet) WaitNodes(n int) {
	f.t.Helper()
	Poll(f.t, fmt.Sprintf("%d ready nodes", n), 90*time.Second, func() error {
		ready := 0
		for _, no := range f.Nodes() {
			if no.Status.Phase == api.NodeReady || no.Status.Phase == api.NodeDrained {
				ready++
			}
		}
		if ready != n {
			return fmt.Errorf("%d ready", ready)
		}
		return nil
	})
}

// Host is the node host of that name.
func (f *Fleet) Host(name string) *Host {
	for _, h := range f.Hosts {
		if h.Name == name {
			return h
		}
	}
	f.t.Fatalf("no host %q", name)
	return nil
}

// Instances lists a service's instances.
func (f *Fleet) Instances(svc string) []*api.Instance {
	f.t.Helper()
	l, err := api.ListOf[*api.Instance](context.Background(), f.Admin, api.DefaultTenant, "")
	if err != nil {
		f.t.Fatal(err)
	}
	var out []*api.Instance
	for _, in := range l.Items {
		if in.Spec.Service == svc {
			out = append(out, in)
		}
	}
	slices.SortFunc(out, func(a, b *api.Instance) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Answer fetches http://ip:8080/ from h's host namespace.
func (h *Host) Answer(ip netip.Addr) (string, error) {
	resp, err := h.probe.Get("http://" + netip.AddrPortFrom(ip, 8080).String() + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Serving checks that every instance of svc runs on a live node other than
// the excluded ones and answers by its IP on its node; it returns them by
// name.
func (f *Fleet) Serving(svc string, want int, exclude ...string) (map[string]*api.Instance, error) {
	ins := f.Instances(svc)
	if len(ins) != want {
		return nil, fmt.Errorf("%d instances, want %d", len(ins), want)
	}
	out := map[string]*api.Instance{}
	for _, in := range ins {
		st := in.Status
		if st.Phase != api.PhaseRunning || !st.IP.IsValid() || st.ObservedNode != in.Spec.Node || slices.Contains(exclude, in.Spec.Node) {
			return nil, fmt.Errorf("instance %s: %s on %q (observed %q) ip %v: %s", in.Name, st.Phase, in.Spec.Node, st.ObservedNode, st.IP, st.Reason)
		}
		if _, err := f.Host(in.Spec.Node).Answer(st.IP); err != nil {
			return nil, fmt.Errorf("instance %s at %s on %s: %w", in.Name, st.IP, in.Spec.Node, err)
		}
		out[in.Name] = in
	}
	return out, nil
}

// CLI runs berth on the control-plane host as the admin.
func (f *Fleet) CLI(args ...string) (string, error) {
	cmd := f.Ctl.NS.Cmd(append([]string{f.berth}, args...)...)
	cmd.Env = append(os.Environ(), "BERTH_SERVER=http://127.0.0.1:7070", "BERTH_TOKEN="+f.Secret)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	timer := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	err := cmd.Run()
	timer.Stop()
	return out.String(), err
}

// Containers reads the agent's records of h's containers by instance.
func (h *Host) Containers() (map[string]agent.Container, error) {
	ms, err := filepath.Glob(filepath.Join(h.Data, "agent", "containers", "*", "meta.json"))
	if err != nil {
		return nil, err
	}
	out := map[string]agent.Container{}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		var c agent.Container
		if json.Unmarshal(b, &c) == nil {
			out[c.Spec.Labels[agent.LabelInstance]] = c
		}
	}
	return out, nil
}

// Empty is a check for Poll: the hosts run no container.
func Empty(hosts ...*Host) func() error {
	return func() error {
		for _, h := range hosts {
			cs, err := h.Containers()
			if err != nil {
				return err
			}
			if len(cs) > 0 {
				return fmt.Errorf("%s has %d containers", h.Name, len(cs))
			}
		}
		return nil
	}
}

// NodeClient speaks to the control plane with h's node certificate, as its
// agent does.
func (f *Fleet) NodeClient(h *Host) (*api.Client, error) {
	dir := filepath.Join(h.Data, "pki")
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	kp, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}}, DialContext: h.dialer()}
	return api.NewClient("https://"+f.Ctl.Addr.String()+":7443", "", &http.Client{Transport: tr, Timeout: 5 * time.Second}), nil
}
