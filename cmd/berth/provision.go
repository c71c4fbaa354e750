package main

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/internal/sibling"
	"github.com/spf13/cobra"
)

// `berth node provision` does for a remote host what Docker Machine did:
// it copies Berth's executables over SSH, installs the agent as a systemd
// unit and waits until the node has joined. It drives the system's ssh and
// scp rather than an SSH library: the CLI stays lean, and the user's
// ssh_config, keys and agent apply as they do to any other ssh command.

// provisionExecutables are what a node runs: the agent is `berth agent`,
// which hands over to berthd, which runs berth-runtime and berth-init.
func provisionExecutables() []string {
	return []string{"berth", "berthd", "berth-runtime", "berth-init"}
}

// agentUnit is the systemd unit provision installs.
const agentUnit = "berth-agent.service"

// provisionOptions is everything one provision needs, from flags.
type provisionOptions struct {
	target     sshTarget
	joinURL    string
	name       string
	identity   string
	sshOptions []string
	binDir     string
	dataDir    string
	agentArgs  []string
	timeout    time.Duration
}

func newNodeProvisionCmd(af *apiFlags) *cobra.Command {
	var o provisionOptions
	cmd := &cobra.Command{
		Use:   "provision ssh://USER@HOST[:PORT] --join-url https://SERVER:PORT [flags] [-- AGENT FLAGS...]",
		Short: "Install the agent on a host over SSH and join it to this cluster",
		Long: `Install the agent on a host over SSH and join it to this cluster.
Copies berth, berthd, berth-runtime and berth-init (the ones beside this berth) to --bin-dir,
writes a join token minted through the API to a root-only file in --data-dir, installs and
starts the systemd unit ` + agentUnit + ` (or, on a host without a running systemd, starts
the agent detached with its log and pid file in --data-dir), then waits until the node is
ready and prints its name. Provisioning a host again replaces the executables and restarts
the agent; its containers keep running. ssh runs with BatchMode=yes: keys come from -i, the
ssh agent or ssh_config, never a prompt. The SSH user is root or may run sudo -n.
Flags after -- are passed to the agent (--address, --listen, --network ...).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash == 0 || dash > 1 || (dash < 0 && len(args) > 1) {
				return fmt.Errorf("want one host, then -- and agent flags; got %q", args)
			}
			t, err := parseSSHTarget(args[0])
			if err != nil {
				return err
			}
			o.target = t
			if dash == 1 {
				o.agentArgs = args[1:]
			}
			if err := o.validate(); err != nil {
				return err
			}
			p := &provisioner{opts: o, api: af.client(), stderr: cmd.ErrOrStderr()}
			name, err := p.run(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), name)
			return nil
		},
	}
	// The host is typed, not chosen: completion offers the scheme only.
	cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 && !strings.HasPrefix(toComplete, "ssh://") {
			return []string{"ssh://"}, cobra.ShellCompDirectiveNoSpace
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	f := cmd.Flags()
	f.StringVar(&o.joinURL, "join-url", "", "the control plane's agent URL, https://SERVER:PORT (required)")
	f.StringVar(&o.name, "name", "", "the node's name (default: the host's name)")
	f.StringVarP(&o.identity, "identity", "i", "", "SSH private key file")
	f.StringArrayVar(&o.sshOptions, "ssh-option", nil, "an ssh option, KEY=VALUE (ssh -o); repeatable")
	f.StringVar(&o.binDir, "bin-dir", "/usr/local/bin", "where the executables go on the host")
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/berth/agent", "the agent's data directory on the host")
	f.DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long to wait for the node to become ready")
	_ = cmd.MarkFlagFilename("identity")
	_ = cmd.MarkFlagDirname("bin-dir")
	_ = cmd.MarkFlagDirname("data-dir")
	return cmd
}

// validate checks the flags before anything touches the host.
func (o *provisionOptions) validate() error {
	u, err := url.Parse(o.joinURL)
	switch {
	case o.joinURL == "":
		return errors.New("--join-url is required: the control plane's https://SERVER:PORT as agents reach it")
	case err != nil:
		return fmt.Errorf("--join-url %q: %w", o.joinURL, err)
	case u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil:
		return fmt.Errorf("--join-url %q: want https://SERVER:PORT", o.joinURL)
	}
	if o.name != "" {
		if err := api.ValidName(o.name); err != nil {
			return fmt.Errorf("--name: %w", err)
		}
	}
	for _, d := range []struct{ flag, dir string }{{"--bin-dir", o.binDir}, {"--data-dir", o.dataDir}} {
		if !path.IsAbs(d.dir) || path.Clean(d.dir) == "/" || strings.ContainsAny(d.dir, "\n\x00") {
			return fmt.Errorf("%s %q: want an absolute directory other than /", d.flag, d.dir)
		}
	}
	o.binDir, o.dataDir = path.Clean(o.binDir), path.Clean(o.dataDir)
	for _, kv := range o.sshOptions {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return fmt.Errorf("--ssh-option %q: want KEY=VALUE", kv)
		}
	}
	for _, a := range o.agentArgs {
		if strings.ContainsAny(a, "\n\x00") {
			return fmt.Errorf("agent flag %q: a newline or NUL cannot go into a systemd unit", a)
		}
		if f, _, _ := strings.Cut(a, "="); f == "--join" || f == "--token" || f == "--token-file" || f == "--data-dir" || f == "--node-name" {
			return fmt.Errorf("agent flag %s is provision's own (see --join-url, --data-dir, --name)", f)
		}
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", o.timeout)
	}
	return nil
}

// sshTarget is a host to provision, from ssh://USER@HOST[:PORT].
type sshTarget struct {
	user, host string
	port       int // 0: ssh's default (or ssh_config's)
}

func (t sshTarget) String() string {
	s := t.host
	if strings.Contains(s, ":") {
		s = "[" + s + "]"
	}
	if t.user != "" {
		s = t.user + "@" + s
	}
	if t.port != 0 {
		s += ":" + strconv.Itoa(t.port)
	}
	return s
}

func parseSSHTarget(s string) (sshTarget, error) {
	bad := func(why string) (sshTarget, error) {
		return sshTarget{}, fmt.Errorf("host %q: %s (want ssh://USER@HOST[:PORT])", s, why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad(err.Error())
	}
	if u.Scheme != "ssh" {
		return bad("not an ssh:// URL")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return bad("a host takes no path or query")
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		return bad("passwords are not taken: use a key (-i, the ssh agent or ssh_config)")
	}
	t := sshTarget{user: u.User.Username(), host: u.Hostname()}
	if t.host == "" {
		return bad("no host")
	}
	// Anything ssh could read as an option or that a shell would split.
	if strings.HasPrefix(t.host, "-") || strings.HasPrefix(t.user, "-") || strings.ContainsAny(t.host+t.user, " \t\n'\"\\;`$") {
		return bad("unusable characters in user or host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("port out of range")
		}
		t.port = n
	}
	return t, nil
}

// sshArgs are the options every ssh and scp invocation shares. BatchMode
// and the control socket of provision's one connection come first so that
// no ssh_config or --ssh-option can make ssh prompt or connect on its own
// (ssh keeps the first value it is given for an option); the user's
// options come before the defaults so that they win over those.
func sshArgs(o provisionOptions, controlPath string) []string {
	args := []string{"-o", "BatchMode=yes"}
	if controlPath != "" {
		args = append(args, "-o", "ControlPath="+controlPath)
	}
	if o.target.user != "" {
		args = append(args, "-o", "User="+o.target.user)
	}
	if o.target.port != 0 {
		args = append(args, "-o", "Port="+strconv.Itoa(o.target.port))
	}
	if o.identity != "" {
		args = append(args, "-i", o.identity)
	}
	for _, kv := range o.sshOptions {
		args = append(args, "-o", kv)
	}
	return append(args, "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15")
}

// scpDest is the scp destination for directory dir on the target host.
func scpDest(t sshTarget, dir string) string {
	h := t.host
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return h + ":" + dir + "/"
}

// remoteFacts is what the check step learns about the host.
type remoteFacts struct {
	arch     string // uname -m
	hostname string
	uid      int
	sudo     bool // sudo -n works
	systemd  bool // systemd is PID 1 and systemctl is there
	setsid   bool
}

// remoteCheckScript prints one key=value a line; it changes nothing.
const remoteCheckScript = `echo "arch=$(uname -m)"
echo "hostname=$(uname -n)"
echo "uid=$(id -u)"
if [ "$(id -u)" != 0 ] && sudo -n true </dev/null >/dev/null 2>&1; then echo sudo=yes; else echo sudo=no; fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then echo systemd=yes; else echo systemd=no; fi
if command -v setsid >/dev/null 2>&1; then echo setsid=yes; else echo setsid=no; fi
`

func parseRemoteFacts(out string) (remoteFacts, error) {
	var f remoteFacts
	seen := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		seen[k] = true
		switch k {
		case "arch":
			f.arch = v
		case "hostname":
			f.hostname = v
		case "uid":
			n, err := strconv.Atoi(v)
			if err != nil {
				return f, fmt.Errorf("uid %q: not a number", v)
			}
			f.uid = n
		case "sudo":
			f.sudo = v == "yes"
		case "systemd":
			f.systemd = v == "yes"
		case "setsid":
			f.setsid = v == "yes"
		}
	}
	for _, k := range []string{"arch", "uid", "sudo", "systemd", "setsid"} {
		if !seen[k] {
			return f, fmt.Errorf("no %s in the host's answer %q", k, out)
		}
	}
	return f, nil
}

// checkFacts decides whether the host can run executables built for
// machine (uname -m names) with the privileges provision needs.
func checkFacts(f remoteFacts, machines []string) error {
	archOK := false
	for _, m := range machines {
		archOK = archOK || m == f.arch
	}
	if !archOK {
		return fmt.Errorf("the host is %s, the executables are built for %s", f.arch, strings.Join(machines, "/"))
	}
	if f.uid != 0 && !f.sudo {
		return fmt.Errorf("user with uid %d is not root and may not run sudo -n (without a password)", f.uid)
	}
	if !f.systemd && !f.setsid {
		return errors.New("the host has neither a running systemd nor setsid to start the agent with")
	}
	return nil
}

// unameMachines are the `uname -m` names of the machines an ELF file's
// header may name.
func unameMachines(m elf.Machine, class elf.Class, order elf.Data) []string {
	switch {
	case m == elf.EM_X86_64:
		return []string{"x86_64"}
	case m == elf.EM_386:
		return []string{"i386", "i486", "i586", "i686"}
	case m == elf.EM_AARCH64:
		return []string{"aarch64", "arm64"}
	case m == elf.EM_ARM:
		return []string{"armv6l", "armv7l", "armv8l"}
	case m == elf.EM_RISCV && class == elf.ELFCLASS64:
		return []string{"riscv64"}
	case m == elf.EM_PPC64 && order == elf.ELFDATA2LSB:
		return []string{"ppc64le"}
	case m == elf.EM_PPC64:
		return []string{"ppc64"}
	case m == elf.EM_S390:
		return []string{"s390x"}
	case m == elf.EM_LOONGARCH:
		return []string{"loongarch64"}
	}
	return []string{m.String()}
}

// executablesMachine reads the machine the executables are built for from
// their ELF headers, and insists they agree.
func executablesMachine(paths []string) ([]string, error) {
	var first []string
	for _, p := range paths {
		f, err := elf.Open(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		ms := unameMachines(f.Machine, f.Class, f.Data)
		f.Close()
		if first == nil {
			first = ms
		} else if ms[0] != first[0] {
			return nil, fmt.Errorf("%s is built for %s, %s for %s", p, ms[0], paths[0], first[0])
		}
	}
	return first, nil
}

// provisionNodeName is the name the node joins with: --name, else the host's name
// as far as it is a valid object name.
func provisionNodeName(flag, hostname string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	n := strings.ToLower(hostname)
	if i := strings.IndexByte(n, '.'); i > 0 {
		n = n[:i]
	}
	if err := api.ValidName(n); err != nil {
		return "", fmt.Errorf("the host's name %q is not a node name (%v): give one with --name", hostname, err)
	}
	return n, nil
}

// joinTokenFile is where the join token is kept on the host: a file, so that
// the token never shows in ps.
func joinTokenFile(dataDir string) string { return dataDir + "/join-token" }

// agentArgv is the agent's command line on the host.
func agentArgv(o provisionOptions, name string) []string {
	argv := []string{o.binDir + "/berth", "agent", "--join", o.joinURL, "--token-file", joinTokenFile(o.dataDir),
		"--data-dir", o.dataDir, "--node-name", name}
	return append(argv, o.agentArgs...)
}

// systemdUnit is the agent's unit file. KillMode=process: stopping or
// restarting the unit signals the agent alone, never what it started, so
// containers outlive it as they outlive any agent restart.
func systemdUnit(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = systemdQuote(a)
	}
	return `[Unit]
Description=Berth node agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=` + strings.Join(quoted, " ") + `
Restart=always
RestartSec=2
KillMode=process
LimitNOFILE=1048576
TasksMax=infinity

[Install]
WantedBy=multi-user.target
`
}

// systemdQuote makes one ExecStart word: systemd splits on spaces, takes
// C-style escapes in double quotes, and expands % specifiers and $
// variables everywhere.
func systemdQuote(s string) string {
	s = strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
	if s != "" && !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// posixQuote quotes s for a POSIX shell.
func posixQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// posixWords quotes a command line for a POSIX shell.
func posixWords(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = posixQuote(a)
	}
	return strings.Join(q, " ")
}

// privileged wraps a script so that it runs as root from stdin: the
// remote command line holds no secrets and no quoting of ours. The body is
// one function, parsed whole before it runs, so nothing it runs can read
// the rest of the script from stdin.
func privileged(f remoteFacts, body string) (command, script string) {
	command = "sh -s"
	if f.uid != 0 {
		command = "sudo -n sh -s"
	}
	return command, "set -eu\nmain() {\n" + body + "}\nmain </dev/null\n"
}

// prepareScript makes the directories and a staging directory inside
// bin-dir (so that the final move is a rename on one file system), owned
// by the SSH user for scp to write into, and prints its path. Staging
// directories an interrupted provision left over an hour ago go.
func prepareScript(o provisionOptions, uid int) string {
	return fmt.Sprintf(`mkdir -p %[1]s
mkdir -p -m 0711 %[2]s
find %[1]s -maxdepth 1 -type d -name '.berth-provision.*' -mmin +60 -exec rm -rf {} +
stage=$(mktemp -d %[1]s/.berth-provision.XXXXXX)
chown %[3]d "$stage"
echo "$stage"
`, posixQuote(o.binDir), posixQuote(o.dataDir), uid)
}

// installScript moves each staged executable over the installed one by
// rename: a running agent keeps its old file, a new start finds the new.
func installScript(o provisionOptions, stage string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "stage=%s\n", posixQuote(stage))
	for _, e := range provisionExecutables() {
		fmt.Fprintf(&b, "chown 0:0 \"$stage\"/%[1]s\nchmod 0755 \"$stage\"/%[1]s\nmv -f \"$stage\"/%[1]s %[2]s/%[1]s\n", e, posixQuote(o.binDir))
	}
	b.WriteString("rmdir \"$stage\"\n")
	return b.String()
}

// writeFileScript writes content to path atomically with mode. content
// comes from a quoted here-document: the shell expands nothing in it.
func writeFileScript(path, mode, content string) (string, error) {
	const eof = "BERTH_PROVISION_EOF"
	if strings.Contains(content, eof) {
		return "", fmt.Errorf("%s: content holds the here-document's end marker", path)
	}
	if !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	tmp := posixQuote(path + ".provision")
	return fmt.Sprintf("rm -f %[1]s\n(umask 077; cat > %[1]s <<'%[4]s'\n%[3]s%[4]s\n)\nchmod %[5]s %[1]s\nmv -f %[1]s %[2]s\n",
		tmp, posixQuote(path), content, eof, mode), nil
}

// startScript writes the join token and (re)starts the agent: through
// systemd when it runs the host, else detached with setsid.
func startScript(o provisionOptions, f remoteFacts, name, token string) (string, error) {
	var b strings.Builder
	w, err := writeFileScript(joinTokenFile(o.dataDir), "0600", token)
	if err != nil {
		return "", err
	}
	b.WriteString(w)
	argv := agentArgv(o, name)
	if f.systemd {
		w, err := writeFileScript("/etc/systemd/system/"+agentUnit, "0644", systemdUnit(argv))
		if err != nil {
			return "", err
		}
		b.WriteString(w)
		fmt.Fprintf(&b, "systemctl daemon-reload\nsystemctl enable --quiet %[1]s\nsystemctl restart %[1]s\necho mode=systemd\n", agentUnit)
		return b.String(), nil
	}
	// The agent a previous provision started is found by its pid file and
	// checked to be an agent still (pids are reused) before it is stopped.
	// It gets ten seconds to exit; a zombie counts as gone.
	fmt.Fprintf(&b, `data=%[1]s
alive() { [ -r /proc/$1/stat ] && [ "$(sed 's/.*) //' /proc/$1/stat | cut -c1)" != Z ]; }
if [ -r "$data/agent.pid" ]; then
  old=$(cat "$data/agent.pid")
  if [ -n "$old" ] && alive "$old" && tr '\0' '\n' </proc/"$old"/cmdline | grep -qx agent; then
    kill -TERM "$old" || true
    i=0
    while alive "$old"; do
      i=$((i+1))
      if [ $i -gt 100 ]; then kill -KILL "$old" || true; break; fi
      sleep 0.1
    done
  fi
  rm -f "$data/agent.pid"
fi
cd /
setsid -f sh -c 'echo $$ >"$0.new" && mv -f "$0.new" "$0" && exec "$@"' "$data/agent.pid" %[2]s </dev/null >>"$data/agent.log" 2>&1
i=0
until [ -s "$data/agent.pid" ]; do
  i=$((i+1))
  if [ $i -gt 100 ]; then echo "the agent wrote no pid file" >&2; exit 1; fi
  sleep 0.1
done
echo mode=detached
echo "pid=$(cat "$data/agent.pid")"
`, posixQuote(o.dataDir), posixWords(argv))
	return b.String(), nil
}

// nodeJoined says whether the node has registered since provision started
// (its lease is not the one it had before, if any) and is ready.
func nodeJoined(leaseBefore int64, n *api.Node) (bool, string) {
	switch {
	case n.Status.Lease == 0 || n.Status.Lease == leaseBefore:
		return false, "the agent has not registered yet"
	case n.Status.Phase != api.NodeReady:
		return false, fmt.Sprintf("the node is %s", n.Status.Phase)
	}
	return true, ""
}

// provisioner runs the steps against one host.
type provisioner struct {
	opts   provisionOptions
	api    *api.Client
	stderr io.Writer
	// controlPath is the socket of the one SSH connection every step
	// shares, set while it is open.
	controlPath string
}

// connect opens the SSH connection the steps share (one handshake, one
// authentication) and returns its closer. The master runs in the
// foreground as a child of this process, its output in a file rather
// than a pipe that a backgrounded ssh could hold open.
func (p *provisioner) connect(ctx context.Context) (func(), error) {
	dir, err := os.MkdirTemp("", "berth-ssh-")
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logf.Close()
	sock := filepath.Join(dir, "c")
	args := append(sshArgs(p.opts, sock), "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-N", "--", p.opts.target.host)
	master := exec.Command("ssh", args...)
	master.Stdout, master.Stderr = logf, logf
	if err := master.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- master.Wait() }()
	closer := func() {
		// Asked to exit, the master closes the connection; killed, it
		// would leave nothing behind either.
		stop := exec.Command("ssh", append(sshArgs(p.opts, sock), "-O", "exit", "--", p.opts.target.host)...)
		_ = stop.Run()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = master.Process.Kill()
			<-exited
		}
		os.RemoveAll(dir)
	}
	// ssh makes the control socket once the host has accepted the key.
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			p.controlPath = sock
			return closer, nil
		}
		select {
		case err := <-exited:
			msg, _ := os.ReadFile(logf.Name())
			os.RemoveAll(dir)
			return nil, toolError("ssh", err, string(msg))
		case <-ctx.Done():
			_ = master.Process.Kill()
			<-exited
			os.RemoveAll(dir)
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stepError names the step that failed and the host.
func (p *provisioner) stepError(step string, err error) error {
	return fmt.Errorf("provision %s: %s: %w", p.opts.target, step, err)
}

func (p *provisioner) say(format string, args ...any) {
	fmt.Fprintf(p.stderr, "berth: %s: "+format+"\n", append([]any{p.opts.target}, args...)...)
}

// ssh runs a remote command with stdin, returning its stdout; a failure
// carries ssh's (or the command's) stderr.
func (p *provisioner) ssh(ctx context.Context, command, stdin string) (string, error) {
	args := append(sshArgs(p.opts, p.controlPath), "-o", "ControlMaster=no", "--", p.opts.target.host, command)
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), toolError("ssh", err, errb.String())
	}
	return out.String(), nil
}

// toolError is a failed ssh or scp with what it said.
func toolError(tool string, err error, stderr string) error {
	if msg := strings.TrimSpace(stderr); msg != "" {
		return fmt.Errorf("%s: %s (%w)", tool, msg, err)
	}
	return fmt.Errorf("%s: %w", tool, err)
}

// run provisions the host and returns the node's name. Each step's error
// names the step and the host.
func (p *provisioner) run(ctx context.Context) (string, error) {
	local, machines, err := localExecutables()
	if err != nil {
		return "", p.stepError("find the executables", err)
	}
	closeSSH, err := p.connect(ctx)
	if err != nil {
		return "", p.stepError("connect", err)
	}
	defer closeSSH()
	facts, name, err := p.check(ctx, machines)
	if err != nil {
		return "", p.stepError("check the host", err)
	}

	// The lease the node holds now, if it exists: ready counts only once
	// the agent provision starts has registered anew.
	var leaseBefore int64
	n := &api.Node{}
	switch err := p.api.Get(ctx, "", name, n); {
	case err == nil:
		leaseBefore = n.Status.Lease
	case !api.IsNotFound(err):
		return "", p.stepError("read node "+name+" from the API", err)
	}
	// The token has to last until the agent uses it, after the copy; it
	// is good for nothing but a join, and only until it expires.
	jt, err := p.api.JoinToken(ctx, p.opts.timeout+15*time.Minute)
	if err == nil && (jt.Token == "" || strings.ContainsAny(jt.Token, "\n\x00")) {
		err = errors.New("the server returned an unusable token")
	}
	if err != nil {
		return "", p.stepError("mint a join token", err)
	}

	if err := p.install(ctx, facts, local); err != nil {
		return "", err
	}
	stopped, logCmd, err := p.start(ctx, facts, name, jt.Token)
	if err != nil {
		return "", p.stepError("start the agent", err)
	}
	if err := p.waitReady(ctx, name, leaseBefore, stopped); err != nil {
		// What the agent said is the likeliest why.
		cmdline, script := privileged(facts, logCmd+"\n")
		if tail, lerr := p.ssh(context.WithoutCancel(ctx), cmdline, script); lerr == nil && strings.TrimSpace(tail) != "" {
			err = fmt.Errorf("%w; the agent's log (%s) ends:\n%s", err, logCmd, strings.TrimRight(tail, "\n"))
		}
		return "", p.stepError("wait for node "+name+" to join", err)
	}
	return name, nil
}

// localExecutables finds the executables to copy (beside this berth) and
// the machine they are built for.
func localExecutables() (paths, machines []string, err error) {
	for _, tool := range []string{"ssh", "scp"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, fmt.Errorf("%w (install openssh-client)", err)
		}
	}
	for _, e := range provisionExecutables() {
		path, err := sibling.Find(e)
		if err != nil {
			return nil, nil, err
		}
		paths = append(paths, path)
	}
	machines, err = executablesMachine(paths)
	return paths, machines, err
}

// check learns what the host is and decides whether it can run the agent
// and under which name.
func (p *provisioner) check(ctx context.Context, machines []string) (remoteFacts, string, error) {
	out, err := p.ssh(ctx, "sh -s", remoteCheckScript)
	if err != nil {
		return remoteFacts{}, "", err
	}
	facts, err := parseRemoteFacts(out)
	if err != nil {
		return facts, "", err
	}
	if err := checkFacts(facts, machines); err != nil {
		return facts, "", err
	}
	name, err := provisionNodeName(p.opts.name, facts.hostname)
	return facts, name, err
}

// install copies the executables into a staging directory beside their
// place and renames each over the installed one. A failure leaves no
// staging directory behind.
func (p *provisioner) install(ctx context.Context, facts remoteFacts, local []string) error {
	o := p.opts
	p.say("copying %s to %s", strings.Join(provisionExecutables(), ", "), o.binDir)
	cmdline, script := privileged(facts, prepareScript(o, facts.uid))
	out, err := p.ssh(ctx, cmdline, script)
	if err != nil {
		return p.stepError("make "+o.binDir+" and "+o.dataDir, err)
	}
	stage := strings.TrimSpace(out)
	if !strings.HasPrefix(stage, o.binDir+"/.berth-provision.") || strings.Contains(stage, "\n") {
		return p.stepError("make a staging directory", fmt.Errorf("unexpected answer %q", out))
	}
	installed := false
	defer func() {
		if !installed {
			cmdline, script := privileged(facts, "rm -rf "+posixQuote(stage)+"\n")
			_, _ = p.ssh(context.WithoutCancel(ctx), cmdline, script)
		}
	}()
	args := append(append(sshArgs(o, p.controlPath), "-o", "ControlMaster=no", "-q", "--"), local...)
	scp := exec.CommandContext(ctx, "scp", append(args, scpDest(o.target, stage))...)
	var scpErr bytes.Buffer
	scp.Stderr = &scpErr
	if err := scp.Run(); err != nil {
		return p.stepError("copy the executables", toolError("scp", err, scpErr.String()))
	}
	cmdline, script = privileged(facts, installScript(o, stage))
	if _, err := p.ssh(ctx, cmdline, script); err != nil {
		return p.stepError("install the executables in "+o.binDir, err)
	}
	installed = true
	return nil
}

// start writes the token and (re)starts the agent. It returns how to tell
// that a detached agent has exited (nil under systemd, which restarts it)
// and the command that shows the agent's log.
func (p *provisioner) start(ctx context.Context, facts remoteFacts, name, token string) (stopped func(context.Context) bool, logCmd string, err error) {
	o := p.opts
	body, err := startScript(o, facts, name, token)
	if err != nil {
		return nil, "", err
	}
	cmdline, script := privileged(facts, body)
	out, err := p.ssh(ctx, cmdline, script)
	if err != nil {
		return nil, "", err
	}
	if facts.systemd {
		p.say("started %s", agentUnit)
		return nil, "journalctl --no-pager -n 20 -u " + agentUnit, nil
	}
	pid := ""
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "pid="); ok {
			pid = v
		}
	}
	if _, err := strconv.Atoi(pid); err != nil {
		return nil, "", fmt.Errorf("no pid in the answer %q", out)
	}
	p.say("no systemd runs the host: started the agent detached (pid %s, log %s/agent.log, pid file %s/agent.pid); nothing restarts it if it stops or the host reboots",
		pid, o.dataDir, o.dataDir)
	stopped = func(ctx context.Context) bool {
		// Only a clear "no such process" counts, not a lost connection.
		cmdline, script := privileged(facts, "if kill -0 "+pid+" 2>/dev/null; then echo running; else echo stopped; fi\n")
		out, err := p.ssh(ctx, cmdline, script)
		return err == nil && strings.TrimSpace(out) == "stopped"
	}
	return stopped, "tail -n 20 " + posixQuote(o.dataDir+"/agent.log"), nil
}

// waitReady polls the API until the node has registered anew and is
// ready. stopped, when set, says whether the agent has exited; it is asked
// now and then, so that an agent that cannot start fails the wait at once.
func (p *provisioner) waitReady(ctx context.Context, name string, leaseBefore int64, stopped func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.timeout)
	defer cancel()
	why := "the agent has not registered yet"
	lastCheck := time.Now()
	for {
		n := &api.Node{}
		err := p.api.Get(ctx, "", name, n)
		switch {
		case err == nil:
			ok, w := nodeJoined(leaseBefore, n)
			if ok {
				return nil
			}
			why = w
		case !api.IsNotFound(err) && ctx.Err() == nil:
			why = err.Error()
		}
		if stopped != nil && time.Since(lastCheck) > 2*time.Second {
			lastCheck = time.Now()
			if stopped(ctx) {
				return errors.New("the agent exited")
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %s", p.opts.timeout, why)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
