package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-dev/berth/internal/uptest"
)

// `berth up --listen unix:///PATH` serves the API on a socket of mode 0660
// in place of a stale one, as dockerd does on docker.sock; the CLI reaches
// it with BERTH_SERVER=unix:///PATH, and the socket goes when berth up stops.
func TestUpServesTheAPIOnAUnixSocket(t *testing.T) {
	berth, data := upData(t)

	// What a berth up that was killed leaves: a socket nobody listens on.
	sock := filepath.Join(t.TempDir(), "berth.sock")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	p := uptest.Start(t, uptest.Config{Berth: berth, Data: data, Node: "unixsock-test", Listen: "unix://" + sock,
		Args: []string{"--network", "none"}})
	if p.Addr != "unix://"+sock {
		t.Fatalf("berth up's API is at %q, want unix://%s", p.Addr, sock)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("API socket mode %v, want a socket of mode 0660", fi.Mode())
	}

	secret, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	c := &cli{t: t, berth: berth, env: append(os.Environ(), "BERTH_SERVER="+p.Addr, "BERTH_TOKEN="+strings.TrimSpace(string(secret)))}
	c.ok("run", "--rm", "--network", "none", "busybox", "true")
	c.ok("run", "--name", "done", "--network", "none", "busybox", "true")
	if out := c.ok("ps", "-a"); !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "\ndone ") {
		t.Errorf("ps -a lists:\n%s", out)
	}
	c.ok("rm", "done")
	if out := c.ok("ps", "-a", "-q"); out != "" {
		t.Errorf("after rm, ps -a -q lists %q", out)
	}

	p.Stop(t)
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("berth up stopped and left its socket: %v", err)
	}
}
