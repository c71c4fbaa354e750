package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/berth-dev/berth/internal/uptest"
	"golang.org/x/sys/unix"
)

// cli runs bin/berth against one berth up.
type cli struct {
	t     *testing.T
	berth string
	env   []string
}

// run runs berth with args and stdin, returning stdout, stderr and the
// exit code; it fails the test only if berth could not be run at all.
func (c *cli) run(stdin string, args ...string) (string, string, int) {
	c.t.Helper()
	cmd := exec.Command(c.berth, args...)
	cmd.Env = c.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			c.t.Fatalf("berth %v: %v", args, err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		c.t.Fatalf("berth %v did not end; stdout %q stderr %q", args, out.String(), errb.String())
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// ok runs berth and fails the test unless it exits 0.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run("", args...)
	if code != 0 {
		c.t.Fatalf("berth %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// The Docker verbs, through the API of a real `berth up`, against real
// containers.
func TestDockerVerbs(t *testing.T) {
	berth, data := upData(t)
	p := startUp(t, berth, data)
	secret, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	c := &cli{t: t, berth: berth, env: append(os.Environ(), "BERTH_SERVER="+p.Addr, "BERTH_TOKEN="+strings.TrimSpace(string(secret)))}

	t.Run("run", func(t *testing.T) {
		c.t = t
		if out := c.ok("run", "--rm", "busybox", "echo", "hello"); out != "hello\n" {
			t.Errorf("run echo: %q", out)
		}
		out, errOut, code := c.run("", "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
		if code != 3 || out != "out\n" || errOut != "err\n" {
			t.Errorf("run exit 3: code %d stdout %q stderr %q", code, out, errOut)
		}
		if _, errOut, code := c.run("", "run", "--rm", "busybox", "/no/such/command"); code != exitNotFound {
			t.Errorf("missing command: exit %d, want %d (%s)", code, exitNotFound, errOut)
		}
		if _, errOut, code := c.run("", "run", "--rm", "busybox", "/etc/passwd"); code != exitNotExecutable {
			t.Errorf("not executable: exit %d, want %d (%s)", code, exitNotExecutable, errOut)
		}
		if _, errOut, code := c.run("", "run", "--rm", "--memory", "lots", "busybox", "true"); code != exitBerth || !strings.Contains(errOut, "--memory") {
			t.Errorf("bad flag: exit %d, %s", code, errOut)
		}
		if out, _, code := c.run("hello from stdin\n", "run", "-i", "--rm", "busybox", "cat"); code != 0 || out != "hello from stdin\n" {
			t.Errorf("run -i cat: exit %d, %q", code, out)
		}
		// --rm leaves nothing behind.
		if out := c.ok("ps", "-a", "-q"); out != "" {
			t.Errorf("after --rm runs, ps -a lists %q", out)
		}
	})

	t.Run("lifecycle", func(t *testing.T) {
		c.t = t
		if out := c.ok("run", "-d", "--name", "web", "busybox", "sh", "-c", "echo started; trap 'exit 0' TERM; while true; do sleep 0.1; done"); out != "web\n" {
			t.Fatalf("run -d: %q", out)
		}
		if out := c.ok("ps", "-q"); out != "web\n" {
			t.Errorf("ps -q: %q", out)
		}
		var rows []psRow
		if err := json.Unmarshal([]byte(c.ok("ps", "--format", "json")), &rows); err != nil || len(rows) != 1 || rows[0].Image != "busybox" {
			t.Errorf("ps --format json: %+v, %v", rows, err)
		}
		if out := c.ok("inspect", "--format", "{{.Status.Phase}}", "web"); out != "running\n" {
			t.Errorf("inspect --format: %q", out)
		}
		wait(t, "log line", func() error {
			if out := c.ok("logs", "web"); out != "started\n" {
				return fmt.Errorf("logs: %q", out)
			}
			return nil
		})
		if out := c.ok("logs", "-t", "web"); !strings.HasSuffix(out, " started\n") || !strings.HasPrefix(out, "20") {
			t.Errorf("logs -t: %q", out)
		}
		if out := c.ok("exec", "web", "sh", "-c", "echo $((40+2))"); out != "42\n" {
			t.Errorf("exec: %q", out)
		}
		if _, _, code := c.run("", "exec", "web", "false"); code != 1 {
			t.Errorf("exec false: exit %d", code)
		}
		if _, _, code := c.run("", "exec", "web", "/no/such/command"); code != exitNotFound {
			t.Errorf("exec missing command: exit %d", code)
		}
		if out, _, code := c.run("piped\n", "exec", "-i", "web", "cat"); code != 0 || out != "piped\n" {
			t.Errorf("exec -i cat: exit %d, %q", code, out)
		}
		if out := c.ok("top", "web"); !strings.Contains(out, "PID") || !strings.Contains(out, "sleep") {
			t.Errorf("top: %q", out)
		}
		if out := c.ok("stats", "--no-stream", "web"); !strings.Contains(out, "web") || !strings.Contains(out, "MEM USAGE") {
			t.Errorf("stats: %q", out)
		}
		if _, errOut, code := c.run("", "stats", "--no-stream", "nosuch"); code == 0 || !strings.Contains(errOut, "nosuch") {
			t.Errorf("stats of an unknown container: exit %d, %s", code, errOut)
		}

		// cp, both ways.
		local := filepath.Join(t.TempDir(), "note.txt")
		os.WriteFile(local, []byte("copied in\n"), 0o644)
		c.ok("cp", local, "web:/tmp")
		if out := c.ok("exec", "web", "cat", "/tmp/note.txt"); out != "copied in\n" {
			t.Errorf("after cp in: %q", out)
		}
		back := filepath.Join(t.TempDir(), "back.txt")
		c.ok("cp", "web:/tmp/note.txt", back)
		if b, err := os.ReadFile(back); err != nil || string(b) != "copied in\n" {
			t.Errorf("cp out: %q, %v", b, err)
		}

		if _, errOut, code := c.run("", "rm", "web"); code == 0 || !strings.Contains(errOut, "running") {
			t.Errorf("rm of a running container: exit %d, %s", code, errOut)
		}
		c.ok("stop", "web")
		if out := c.ok("inspect", "--format", "{{.Status.Phase}} {{.Status.ExitCode}}", "web"); out != "exited 0\n" {
			t.Errorf("after stop: %q", out)
		}
		if out := c.ok("ps", "-q"); out != "" {
			t.Errorf("ps after stop: %q", out)
		}
		if out := c.ok("ps", "-a", "-q", "--filter", "status=exited"); out != "web\n" {
			t.Errorf("ps -a after stop: %q", out)
		}
		c.ok("start", "web")
		if out := c.ok("inspect", "--format", "{{.Status.Phase}}", "web"); out != "running\n" {
			t.Errorf("after start: %q", out)
		}
		c.ok("restart", "web")
		c.ok("kill", "web")
		if out := c.ok("wait", "web"); out != "137\n" {
			t.Errorf("wait after kill: %q", out)
		}
		c.ok("rm", "web")
		if _, _, code := c.run("", "inspect", "web"); code == 0 {
			t.Error("web still there after rm")
		}
		c.ok("run", "-d", "--name", "doomed", "busybox", "sleep", "1000")
		c.ok("rm", "-f", "doomed")
	})

	t.Run("events", func(t *testing.T) {
		c.t = t
		cmd := exec.Command(berth, "events", "--format", "json")
		cmd.Env = c.env
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		seen := make(chan string, 64)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var e eventLine
				if json.Unmarshal(sc.Bytes(), &e) == nil && e.Object == "instances/ev" {
					seen <- e.Action
				}
			}
			close(seen)
		}()
		// The watch is open once events has listed; give it a moment by
		// retrying the run until its events show.
		var got []string
		deadline := time.After(30 * time.Second)
		c.ok("run", "--rm", "--name", "ev", "busybox", "true")
		// A run shorter than the node's settling time is not reported
		// running: the end it ran to is (an Event of the followed run).
		for !containsAll(got, "create", "exited", "destroy") {
			select {
			case a, ok := <-seen:
				if !ok {
					t.Fatalf("events ended; saw %v", got)
				}
				got = append(got, a)
			case <-time.After(5 * time.Second):
				c.ok("run", "--rm", "--name", "ev", "busybox", "true")
			case <-deadline:
				t.Fatalf("events seen: %v", got)
			}
		}
	})

	t.Run("tty", func(t *testing.T) {
		c.t = t
		// berth run -it on a real terminal: the shell's output comes back,
		// and its exit code is berth's.
		ptmx, pts, err := openPTY()
		if err != nil {
			t.Skipf("no pty: %v", err)
		}
		defer ptmx.Close()
		cmd := exec.Command(berth, "run", "-it", "--rm", "busybox", "sh")
		cmd.Env = c.env
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pts.Close()
		var out uptest.Buffer
		go io.Copy(&out, ptmx)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// The shell's first prompt is shown, though it was written
		// before berth run attached.
		if !waitFor(&out, "# ", 20*time.Second) {
			t.Fatalf("no prompt; terminal shows %q", out.String())
		}
		ptmx.Write([]byte("echo tty-$((6*7))\r"))
		if !waitFor(&out, "tty-42", 10*time.Second) {
			t.Fatalf("no echo from the shell; terminal shows %q", out.String())
		}
		ptmx.Write([]byte("exit 5\r"))
		select {
		case <-done:
			if code := cmd.ProcessState.ExitCode(); code != 5 {
				t.Errorf("run -it exit code %d; terminal showed %q", code, out.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("run -it did not end; terminal showed %q", out.String())
		}
	})
}

func containsAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// openPTY opens a pseudo-terminal pair.
func openPTY() (*os.File, *os.File, error) {
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	unlock := 0
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, ptmx.Fd(), unix.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		ptmx.Close()
		return nil, nil, e
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		ptmx.Close()
		return nil, nil, err
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		ptmx.Close()
		return nil, nil, err
	}
	unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 80})
	return ptmx, pts, nil
}

func waitFor(b *uptest.Buffer, want string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(b.String(), want) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
