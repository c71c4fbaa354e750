package agent

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/coder/websocket"
)

// nodeAPI serves a's containers over HTTP for the test.
func nodeAPIServer(t *testing.T, a *Agent) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(NewNodeAPI(a, nil))
	t.Cleanup(srv.Close)
	return srv
}

// wsClient is the client end of an exec or attach stream.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn

	mu sync.Mutex
	// stdout and stderr received so far, end the last message once the
	// stream ended; guarded by mu.
	stdout, stderr bytes.Buffer
	end            *api.StreamControl
	done           chan struct{}
}

func dialStream(t *testing.T, srv *httptest.Server, ref, op string, q url.Values) *wsClient {
	t.Helper()
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/containers/" + ref + "/" + op + "?" + q.Encode()
	conn, resp, err := websocket.Dial(ctxT(t), u, nil)
	if err != nil {
		var body []byte
		if resp != nil {
			body, _ = io.ReadAll(resp.Body)
		}
		t.Fatalf("dial %s: %v %s", op, err, body)
	}
	conn.SetReadLimit(1 << 20)
	c := &wsClient{t: t, conn: conn, done: make(chan struct{})}
	t.Cleanup(func() { conn.CloseNow() })
	go func() {
		defer close(c.done)
		for {
			typ, b, err := conn.Read(context.Background())
			if err != nil {
				return
			}
			c.mu.Lock()
			if typ == websocket.MessageText {
				var ctl api.StreamControl
				if err := json.Unmarshal(b, &ctl); err == nil {
					c.end = &ctl
				}
			} else if ch, data, err := ParseStdioMessage(b); err == nil {
				if ch == api.ChannelStderr {
					c.stderr.Write(data)
				} else {
					c.stdout.Write(data)
				}
			}
			c.mu.Unlock()
		}
	}()
	return c
}

func (c *wsClient) send(s string) {
	c.t.Helper()
	if err := c.conn.Write(ctxT(c.t), websocket.MessageBinary, append([]byte{api.ChannelStdin}, s...)); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

func (c *wsClient) control(ctl api.StreamControl) {
	c.t.Helper()
	b, _ := json.Marshal(ctl)
	if err := c.conn.Write(ctxT(c.t), websocket.MessageText, b); err != nil {
		c.t.Fatalf("control: %v", err)
	}
}

func (c *wsClient) output() (string, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stdout.String(), c.stderr.String()
}

// waitOutput waits until stdout holds want.
func (c *wsClient) waitOutput(want string) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := c.output()
		if strings.Contains(out, want) {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("output never held %q; it is %q", want, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wait returns the stream's last message once the server ended it.
func (c *wsClient) wait() api.StreamControl {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		c.t.Fatal("stream did not end")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.end == nil {
		c.t.Fatal("stream ended without an exit or error")
	}
	return *c.end
}

func wantExit(t *testing.T, ctl api.StreamControl, code int) {
	t.Helper()
	if ctl.Error != "" || ctl.Exit == nil || *ctl.Exit != code {
		t.Fatalf("end of stream %+v (exit %v), want exit %d", ctl, ctl.Exit, code)
	}
}

// request does one plain HTTP call and decodes an api.Error on failure.
func request(t *testing.T, srv *httptest.Server, method, ref, op string, q url.Values, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), method, srv.URL+"/containers/"+ref+"/"+op+"?"+q.Encode(), body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func wantAPIError(t *testing.T, resp *http.Response, body []byte, code int, msg string) {
	t.Helper()
	var e api.Error
	if resp.StatusCode != code || json.Unmarshal(body, &e) != nil || e.Code != code || !strings.Contains(e.Message, msg) {
		t.Fatalf("got %d %s, want %d with %q", resp.StatusCode, body, code, msg)
	}
}

func TestAttachToATerminal(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	id := run(t, a, ContainerSpec{Name: "term", Cmd: []string{"sh"}, TTY: true, Stdin: true})

	c := dialStream(t, srv, "term", api.OpAttach, nil)
	c.control(api.StreamControl{Resize: &api.TermSize{Rows: 33, Cols: 101}})
	c.send("echo hi\n")
	c.waitOutput("\nhi\r\n") // the line echoed back is "echo hi"
	c.send("stty size\n")
	c.waitOutput("\n33 101\r\n")
	// ^C reaches the foreground job through the terminal, not the shell.
	c.send("sleep 100\n")
	waitFor(t, "sleep to run", func() bool { return runs(t, a, id, "sleep 100") })
	c.send("\x03")
	c.send("echo status $?\n")
	c.waitOutput("\nstatus 130\r\n")

	// Detach: the shell runs on, and a new client picks it up.
	c.conn.Close(websocket.StatusNormalClosure, "detach")
	<-c.done
	if c.end != nil {
		t.Fatalf("a detach carries no exit: %+v", c.end)
	}
	if st, _ := a.Inspect(id); st.State.Status != StatusRunning {
		t.Fatalf("after detach the container is %s", st.State.Status)
	}
	c = dialStream(t, srv, id, api.OpAttach, nil)
	c.send("echo again\n")
	c.waitOutput("\nagain\r\n")
	c.send("exit 3\n")
	wantExit(t, c.wait(), 3)

	out, _ := logsOf(t, a, id, LogOptions{Tail: -1})
	if !strings.Contains(out, "\nhi\n") || !strings.Contains(out, "\nagain\n") {
		t.Fatalf("the terminal's output is not in the logs: %q", out)
	}
}

// runs reports whether a process with the command line cmd is in the
// container.
func runs(t *testing.T, a *Agent, id, cmd string) bool {
	t.Helper()
	top, err := a.Top(ctxT(t), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range top.Processes {
		if p[len(p)-1] == cmd {
			return true
		}
	}
	return false
}

func TestAttachToStdinWithoutATerminal(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	id := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "cat; echo done >&2"}, Stdin: true})
	// berth-init serves four clients at once, each seeing all output;
	// a fifth is turned away.
	var cs []*wsClient
	for range 4 {
		cs = append(cs, dialStream(t, srv, id, api.OpAttach, nil))
	}
	if end := dialStream(t, srv, id, api.OpAttach, nil).wait(); !strings.Contains(end.Error, "too many clients attached") || end.Exit != nil {
		t.Fatalf("fifth client: %+v", end)
	}
	cs[0].send("hello\n")
	for _, c := range cs {
		c.waitOutput("hello\n")
	}
	cs[1].control(api.StreamControl{CloseStdin: true})
	for _, c := range cs {
		wantExit(t, c.wait(), 0)
		if out, errs := c.output(); out != "hello\n" || errs != "done\n" {
			t.Fatalf("stdout %q stderr %q", out, errs)
		}
	}

	// A container run without -i or -t has nothing to attach to.
	plain := run(t, a, ContainerSpec{Cmd: []string{"sleep", "1000"}})
	resp, body := request(t, srv, http.MethodGet, plain, api.OpAttach, nil, nil)
	wantAPIError(t, resp, body, http.StatusBadRequest, "attach needs a container run with tty or stdin")
	resp, body = request(t, srv, http.MethodGet, id, api.OpAttach, nil, nil)
	wantAPIError(t, resp, body, http.StatusConflict, "not running")
}

func TestExecThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	id := run(t, a, ContainerSpec{Name: "box", Cmd: []string{"sleep", "1000"}})

	c := dialStream(t, srv, "box", api.OpExec, api.ExecOptions{Cmd: []string{"sh"}, TTY: true, Stdin: true}.Values())
	c.control(api.StreamControl{Resize: &api.TermSize{Rows: 20, Cols: 70}})
	c.send("stty size; tty\n")
	c.waitOutput("\n20 70\r\n/dev/pts/")
	c.send("exit 4\n")
	wantExit(t, c.wait(), 4)

	c = dialStream(t, srv, "box", api.OpExec, api.ExecOptions{Cmd: []string{"sh", "-c", "echo out; echo err >&2; cat; exit 2"}, Stdin: true}.Values())
	c.send("data\n")
	c.waitOutput("data\n")
	c.control(api.StreamControl{CloseStdin: true})
	wantExit(t, c.wait(), 2)
	if out, errs := c.output(); out != "out\ndata\n" || errs != "err\n" {
		t.Fatalf("stdout %q stderr %q", out, errs)
	}

	// Without stdin the process reads end of file at once.
	c = dialStream(t, srv, id, api.OpExec, api.ExecOptions{Cmd: []string{"sh", "-c", "cat; id -u"}, User: "1000", Env: []string{"X=1"}}.Values())
	wantExit(t, c.wait(), 0)
	if out, _ := c.output(); out != "1000\n" {
		t.Fatalf("exec as user 1000: %q", out)
	}

	resp, body := request(t, srv, http.MethodGet, "nosuch", api.OpExec, api.ExecOptions{Cmd: []string{"true"}}.Values(), nil)
	wantAPIError(t, resp, body, http.StatusNotFound, "no such container")
	resp, body = request(t, srv, http.MethodGet, id, api.OpExec, nil, nil)
	wantAPIError(t, resp, body, http.StatusBadRequest, "required")
	if err := a.Stop(ctxT(t), id, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	resp, body = request(t, srv, http.MethodGet, id, api.OpExec, api.ExecOptions{Cmd: []string{"true"}}.Values(), nil)
	wantAPIError(t, resp, body, http.StatusConflict, "not running")
}

func TestTopStatsAndKillThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	id := run(t, a, ContainerSpec{Name: "sleeper", Cmd: []string{"sh", "-c", "sleep 1000 & wait"}})

	var top api.Top
	waitFor(t, "sleep in top", func() bool {
		resp, body := request(t, srv, http.MethodGet, "sleeper", api.OpTop, nil, nil)
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &top) != nil {
			t.Fatalf("top: %d %s", resp.StatusCode, body)
		}
		return strings.Contains(string(body), `"sleep 1000"`)
	})
	c, _ := a.Inspect(id)
	var sawInit bool
	for _, p := range top.Processes {
		if len(p) != len(top.Titles) {
			t.Fatalf("row %q for titles %q", p, top.Titles)
		}
		if p[0] != "root" {
			t.Errorf("process %q runs as %q, want the container's root by name", p[7], p[0])
		}
		if p[1] == strconv.Itoa(c.State.Pid) && strings.HasPrefix(p[7], initInContainer) {
			sawInit = true
		}
	}
	if !sawInit || len(top.Processes) != 3 {
		t.Fatalf("top: want berth-init (pid %d), sh and sleep: %q", c.State.Pid, top.Processes)
	}

	resp, body := request(t, srv, http.MethodGet, id, api.OpStats, nil, nil)
	var st api.Stats
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil || st.Pids != 3 || st.MemoryBytes == 0 || st.Time.IsZero() {
		t.Fatalf("stats: %d %s", resp.StatusCode, body)
	}

	resp, body = request(t, srv, http.MethodPost, "sleeper", api.OpKill, url.Values{"signal": {"SIGNOPE"}}, nil)
	wantAPIError(t, resp, body, http.StatusBadRequest, `signal "SIGNOPE": unknown`)
	resp, body = request(t, srv, http.MethodGet, "sleeper", api.OpKill, nil, nil)
	wantAPIError(t, resp, body, http.StatusMethodNotAllowed, "use POST")
	resp, body = request(t, srv, http.MethodPost, "sleeper", api.OpKill, url.Values{"signal": {"term"}}, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("kill: %d %s", resp.StatusCode, body)
	}
	// berth-init passes TERM to sh, which dies of it.
	if code, err := a.Wait(ctxT(t), id); err != nil || code != 128+15 {
		t.Fatalf("exit after TERM: %d %v", code, err)
	}
	resp, body = request(t, srv, http.MethodPost, "sleeper", api.OpKill, url.Values{"signal": {"9"}}, nil)
	wantAPIError(t, resp, body, http.StatusConflict, "not running")
	resp, body = request(t, srv, http.MethodGet, "sleeper", api.OpTop, nil, nil)
	wantAPIError(t, resp, body, http.StatusConflict, "not running")
	resp, body = request(t, srv, http.MethodGet, "nosuch", api.OpStats, nil, nil)
	wantAPIError(t, resp, body, http.StatusNotFound, "no such container")
	resp, body = request(t, srv, http.MethodGet, "sleeper", "frobnicate", nil, nil)
	wantAPIError(t, resp, body, http.StatusNotFound, `operation "frobnicate": unknown`)
}

// tarOf builds an archive of entries; a regular file's body is its Linkname
// field misused as content, to keep the tables short.
func tarOf(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hdrs {
		body := ""
		if h.Typeflag == tar.TypeReg {
			body, h.Linkname = h.Linkname, ""
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestCopyBothWaysThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	id := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "ln -s / /tmp/out; mkdir /tmp/in; sleep 1000"}})
	waitFor(t, "the container's links", func() bool {
		out, _ := execOut(t, a, id, ExecSpec{Args: []string{"ls", "/tmp"}})
		return strings.Contains(out, "out") && strings.Contains(out, "in")
	})

	body := tarOf(t,
		&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1000, Gid: 1000},
		&tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1000, Gid: 100, Linkname: "content\n"},
		&tar.Header{Name: "d/l", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"},
		&tar.Header{Name: "d/h", Typeflag: tar.TypeLink, Linkname: "d/f"},
		&tar.Header{Name: "e/deep/g", Typeflag: tar.TypeReg, Linkname: "g\n"},
	)
	resp, rb := request(t, srv, http.MethodPut, id, api.OpArchive, url.Values{"path": {"/tmp/in"}}, bytes.NewReader(body))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("put archive: %d %s", resp.StatusCode, rb)
	}
	out, code := execOut(t, a, id, ExecSpec{Args: []string{"sh", "-c",
		"cd /tmp/in && stat -c '%n %u:%g %a' d d/f && cat d/f && readlink d/l && stat -c %h d/h && cat e/deep/g"}})
	if want := "d 1000:1000 750\nd/f 1000:100 640\ncontent\n/etc/passwd\n2\ng\n"; code != 0 || out != want {
		t.Fatalf("in the container (exit %d):\n%s\nwant:\n%s", code, out, want)
	}

	// A symlink of the container pointing at its / leads to its own root,
	// never the host's.
	name := "berth-cp-" + randomHex(t)
	resp, rb = request(t, srv, http.MethodPut, id, api.OpArchive, url.Values{"path": {"/tmp/out"}},
		bytes.NewReader(tarOf(t, &tar.Header{Name: name, Typeflag: tar.TypeReg, Linkname: "x"})))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("put through the container's link: %d %s", resp.StatusCode, rb)
	}
	if _, err := os.Lstat("/" + name); !errors.Is(err, os.ErrNotExist) {
		os.Remove("/" + name)
		t.Fatalf("the host's / got %s: %v", name, err)
	}
	if out, _ := execOut(t, a, id, ExecSpec{Args: []string{"cat", "/" + name}}); out != "x" {
		t.Fatalf("the container's / lacks the file: %q", out)
	}

	// Hostile archives are refused whole: not even their harmless first
	// entry is written.
	for what, tc := range map[string]struct {
		hdrs []*tar.Header
		want string
	}{
		"dot dot":  {[]*tar.Header{{Name: "first", Typeflag: tar.TypeReg}, {Name: "../../escape", Typeflag: tar.TypeReg}}, "contains .."},
		"absolute": {[]*tar.Header{{Name: "first", Typeflag: tar.TypeReg}, {Name: "/etc/escape", Typeflag: tar.TypeReg}}, "absolute path"},
		"symlink":  {[]*tar.Header{{Name: "first", Typeflag: tar.TypeReg}, {Name: "l", Typeflag: tar.TypeSymlink, Linkname: "../../../.."}, {Name: "l/escape", Typeflag: tar.TypeReg}}, "a symlink made by the same archive"},
	} {
		resp, rb := request(t, srv, http.MethodPut, id, api.OpArchive, url.Values{"path": {"/tmp"}}, bytes.NewReader(tarOf(t, tc.hdrs...)))
		wantAPIError(t, resp, rb, http.StatusBadRequest, tc.want)
		if out, _ := execOut(t, a, id, ExecSpec{Args: []string{"ls", "/tmp"}}); strings.Contains(out, "first") || strings.Contains(out, "escape") {
			t.Fatalf("%s: refused archive left files: %q", what, out)
		}
	}
	resp, rb = request(t, srv, http.MethodPut, id, api.OpArchive, url.Values{"path": {"/nosuch"}}, bytes.NewReader(body))
	wantAPIError(t, resp, rb, http.StatusBadRequest, "destination /nosuch: not a directory")

	// And back out.
	resp, rb = request(t, srv, http.MethodGet, id, api.OpArchive, url.Values{"path": {"/tmp/in/d"}}, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-tar" {
		t.Fatalf("get archive: %d %s", resp.StatusCode, rb)
	}
	got := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(rb))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		got[h.Name] = string(rune(h.Typeflag)) + " " + strconv.Itoa(h.Uid) + ":" + strconv.Itoa(h.Gid) + " " + h.Linkname + string(data)
	}
	want := map[string]string{
		"d/": "5 1000:1000 ", "d/f": "0 1000:100 content\n", "d/h": "0 1000:100 content\n", "d/l": "2 0:0 /etc/passwd",
	}
	if len(got) != len(want) {
		t.Fatalf("archive of /tmp/in/d: %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("entry %s: %q, want %q", k, got[k], v)
		}
	}
	resp, rb = request(t, srv, http.MethodGet, id, api.OpArchive, url.Values{"path": {"/tmp/nosuch"}}, nil)
	wantAPIError(t, resp, rb, http.StatusNotFound, "/tmp/nosuch: no such file or directory")
	// A link out of the container is followed inside it only.
	resp, rb = request(t, srv, http.MethodGet, id, api.OpArchive, url.Values{"path": {"/tmp/out/etc/passwd"}}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("get through the container's link: %d %s", resp.StatusCode, rb)
	}
	h, err := tar.NewReader(bytes.NewReader(rb)).Next()
	if err != nil || h.Name != "passwd" {
		t.Fatalf("archive of a file: %+v %v", h, err)
	}
	hostPasswd, _ := os.ReadFile("/etc/passwd")
	cPasswd, _ := os.ReadFile(filepath.Join(a.rootfs(id), "etc/passwd"))
	if int64(len(cPasswd)) != h.Size || bytes.Equal(hostPasswd, cPasswd) {
		t.Fatalf("passwd of %d bytes: not the container's (%d bytes)", h.Size, len(cPasswd))
	}
}

func randomHex(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func TestLogsFollowThroughTheAPIEndsWithTheContainer(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	id := run(t, a, ContainerSpec{Cmd: []string{"sh", "-c", "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c"}})
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodGet, srv.URL+"/containers/"+id+"/logs?"+api.LogQuery{Follow: true, Tail: -1}.Values().Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
	}
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() { // ends only when the server ends the stream
		var l api.LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Bytes(), err)
		}
		if l.Time.IsZero() {
			t.Errorf("line %q has no time", l.Log)
		}
		lines = append(lines, l.Stream+":"+l.Log)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(lines, ",") != "stdout:a,stderr:b,stdout:c" {
		t.Fatalf("followed %q", lines)
	}
	if st, _ := a.Inspect(id); st.State.Status != StatusExited {
		t.Fatalf("follow ended while the container is %s", st.State.Status)
	}
	resp2, body := request(t, srv, http.MethodGet, id, api.OpLogs, api.LogQuery{Tail: 1}.Values(), nil)
	if resp2.StatusCode != http.StatusOK || !strings.Contains(string(body), `"log":"c"`) || strings.Count(string(body), "\n") != 1 {
		t.Fatalf("tail 1: %d %s", resp2.StatusCode, body)
	}
	resp2, body = request(t, srv, http.MethodGet, id, api.OpLogs, url.Values{"tail": {"x"}}, nil)
	wantAPIError(t, resp2, body, http.StatusBadRequest, "must be a number of lines")
	resp2, body = request(t, srv, http.MethodGet, "nosuch", api.OpLogs, nil, nil)
	wantAPIError(t, resp2, body, http.StatusNotFound, "no such container")
}

// follow reads an OpFollow stream: its lines as stream:text, and its end.
func follow(t *testing.T, srv *httptest.Server, ref string, q url.Values) ([]string, api.FollowEvent) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodGet, srv.URL+"/containers/"+ref+"/"+api.OpFollow+"?"+q.Encode(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return nil, api.FollowEvent{}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("follow %s: %d %s", ref, resp.StatusCode, b)
		return nil, api.FollowEvent{}
	}
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev api.FollowEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Errorf("line %q: %v", sc.Bytes(), err)
			return lines, ev
		}
		if ev.Log == nil {
			return lines, ev
		}
		lines = append(lines, ev.Log.Stream+":"+ev.Log.Log)
	}
	t.Errorf("follow %s ended without an exit (%v)", ref, sc.Err())
	return lines, api.FollowEvent{}
}

// A follow asked for before the container is made waits for it, and for
// the container of the right instance: an older one of the same name is
// not it.
func TestFollowAwaitsTheInstancesContainerAndEndsWithItsExit(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	srv := nodeAPIServer(t, a)
	const name = "shop_web"
	old := run(t, a, ContainerSpec{Name: name, Cmd: []string{"sleep", "100"}, Labels: map[string]string{LabelCreated: "old"}})
	type result struct {
		lines []string
		end   api.FollowEvent
	}
	got := make(chan result, 1)
	go func() {
		lines, end := follow(t, srv, name, url.Values{"await": {"1"}, "created": {"new"}})
		got <- result{lines, end}
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case r := <-got:
		t.Fatalf("follow ended before its container was made: %+v", r)
	default:
	}
	if err := a.Remove(ctxT(t), old, true); err != nil {
		t.Fatal(err)
	}
	run(t, a, ContainerSpec{Name: name, Cmd: []string{"sh", "-c", "echo a; echo b >&2; exit 3"}, Labels: map[string]string{LabelCreated: "new"}})
	var r result
	select {
	case r = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("follow did not end with its container")
	}
	if strings.Join(r.lines, ",") != "stdout:a,stderr:b" || r.end.Exit == nil || r.end.Exit.Code != 3 || r.end.Exit.Error != "" {
		t.Fatalf("followed %q, end %+v (exit %+v)", r.lines, r.end, r.end.Exit)
	}

	// Without berth-init the output comes once the run is over.
	id := run(t, a, ContainerSpec{NoInit: true, Cmd: []string{"sh", "-c", "echo raw; exit 4"}})
	lines, end := follow(t, srv, id, nil)
	if strings.Join(lines, ",") != "stdout:raw" || end.Exit == nil || end.Exit.Code != 4 {
		t.Fatalf("followed %q, end %+v (exit %+v)", lines, end, end.Exit)
	}
	resp, body := request(t, srv, http.MethodGet, "nosuch", api.OpFollow, nil, nil)
	wantAPIError(t, resp, body, http.StatusNotFound, "no such container")
}
