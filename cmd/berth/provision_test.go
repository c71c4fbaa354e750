package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/internal/uptest"
)

func TestParseSSHTargetAcceptsUserHostAndPort(t *testing.T) {
	for _, c := range []struct {
		in   string
		want sshTarget
		str  string
	}{
		{"ssh://root@10.0.0.5", sshTarget{user: "root", host: "10.0.0.5"}, "root@10.0.0.5"},
		{"ssh://deploy@node-1.example.com:2222", sshTarget{user: "deploy", host: "node-1.example.com", port: 2222}, "deploy@node-1.example.com:2222"},
		{"ssh://root@[fd00::5]:22/", sshTarget{user: "root", host: "fd00::5", port: 22}, "root@[fd00::5]:22"},
		{"ssh://host-only", sshTarget{host: "host-only"}, "host-only"},
	} {
		got, err := parseSSHTarget(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if got != c.want || got.String() != c.str {
			t.Errorf("%s: got %+v (%s), want %+v (%s)", c.in, got, got, c.want, c.str)
		}
	}
}

func TestParseSSHTargetRejectsWhatSSHWouldMisread(t *testing.T) {
	for in, why := range map[string]string{
		"root@10.0.0.5":                 "not an ssh:// URL",
		"https://root@10.0.0.5":         "not an ssh:// URL",
		"ssh://root:secret@10.0.0.5":    "passwords are not taken",
		"ssh://root@10.0.0.5/srv":       "no path",
		"ssh://root@":                   "no host",
		"ssh://-oProxyCommand=x@host":   "unusable characters",
		"ssh://root@-oProxyCommand=x":   "unusable characters",
		"ssh://root@10.0.0.5:0":         "port out of range",
		"ssh://root@10.0.0.5:70000":     "port out of range",
		"ssh://ro%27ot@10.0.0.5":        "unusable characters",
		"ssh://root@10.0.0.5?port=2222": "no path or query",
	} {
		_, err := parseSSHTarget(in)
		if err == nil || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), "ssh://USER@HOST[:PORT]") {
			t.Errorf("%s: got %v, want an error saying %q", in, err, why)
		}
	}
}

func validProvisionOptions() provisionOptions {
	return provisionOptions{joinURL: "https://10.0.0.1:7443", binDir: "/usr/local/bin", dataDir: "/var/lib/berth/agent", timeout: time.Minute}
}

func TestProvisionOptionsValidateNamesTheBadFlag(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*provisionOptions)
		want string
	}{
		{"no join URL", func(o *provisionOptions) { o.joinURL = "" }, "--join-url is required"},
		{"plain http join URL", func(o *provisionOptions) { o.joinURL = "http://10.0.0.1:7070" }, "--join-url"},
		{"join URL with a path", func(o *provisionOptions) { o.joinURL = "https://10.0.0.1:7443/v1" }, "--join-url"},
		{"bad node name", func(o *provisionOptions) { o.name = "Node_1" }, "--name"},
		{"relative bin dir", func(o *provisionOptions) { o.binDir = "bin" }, "--bin-dir"},
		{"data dir /", func(o *provisionOptions) { o.dataDir = "/" }, "--data-dir"},
		{"ssh option without =", func(o *provisionOptions) { o.sshOptions = []string{"StrictHostKeyChecking"} }, "--ssh-option"},
		{"agent flag provision sets", func(o *provisionOptions) { o.agentArgs = []string{"--token=x"} }, "provision's own"},
		{"agent flag with a newline", func(o *provisionOptions) { o.agentArgs = []string{"a\nb"} }, "newline"},
		{"zero timeout", func(o *provisionOptions) { o.timeout = 0 }, "--timeout"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := validProvisionOptions()
			c.mod(&o)
			if err := o.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error naming %q", err, c.want)
			}
		})
	}
	o := validProvisionOptions()
	o.binDir, o.name = "/opt/berth/bin/", "node-1"
	o.agentArgs = []string{"--network", "none"}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if o.binDir != "/opt/berth/bin" {
		t.Errorf("bin dir %q not cleaned", o.binDir)
	}
}

func TestSSHArgsNeverPromptAndLetTheUserOverrideDefaults(t *testing.T) {
	o := validProvisionOptions()
	o.target = sshTarget{user: "deploy", host: "h", port: 2222}
	o.identity = "/k/id"
	o.sshOptions = []string{"ConnectTimeout=3", "BatchMode=no"}
	got := strings.Join(sshArgs(o, "/tmp/s/c"), " ")
	want := "-o BatchMode=yes -o ControlPath=/tmp/s/c -o User=deploy -o Port=2222 -i /k/id -o ConnectTimeout=3 -o BatchMode=no -o ConnectTimeout=20 -o ServerAliveInterval=15"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if d := scpDest(sshTarget{host: "fd00::1"}, "/usr/bin/.s"); d != "[fd00::1]:/usr/bin/.s/" {
		t.Errorf("scp destination %s", d)
	}
}

func TestRemoteFactsDecideWhetherTheHostCanRunTheAgent(t *testing.T) {
	f, err := parseRemoteFacts("arch=x86_64\nhostname=web-1.example.com\nuid=1000\nsudo=yes\nsystemd=no\nsetsid=yes\n")
	if err != nil {
		t.Fatal(err)
	}
	want := remoteFacts{arch: "x86_64", hostname: "web-1.example.com", uid: 1000, sudo: true, setsid: true}
	if f != want {
		t.Fatalf("got %+v, want %+v", f, want)
	}
	if _, err := parseRemoteFacts("arch=x86_64\nuid=0\n"); err == nil || !strings.Contains(err.Error(), "no sudo") {
		t.Errorf("a truncated answer: %v", err)
	}
	if _, err := parseRemoteFacts("arch=x86_64\nuid=x\nsudo=no\nsystemd=no\nsetsid=no\n"); err == nil {
		t.Error("uid x accepted")
	}

	amd64 := []string{"x86_64"}
	for _, c := range []struct {
		name string
		f    remoteFacts
		want string
	}{
		{"root with systemd", remoteFacts{arch: "x86_64", systemd: true}, ""},
		{"sudo without systemd", remoteFacts{arch: "x86_64", uid: 1000, sudo: true, setsid: true}, ""},
		{"other machine", remoteFacts{arch: "aarch64", systemd: true}, "the host is aarch64, the executables are built for x86_64"},
		{"no sudo", remoteFacts{arch: "x86_64", uid: 1000, systemd: true}, "sudo -n"},
		{"no way to start", remoteFacts{arch: "x86_64"}, "neither a running systemd nor setsid"},
	} {
		err := checkFacts(c.f, amd64)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

func TestUnameMachinesOfELFHeaders(t *testing.T) {
	for _, c := range []struct {
		m     elf.Machine
		class elf.Class
		data  elf.Data
		want  string
	}{
		{elf.EM_X86_64, elf.ELFCLASS64, elf.ELFDATA2LSB, "x86_64"},
		{elf.EM_AARCH64, elf.ELFCLASS64, elf.ELFDATA2LSB, "aarch64"},
		{elf.EM_PPC64, elf.ELFCLASS64, elf.ELFDATA2LSB, "ppc64le"},
		{elf.EM_RISCV, elf.ELFCLASS64, elf.ELFDATA2LSB, "riscv64"},
		{elf.EM_S390, elf.ELFCLASS64, elf.ELFDATA2MSB, "s390x"},
	} {
		if got := unameMachines(c.m, c.class, c.data); got[0] != c.want {
			t.Errorf("%s: got %v, want %s", c.m, got, c.want)
		}
	}
	// This test binary is an ELF file of this machine.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ms, err := executablesMachine([]string{self, self})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("uname", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ms, strings.TrimSpace(string(out))) {
		t.Errorf("this test binary is for %v, uname -m says %s", ms, out)
	}
	notELF := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	if _, err := executablesMachine([]string{self, notELF}); err == nil || !strings.Contains(err.Error(), notELF) {
		t.Errorf("a shell script: %v", err)
	}
}

func TestNodeNameComesFromTheFlagOrTheHostName(t *testing.T) {
	for _, c := range []struct{ flag, host, want, err string }{
		{"n1", "whatever", "n1", ""},
		{"", "Web-1.example.com", "web-1", ""},
		{"", "db_primary", "", "give one with --name"},
		{"", "", "", "give one with --name"},
	} {
		got, err := provisionNodeName(c.flag, c.host)
		if got != c.want || (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("provisionNodeName(%q, %q) = %q, %v; want %q, %q", c.flag, c.host, got, err, c.want, c.err)
		}
	}
}

func TestSystemdUnitRunsTheAgentAloneAndQuotesItsArguments(t *testing.T) {
	o := validProvisionOptions()
	o.agentArgs = []string{"--listen", "0.0.0.0:7071", "--label", "rack=a 1", "--label", `zone="50%"`, "--env", "$HOME"}
	got := systemdUnit(agentArgv(o, "node-1"))
	golden := filepath.Join("testdata", "berth-agent.service")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		os.WriteFile(golden, []byte(got), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("unit differs from %s (UPDATE_GOLDEN=1 rewrites it):\n%s", golden, got)
	}
	for _, line := range []string{"Restart=always", "KillMode=process",
		"ExecStart=/usr/local/bin/berth agent --join https://10.0.0.1:7443 --token-file /var/lib/berth/agent/join-token --data-dir /var/lib/berth/agent --node-name node-1 "} {
		if !strings.Contains(got, line) {
			t.Errorf("unit lacks %q", line)
		}
	}
}

func TestSystemdQuote(t *testing.T) {
	for in, want := range map[string]string{
		"plain":        "plain",
		"a b":          `"a b"`,
		`say "hi"`:     `"say \"hi\""`,
		`back\slash`:   `"back\\slash"`,
		"100%":         "100%%",
		"$PATH":        "$$PATH",
		"":             `""`,
		"semi;colon":   `"semi;colon"`,
		"it's":         `"it's"`,
		"a b $X 5%ile": `"a b $$X 5%%ile"`,
	} {
		if got := systemdQuote(in); got != want {
			t.Errorf("systemdQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// The scripts provision runs on the host are checked by running them with
// the local shell against a directory standing in for the host's.
func TestScriptsRunUnderAPOSIXShell(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	o := validProvisionOptions()
	o.binDir, o.dataDir = filepath.Join(dir, "bin dir"), filepath.Join(dir, "data's")
	run := func(body string) string {
		t.Helper()
		_, script := privileged(remoteFacts{}, body)
		cmd := exec.Command("sh", "-s")
		cmd.Stdin = strings.NewReader(script)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s\nscript:\n%s", err, out, script)
		}
		return string(out)
	}
	// An interrupted provision's staging directory, two hours old, and
	// one of a provision that may be running now.
	stale, current := filepath.Join(o.binDir, ".berth-provision.stale1"), filepath.Join(o.binDir, ".berth-provision.current")
	for _, d := range []string{stale, current} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	stage := strings.TrimSpace(run(prepareScript(o, os.Getuid())))
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale staging directory kept: %v", err)
	}
	if _, err := os.Stat(current); err != nil {
		t.Errorf("recent staging directory removed: %v", err)
	}
	os.RemoveAll(current)
	if !strings.HasPrefix(stage, o.binDir+"/.berth-provision.") {
		t.Fatalf("staging directory %q", stage)
	}
	if fi, err := os.Stat(o.dataDir); err != nil || fi.Mode().Perm() != 0o711 {
		t.Fatalf("data dir: %v %v", fi, err)
	}
	for _, e := range provisionExecutables() {
		os.WriteFile(filepath.Join(stage, e), []byte("new "+e), 0o600)
	}
	os.WriteFile(filepath.Join(o.binDir, "berthd"), []byte("old"), 0o755)
	if os.Geteuid() == 0 {
		run(installScript(o, stage))
		for _, e := range provisionExecutables() {
			b, err := os.ReadFile(filepath.Join(o.binDir, e))
			fi, _ := os.Stat(filepath.Join(o.binDir, e))
			if err != nil || string(b) != "new "+e || fi.Mode().Perm() != 0o755 {
				t.Errorf("%s: %q %v %v", e, b, fi.Mode(), err)
			}
		}
		if _, err := os.Stat(stage); !os.IsNotExist(err) {
			t.Errorf("staging directory left: %v", err)
		}
	}

	secret := "bjt1-" + strings.Repeat("ab", 32) + "-$HOME`x`'\"%s"
	w, err := writeFileScript(joinTokenFile(o.dataDir), "0600", secret)
	if err != nil {
		t.Fatal(err)
	}
	run(w)
	b, err := os.ReadFile(joinTokenFile(o.dataDir))
	fi, _ := os.Stat(joinTokenFile(o.dataDir))
	if err != nil || string(b) != secret+"\n" || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %q %v %v", b, fi.Mode(), err)
	}
	if _, err := writeFileScript("/x", "0600", "a\nBERTH_PROVISION_EOF\nb"); err == nil {
		t.Error("content holding the end marker accepted")
	}
}

func TestNodeJoinedOnlyAfterAFreshRegistration(t *testing.T) {
	node := func(lease int64, phase string) *api.Node {
		return &api.Node{Status: api.NodeStatus{Lease: lease, Phase: phase}}
	}
	for _, c := range []struct {
		name   string
		before int64
		n      *api.Node
		want   bool
	}{
		{"new node ready", 0, node(7, api.NodeReady), true},
		{"same lease as before the restart", 7, node(7, api.NodeReady), false},
		{"re-registered", 7, node(9, api.NodeReady), true},
		{"registered, not ready", 0, node(9, api.NodeNotReady), false},
		{"no lease", 0, node(0, api.NodeReady), false},
	} {
		if got, why := nodeJoined(c.before, c.n); got != c.want {
			t.Errorf("%s: got %v (%s)", c.name, got, why)
		}
	}
}

// sshHost is an OpenSSH server the test runs on a loopback port, standing
// for a remote host: its user may log in with the test's key only.
type sshHost struct {
	port int
	user string
	// options make ssh use the test's key and trust the server's host key
	// and nothing else from the machine.
	options []string
	key     string
	log     *uptest.Buffer
}

// sudoUser is the unprivileged user of the test host that provisions
// through sudo; it exists only in the test sshd's mount namespace.
const sudoUser, sudoUID = "berthprov", 4242

// startSSHD runs Debian's sshd with its own host key, configuration and
// authorized key on a free loopback port, until the test ends. user is
// root, or sudoUser: then sshd runs in a mount namespace of its own whose
// /etc/passwd, group, shadow and sudoers add that user, allowed sudo
// without a password, and the machine's stay as they are.
func startSSHD(t *testing.T, user string) *sshHost {
	t.Helper()
	const sshd = "/usr/sbin/sshd"
	for _, tool := range []string{sshd, "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (hack/deps.sh installs openssh-server)", tool, err)
		}
	}
	// sshd reads the authorized keys as the user logging in.
	dir := testdir.World(t)
	var wrap []string
	if user != "root" {
		wrap = sudoHost(t, dir)
	}
	keygen := func(name string) string {
		p := filepath.Join(dir, name)
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "berth-provision-test", "-f", p).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
		return p
	}
	hostKey, userKey := keygen("host_key"), keygen("id_ed25519")
	pub, err := os.ReadFile(userKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	// The test host's root has a home of its own: bash reads its start-up
	// files for every ssh command, and this machine's root's are not the
	// test's business (nor quick).
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	// sshd's privilege separation directory, which the package's init
	// script would make at boot; it is shared and left in place.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	// A free port is only free until sshd binds it: try again if another
	// process took it in between.
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		cfg := filepath.Join(dir, "sshd_config")
		conf := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
Subsystem sftp internal-sftp
LogLevel VERBOSE
SetEnv HOME=%s
`, port, hostKey, filepath.Join(dir, "authorized_keys"), home)
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		knownHosts := filepath.Join(dir, "known_hosts")
		if err := os.WriteFile(knownHosts, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)), 0o600); err != nil {
			t.Fatal(err)
		}
		h := &sshHost{port: port, user: user, key: userKey, log: &uptest.Buffer{}, options: []string{
			"UserKnownHostsFile=" + knownHosts, "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes",
			"IdentitiesOnly=yes", "IdentityAgent=none"}}
		argv := append(append([]string(nil), wrap...), sshd, "-D", "-e", "-f", cfg)
		cmd := exec.Command(argv[0], argv[1:]...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		listening := make(chan bool, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			sc := bufio.NewScanner(stderr)
			said := false
			for sc.Scan() {
				fmt.Fprintln(h.log, sc.Text())
				if !said && strings.Contains(sc.Text(), fmt.Sprintf("Server listening on 127.0.0.1 port %d", port)) {
					listening <- true
					said = true
				}
			}
			if !said {
				listening <- false
			}
		}()
		t.Cleanup(func() {
			cmd.Process.Kill()
			// A connection's sshd (a session of its own) may hold the
			// log pipe a little longer; the test does not wait for it.
			select {
			case <-done:
			case <-time.After(5 * time.Second):
			}
			cmd.Wait()
			if t.Failed() {
				t.Logf("sshd's log:\n%s", h.log.String())
			}
		})
		select {
		case ok := <-listening:
			if ok {
				return h
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("sshd did not start: %s", h.log.String())
		}
		if attempt == 4 {
			t.Fatalf("sshd did not start: %s", h.log.String())
		}
	}
}

// sudoHost writes the test host's account files into dir/etc and returns
// the command that runs sshd with them mounted over the machine's, in a
// mount namespace of its own.
func sudoHost(t *testing.T, dir string) []string {
	t.Helper()
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Fatalf("sudo: %v (hack/deps.sh installs it)", err)
	}
	etc := filepath.Join(dir, "etc")
	if err := os.Mkdir(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	add := map[string]string{
		"passwd": fmt.Sprintf("%s:x:%d:%d:Berth provision test:/:/bin/sh\n", sudoUser, sudoUID, sudoUID),
		"group":  fmt.Sprintf("%s:x:%d:\n", sudoUser, sudoUID),
		// "*": no password, yet not locked, so a key may log in.
		"shadow": sudoUser + ":*:19000:0:99999:7:::\n",
	}
	for name, line := range add {
		b, err := os.ReadFile(filepath.Join("/etc", name))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join("/etc", name))
		if err := os.WriteFile(filepath.Join(etc, name), append(b, line...), fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	sudoers := fmt.Sprintf("root ALL=(ALL:ALL) ALL\n%s ALL=(ALL:ALL) NOPASSWD: ALL\n", sudoUser)
	if err := os.WriteFile(filepath.Join(etc, "sudoers"), []byte(sudoers), 0o440); err != nil {
		t.Fatal(err)
	}
	return []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`for f in passwd group shadow sudoers; do mount --bind "$0/$f" /etc/$f || exit 1; done; exec "$@"`, etc}
}

// provisionArgs are the flags that point berth node provision at h.
func (h *sshHost) provisionArgs() []string {
	args := []string{"ssh://" + h.user + "@127.0.0.1:" + strconv.Itoa(h.port), "-i", h.key}
	for _, o := range h.options {
		args = append(args, "--ssh-option", o)
	}
	return args
}

// berthBin is the directory of the executables hack/build.sh built, which
// provision copies; tests that run them need root.
func provisionBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth, berthd, berth-runtime and berth-init there")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs sshd, and the agent")
	}
	return bin
}

// A provision that cannot go on says which step failed on which host, and
// leaves nothing on the host.
func TestProvisionNamesTheStepAndHostThatFailed(t *testing.T) {
	bin := provisionBin(t)
	h := startSSHD(t, "root")
	remote := t.TempDir()
	binDir, dataDir := filepath.Join(remote, "bin"), filepath.Join(remote, "data")
	provision := func(args ...string) string {
		t.Helper()
		all := append([]string{"node", "provision"}, h.provisionArgs()...)
		all = append(all, "--join-url", "https://127.0.0.1:1", "--server", "http://127.0.0.1:1", "--token", "system.admin.x",
			"--bin-dir", binDir, "--data-dir", dataDir, "--timeout", "5s")
		cmd := exec.Command(filepath.Join(bin, "berth"), append(all, args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("provision %v succeeded: %s", args, out)
		}
		t.Logf("provision %v: %s", args, out)
		return string(out)
	}
	host := fmt.Sprintf("provision root@127.0.0.1:%d: ", h.port)

	// A key the host does not know.
	other := filepath.Join(t.TempDir(), "other")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	out := provision("-i", other)
	if !strings.Contains(out, host+"connect: ") || !strings.Contains(out, "Permission denied") {
		t.Errorf("with an unknown key: %s", out)
	}
	// The host is fine, the API is not there.
	out = provision("--name", "n1")
	if !strings.Contains(out, host+"read node n1 from the API: ") {
		t.Errorf("without an API: %s", out)
	}
	if _, err := os.Stat(binDir); !os.IsNotExist(err) {
		t.Errorf("a failed provision made %s: %v", binDir, err)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("a failed provision made %s: %v", dataDir, err)
	}
}

// An agent that cannot start is reported with the end of its log.
func TestProvisionShowsTheLogOfAnAgentThatDidNotJoin(t *testing.T) {
	bin := provisionBin(t)
	h := startSSHD(t, "root")
	cp := startProvisionServer(t, bin)
	remote := t.TempDir()
	binDir, dataDir := filepath.Join(remote, "bin"), filepath.Join(remote, "data")
	t.Cleanup(func() { stopProvisionedAgents(dataDir) })
	args := append([]string{"node", "provision"}, h.provisionArgs()...)
	args = append(args, "--join-url", cp.join, "--server", cp.api, "--token", cp.secret, "--name", "broken",
		"--bin-dir", binDir, "--data-dir", dataDir, "--timeout", "60s", "--", "--network", "none", "--address", "no-such-address")
	out, err := exec.Command(filepath.Join(bin, "berth"), args...).CombinedOutput()
	t.Logf("provision: %s", out)
	if err == nil {
		t.Fatal("provision of an agent that cannot start succeeded")
	}
	host := fmt.Sprintf("provision root@127.0.0.1:%d: wait for node broken to join: the agent exited; ", h.port)
	if !strings.Contains(string(out), host) || !strings.Contains(string(out), "no-such-address") {
		t.Errorf("the error does not name the step, the host and the agent's complaint: %s", out)
	}
}

// provisionServer is a `berth server` the test runs on loopback.
type provisionServer struct {
	api, join string // the plain API's URL, the agents' TLS URL
	admin     *api.Client
	secret    string
}

// startServer runs `berth server` with its API and TLS API on free
// loopback ports and an embedded etcd of its own, until the test ends.
func startProvisionServer(t *testing.T, bin string) *provisionServer {
	t.Helper()
	data := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "berth"), "server", "--data-dir", data, "--listen", "127.0.0.1:0",
		"--tls-listen", "127.0.0.1:0", "--etcd-listen=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	log := &uptest.Buffer{}
	addrs := make(chan [2]string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		var plain, tls string
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(log, l)
			addr := ""
			for _, f := range strings.Fields(l) {
				if v, ok := strings.CutPrefix(f, "addr="); ok {
					addr = v
				}
			}
			switch {
			case strings.Contains(l, `msg="serving the API over TLS"`):
				tls = addr
			case strings.Contains(l, `msg="serving the API"`):
				plain = addr
			}
			if plain != "" && tls != "" {
				addrs <- [2]string{plain, tls}
				plain = ""
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		cmd.Wait()
		if t.Failed() {
			t.Logf("berth server's log:\n%s", log.String())
		}
	})
	var cp provisionServer
	select {
	case a := <-addrs:
		cp.api, cp.join = "http://"+a[0], "https://"+a[1]
	case <-done:
		t.Fatalf("berth server ended: %s", log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("berth server did not start: %s", log.String())
	}
	b, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	cp.secret = strings.TrimSpace(string(b))
	cp.admin = api.NewClient(cp.api, cp.secret, nil)
	return &cp
}

// stopAgents ends the agent processes an agent data directory belongs to
// (found by the directory on their command line, as the pid file may not
// be there), and whatever containers they left.
func stopProvisionedAgents(dataDir string) {
	var pids []int
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err == nil && slices.Contains(strings.Split(string(b), "\x00"), dataDir) && slices.Contains(strings.Split(string(b), "\x00"), "agent") {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(m))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	for _, pid := range pids {
		for i := 0; i < 100 && alivePid(pid); i++ {
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	uptest.KillContainers(filepath.Join(dataDir, "agent"))
}

// processAlive is false for a process that is gone or a zombie.
func alivePid(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// provisionedAgent is the agent provision started detached: its pid from
// the pid file, checked against its command line.
func provisionedAgent(t *testing.T, dataDir string) (pid int, cmdline []string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "agent.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("agent.pid: %v", err)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !alivePid(pid) {
		t.Fatalf("agent %d is not running: %v", pid, err)
	}
	return pid, strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
}

// `berth node provision` copies the executables to a host over SSH,
// starts the agent there (detached: the host runs no systemd) and returns
// once the node has joined and is ready; provisioning again replaces the
// executables and restarts the agent.
func TestProvisionInstallsAndJoinsAnAgentOverSSH(t *testing.T) {
	bin := provisionBin(t)
	h := startSSHD(t, "root")
	cp := startProvisionServer(t, bin)
	// The host's agent data directory holds a busybox image already, so
	// that a container can run there; it and the executables are where
	// the containers' unprivileged uids reach them.
	dataDir := uptest.BusyboxData(t, filepath.Join(bin, "berth"))
	binDir := filepath.Join(filepath.Dir(dataDir), "usr", "bin")
	// Cleanups run last first: the agents stop, then their containers go,
	// then the directories.
	t.Cleanup(func() { uptest.RemoveContainers(t, bin, dataDir) })
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dataDir, "agent.log"))
			t.Logf("the agent's log:\n%s", b)
		}
		stopProvisionedAgents(dataDir)
	})
	name := "prov-" + strconv.Itoa(os.Getpid())
	provision := func() (stdout, stderr string) {
		t.Helper()
		args := append([]string{"node", "provision"}, h.provisionArgs()...)
		args = append(args, "--join-url", cp.join, "--server", cp.api, "--token", cp.secret, "--name", name,
			"--bin-dir", binDir, "--data-dir", dataDir, "--timeout", "60s", "--", "--network", "none", "--listen", "127.0.0.1:0")
		cmd := exec.Command(filepath.Join(bin, "berth"), args...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("provision: %v\n%s%s", err, o.String(), e.String())
		}
		t.Logf("provision (%s): %s%s", time.Since(start).Round(time.Millisecond), o.String(), e.String())
		return o.String(), e.String()
	}
	ctx := t.Context()
	ready := func() *api.Node {
		t.Helper()
		n := &api.Node{}
		if err := cp.admin.Get(ctx, "", name, n); err != nil {
			t.Fatal(err)
		}
		if n.Status.Phase != api.NodeReady {
			t.Fatalf("node %s is %q after provision", name, n.Status.Phase)
		}
		return n
	}

	out, errOut := provision()
	if out != name+"\n" {
		t.Errorf("provision printed %q, want the node's name", out)
	}
	if !strings.Contains(errOut, "no systemd runs the host: started the agent detached") {
		t.Errorf("provision did not say the agent runs without systemd: %s", errOut)
	}
	first := ready()
	pid, cmdline := provisionedAgent(t, dataDir)
	want := []string{filepath.Join(binDir, "berthd"), "agent", "--join", cp.join, "--token-file", filepath.Join(dataDir, "join-token"),
		"--data-dir", dataDir, "--node-name", name, "--network", "none", "--listen", "127.0.0.1:0"}
	if !slices.Equal(cmdline, want) {
		t.Errorf("agent command line %q, want %q", cmdline, want)
	}
	token, err := os.ReadFile(filepath.Join(dataDir, "join-token"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := api.ParseJoinToken(string(token)); err != nil {
		t.Errorf("join token file: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "join-token")); err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("join token file is not root's alone: %v %v", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "pki", "node.pem")); err != nil {
		t.Errorf("the agent has no node certificate: %v", err)
	}
	inodes := map[string]uint64{}
	for _, e := range provisionExecutables() {
		got, err := os.ReadFile(filepath.Join(binDir, e))
		if err != nil {
			t.Fatal(err)
		}
		src, err := os.ReadFile(filepath.Join(bin, e))
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(binDir, e))
		if !bytes.Equal(got, src) || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s on the host differs from %s (mode %v)", e, filepath.Join(bin, e), fi.Mode())
		}
		inodes[e] = fi.Sys().(*syscall.Stat_t).Ino
	}
	if left, _ := filepath.Glob(filepath.Join(binDir, ".berth-provision.*")); len(left) != 0 {
		t.Errorf("staging directories left: %v", left)
	}

	// The node runs containers, and they outlive the agent's restart.
	if err := cp.admin.Create(ctx, &api.Tenant{Meta: api.Meta{Name: "t1"}}); err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("berth-provision-test-%d", os.Getpid())
	svc := &api.Service{Meta: api.Meta{Name: "app", Tenant: "t1"}, Spec: api.ServiceSpec{Replicas: 1, Template: api.Template{
		Image: "busybox", Command: []string{"sh", "-c", "sleep 1000; echo " + mark}}}}
	if err := cp.admin.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	running := func() error {
		l, err := api.ListOf[*api.Instance](ctx, cp.admin, "t1", "")
		if err != nil {
			return err
		}
		if len(l.Items) != 1 || l.Items[0].Spec.Node != name || l.Items[0].Status.Phase != api.PhaseRunning || l.Items[0].Status.Restarts != 0 {
			var st []string
			for _, in := range l.Items {
				st = append(st, fmt.Sprintf("%s on %q: %s %s", in.Name, in.Spec.Node, in.Status.Phase, in.Status.Reason))
			}
			return fmt.Errorf("instances: %v", st)
		}
		return nil
	}
	poll(t, "the service's instance to run on "+name, 60*time.Second, running)
	// Running is reported as the container starts; its command may
	// follow a moment later.
	var workload int
	poll(t, "the workload among the host's processes", 30*time.Second, func() error {
		if workload = pidOf(mark); workload == 0 {
			return errors.New("not there")
		}
		return nil
	})

	// Again: the same host, the same node, a new agent.
	out, _ = provision()
	if out != name+"\n" {
		t.Errorf("second provision printed %q", out)
	}
	second := ready()
	if second.Status.Lease == first.Status.Lease {
		t.Errorf("the node kept lease %x: its agent did not register again", first.Status.Lease)
	}
	if alivePid(pid) {
		t.Errorf("the first agent (pid %d) still runs", pid)
	}
	if !alivePid(workload) {
		t.Errorf("the workload (pid %d) ended with the agent", workload)
	}
	poll(t, "the new agent to adopt the instance", 30*time.Second, func() error {
		if err := running(); err != nil {
			return err
		}
		if got := pidOf(mark); got != workload {
			return fmt.Errorf("workload pid %d, was %d", got, workload)
		}
		return nil
	})
	if pid2, _ := provisionedAgent(t, dataDir); pid2 == pid {
		t.Errorf("the agent was not restarted (pid %d)", pid)
	}
	for _, e := range provisionExecutables() {
		fi, err := os.Stat(filepath.Join(binDir, e))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Sys().(*syscall.Stat_t).Ino == inodes[e] {
			t.Errorf("%s was not replaced by a new file", e)
		}
	}
	l, err := api.ListOf[*api.Node](ctx, cp.admin, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Items) != 1 {
		t.Errorf("nodes after two provisions of one host: %d", len(l.Items))
	}
}

// systemd itself reads the unit: its syntax and quoting are what systemd
// accepts, not only what the golden file says.
func TestSystemdAcceptsTheUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze: %v (hack/deps.sh installs systemd)", err)
	}
	dir := t.TempDir()
	o := validProvisionOptions()
	o.binDir, o.dataDir = filepath.Join(dir, "bin"), filepath.Join(dir, "data dir")
	o.agentArgs = []string{"--label", "rack=a 1", "--label", `zone="50%"`}
	os.MkdirAll(o.binDir, 0o755)
	if err := os.WriteFile(filepath.Join(o.binDir, "berth"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, agentUnit)
	if err := os.WriteFile(unit, []byte(systemdUnit(agentArgv(o, "node-1"))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("systemd-analyze verify: %v: %s", err, out)
	}
}

func TestProvisionIsCompletedUnderNode(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"node", ""}, "provision\tInstall the agent on a host over SSH"},
		// The scheme, no space after it (cobra's directive 2).
		{[]string{"node", "provision", ""}, "ssh://\n:2\n"},
		// A key is a file: the shell's own completion (directive 0).
		{[]string{"node", "provision", "-i", ""}, ":0\n"},
	} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(io.Discard)
		root.SetArgs(append([]string{"__complete"}, c.args...))
		if err := root.Execute(); err != nil {
			t.Fatal(err)
		}
		if got := out.String(); !strings.HasPrefix(got, c.want) && !strings.Contains(got, "\n"+c.want) {
			t.Errorf("completing %q: %q lacks %q", c.args, got, c.want)
		}
	}
}

func TestPrivilegedScriptsRunAsRootOrThroughSudo(t *testing.T) {
	if cmd, _ := privileged(remoteFacts{uid: 0}, "true\n"); cmd != "sh -s" {
		t.Errorf("as root: %q", cmd)
	}
	if cmd, _ := privileged(remoteFacts{uid: 1000, sudo: true}, "true\n"); cmd != "sudo -n sh -s" {
		t.Errorf("as a sudoer: %q", cmd)
	}
}

// Both ways of starting the agent are scripts a POSIX shell parses; the
// token goes into a here-document, never onto a command line.
func TestStartScriptsParse(t *testing.T) {
	o := validProvisionOptions()
	o.dataDir = "/var/lib/berth's agent"
	o.agentArgs = []string{"--label", "rack=a 1"}
	token := "bjt1-" + strings.Repeat("0f", 32) + "-system.join-1.secret"
	for _, f := range []remoteFacts{{systemd: true}, {setsid: true}} {
		body, err := startScript(o, f, "node-1", token)
		if err != nil {
			t.Fatal(err)
		}
		_, script := privileged(f, body)
		cmd := exec.Command("sh", "-n")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("systemd=%v: sh -n: %v: %s\n%s", f.systemd, err, out, script)
		}
		for _, line := range strings.Split(script, "\n") {
			if strings.Contains(line, token) && line != token {
				t.Errorf("systemd=%v: the token is on a command line: %s", f.systemd, line)
			}
		}
		if f.systemd && !strings.Contains(script, "systemctl restart "+agentUnit) {
			t.Errorf("the systemd script does not restart the unit:\n%s", script)
		}
	}
}

// A user who is not root provisions through sudo -n: the executables, the
// token and the agent are root's all the same.
func TestProvisionThroughSudo(t *testing.T) {
	bin := provisionBin(t)
	h := startSSHD(t, sudoUser)
	cp := startProvisionServer(t, bin)
	// Where the SSH user's scp reaches the staging directory.
	remote := testdir.World(t)
	binDir, dataDir := filepath.Join(remote, "bin"), filepath.Join(remote, "data")
	t.Cleanup(func() { stopProvisionedAgents(dataDir) })
	args := append([]string{"node", "provision"}, h.provisionArgs()...)
	args = append(args, "--join-url", cp.join, "--server", cp.api, "--token", cp.secret, "--name", "through-sudo",
		"--bin-dir", binDir, "--data-dir", dataDir, "--timeout", "60s", "--", "--network", "none", "--listen", "127.0.0.1:0")
	out, err := exec.Command(filepath.Join(bin, "berth"), args...).CombinedOutput()
	t.Logf("provision: %s", out)
	if err != nil {
		t.Fatalf("provision as %s: %v", sudoUser, err)
	}
	if !strings.Contains(h.log.String(), "Accepted publickey for "+sudoUser) {
		t.Errorf("sshd did not let %s in:\n%s", sudoUser, h.log.String())
	}
	for _, p := range []string{filepath.Join(binDir, "berthd"), filepath.Join(dataDir, "join-token"), filepath.Join(dataDir, "pki", "node.pem")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s belongs to uid %d, not root", p, fi.Sys().(*syscall.Stat_t).Uid)
		}
	}
	if pid, _ := provisionedAgent(t, dataDir); pid == 0 {
		t.Error("no agent")
	}
	n := &api.Node{}
	if err := cp.admin.Get(t.Context(), "", "through-sudo", n); err != nil || n.Status.Phase != api.NodeReady {
		t.Errorf("node through-sudo: %v %q", err, n.Status.Phase)
	}
}
