package main

import (
	"bytes"
	"flag"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// parsed is what a command line came to: the verb, its operands, the
// global flags and the verb's flags that were set, each as flag.Value's
// String prints it.
type parsed struct {
	verb     string
	operands []string
	globals  globals
	flags    map[string]string
}

func parseLine(t *testing.T, line []string) (parsed, error) {
	t.Helper()
	g := &globals{}
	var out bytes.Buffer
	code := 0
	v, operands, err := parse(g, line, &out, &code)
	if err != nil {
		return parsed{}, err
	}
	if v == nil {
		t.Fatalf("%q printed help or the version instead of parsing:\n%s", line, out.String())
	}
	p := parsed{verb: v.name, operands: operands, globals: *g, flags: map[string]string{}}
	v.flags.Visit(func(f *flag.Flag) { p.flags[f.Name] = f.Value.String() })
	return p, nil
}

func TestToolCommandLinesParse(t *testing.T) {
	withGlobals := func(root, log, format string) globals {
		return globals{root: root, log: log, logFormat: format, criu: "criu", rootless: "auto"}
	}
	containerd := withGlobals("/run/containerd/runc/k8s.io", "/run/c/log.json", "json")
	podman := withGlobals("/run/runc", "", "text")
	cg := []string{"--root", "/run/containerd/runc/k8s.io", "--log", "/run/c/log.json", "--log-format", "json"}
	tests := []struct {
		name     string
		line     []string
		verb     string
		operands []string
		globals  globals
		flags    map[string]string
	}{
		{"containerd create", append(cg, "create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/tmp/pty.sock", "c1"),
			"create", []string{"c1"}, containerd, map[string]string{"bundle": "/b", "pid-file": "/b/init.pid", "console-socket": "/tmp/pty.sock"}},
		{"containerd start", append(cg, "start", "c1"), "start", []string{"c1"}, containerd, map[string]string{}},
		{"containerd exec", append(cg, "exec", "--process", "/tmp/p.json", "--detach", "--pid-file", "/b/e.pid", "c1"),
			"exec", []string{"c1"}, containerd, map[string]string{"process": "/tmp/p.json", "detach": "true", "pid-file": "/b/e.pid"}},
		{"containerd kill all", append(cg, "kill", "--all", "c1", "9"), "kill", []string{"c1", "9"}, containerd, map[string]string{"all": "true"}},
		{"containerd delete force", append(cg, "delete", "--force", "c1"), "delete", []string{"c1"}, containerd, map[string]string{"force": "true"}},
		{"containerd state", append(cg, "state", "c1"), "state", []string{"c1"}, containerd, map[string]string{}},
		{"containerd ps json", append(cg, "ps", "--format", "json", "c1"), "ps", []string{"c1"}, containerd, map[string]string{"format": "json"}},
		{"log format with equals", []string{"--root", "/run/runc", "--log-format=json", "state", "c1"}, "state", []string{"c1"},
			withGlobals("/run/runc", "", "json"), map[string]string{}},
		{"conmon create", []string{"--root", "/run/runc", "create", "--bundle", "/b", "--pid-file", "/b/pidfile", "--no-pivot", "--no-new-keyring", "--console-socket", "/s", "c1"},
			"create", []string{"c1"}, podman, map[string]string{"bundle": "/b", "pid-file": "/b/pidfile", "no-pivot": "true", "no-new-keyring": "true", "console-socket": "/s"}},
		{"conmon exec with tty", []string{"--root", "/run/runc", "exec", "-d", "--pid-file", "/e.pid", "--process", "/p.json", "--console-socket", "/s", "-t", "c1"},
			"exec", []string{"c1"}, podman, map[string]string{"detach": "true", "pid-file": "/e.pid", "process": "/p.json", "console-socket": "/s", "tty": "true"}},
		{"podman kill by name", []string{"--root", "/run/runc", "kill", "c1", "SIGTERM"}, "kill", []string{"c1", "SIGTERM"}, podman, map[string]string{}},
		{"list json short", []string{"--root", "/run/runc", "list", "-f", "json"}, "list", nil, podman, map[string]string{"format": "json"}},
		{"ps json short", []string{"--root", "/run/runc", "ps", "-f", "json", "c1"}, "ps", []string{"c1"}, podman, map[string]string{"format": "json"}},
		{"globals after the verb", []string{"state", "--root", "/run/runc", "c1"}, "state", []string{"c1"}, podman, map[string]string{}},
		{"globals after the operand", []string{"state", "c1", "--root", "/run/runc"}, "state", []string{"c1"}, podman, map[string]string{}},
		{"flags after the operand", []string{"--root", "/run/runc", "delete", "c1", "-f"}, "delete", []string{"c1"}, podman, map[string]string{"force": "true"}},
		{"exec stops at the id", []string{"--root", "/run/runc", "exec", "c1", "ls", "-l", "--root", "x"}, "exec", []string{"c1", "ls", "-l", "--root", "x"}, podman, map[string]string{}},
		{"exec dash dash", []string{"--root", "/run/runc", "exec", "-t", "c1", "--", "sh", "-c", "true"}, "exec", []string{"c1", "--", "sh", "-c", "true"}, podman, map[string]string{"tty": "true"}},
		{"repeatable flags", []string{"--root", "/run/runc", "exec", "-e", "A=1", "--env", "B=2,3", "--cap", "CAP_A", "-c", "CAP_B", "--additional-gids", "1,2", "-g", "3", "c1", "true"},
			"exec", []string{"c1", "true"}, podman, map[string]string{"env": "[A=1 B=2,3]", "cap": "[CAP_A CAP_B]", "additional-gids": "[1 2 3]"}},
		{"clustered letters", []string{"--root", "/run/runc", "exec", "-dt", "c1", "true"}, "exec", []string{"c1", "true"}, podman, map[string]string{"detach": "true", "tty": "true"}},
		{"attached letter value", []string{"--root", "/run/runc", "list", "-fjson"}, "list", nil, podman, map[string]string{"format": "json"}},
		{"runc's single-dash long flag", []string{"-root", "/run/runc", "state", "c1"}, "state", []string{"c1"}, podman, map[string]string{}},
		{"ps options", []string{"--root", "/run/runc", "ps", "c1", "-o", "pid"}, "ps", []string{"c1", "-o", "pid"}, podman, map[string]string{}},
		{"spec command", []string{"--root", "/run/runc", "spec", "-b", "/b", "--", "sh", "-c", "exit 1"}, "spec", []string{"sh", "-c", "exit 1"}, podman, map[string]string{"bundle": "/b"}},
		{"preserve fds", []string{"--root", "/run/runc", "run", "--preserve-fds", "2", "-d", "--keep", "c1"}, "run", []string{"c1"}, podman, map[string]string{"preserve-fds": "2", "detach": "true", "keep": "true"}},
		{"debug and rootless", []string{"--root", "/run/runc", "--debug", "--rootless", "false", "pause", "c1"}, "pause", []string{"c1"},
			globals{root: "/run/runc", logFormat: "text", criu: "criu", rootless: "false", debug: true}, map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseLine(t, tt.line)
			if err != nil {
				t.Fatalf("%q: %v", tt.line, err)
			}
			if p.verb != tt.verb || !reflect.DeepEqual(p.operands, tt.operands) {
				t.Errorf("%q: verb %s operands %q, want %s %q", tt.line, p.verb, p.operands, tt.verb, tt.operands)
			}
			if p.globals != tt.globals {
				t.Errorf("%q: globals %+v, want %+v", tt.line, p.globals, tt.globals)
			}
			if !reflect.DeepEqual(p.flags, tt.flags) {
				t.Errorf("%q: flags %v, want %v", tt.line, p.flags, tt.flags)
			}
		})
	}
}

func TestBadCommandLinesGiveOneClearError(t *testing.T) {
	tests := []struct {
		line []string
		want string
	}{
		{[]string{"create", "--bogus", "c1"}, "unknown flag: --bogus"},
		{[]string{"create", "-x", "c1"}, "unknown shorthand flag: 'x' in -x"},
		{[]string{"--bogus", "state", "c1"}, "unknown flag: --bogus"},
		{[]string{"create", "--bundle"}, "flag needs an argument: --bundle"},
		{[]string{"list", "-f"}, "flag needs an argument: 'f' in -f"},
		{[]string{"create", "--preserve-fds", "abc", "c1"}, `invalid argument "abc" for "--preserve-fds" flag: strconv.ParseInt: parsing "abc": invalid syntax`},
		{[]string{"exec", "-g", "x", "c1", "true"}, `invalid argument "x" for "-g, --additional-gids" flag`},
		{[]string{"delete", "--force=maybe", "c1"}, `invalid argument "maybe" for "-f, --force" flag`},
		{[]string{"create"}, "expected exactly one container ID, got 0 arguments"},
		{[]string{"start", "a", "b"}, "expected exactly one container ID, got 2 arguments"},
		{[]string{"kill"}, "accepts between 1 and 2 arg(s), received 0"},
		{[]string{"kill", "a", "b", "c"}, "accepts between 1 and 2 arg(s), received 3"},
		{[]string{"delete"}, "requires at least 1 arg(s), only received 0"},
		{[]string{"exec"}, "requires at least 1 arg(s), only received 0"},
		{[]string{"list", "extra"}, `unknown command "extra" for "berth-runtime list"`},
		{[]string{"create", "-v"}, "unknown shorthand flag: 'v' in -v"},
		{[]string{"creat", "c1"}, "unknown command \"creat\" for \"berth-runtime\"\n\nDid you mean this?\n\tcreate\n"},
		{[]string{"---root", "x", "state"}, "bad flag syntax: ---root"},
	}
	for _, tt := range tests {
		_, err := parseLine(t, tt.line)
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.line, err, tt.want)
		}
	}
}

// The help and the version go to stdout with status 0, and touch no state.
func TestHelpAndVersion(t *testing.T) {
	tests := []struct {
		line []string
		want []string
	}{
		{[]string{"--version"}, []string{"berth-runtime version " + version + "\nspec: "}},
		{[]string{"-v"}, []string{"berth-runtime version "}},
		{nil, []string{"Usage:\n  berth-runtime [command]", "  create      create a container\n", "  -v, --version ", "      --root string "}},
		{[]string{"-h"}, []string{"Available Commands:", "  help        Help about any command\n"}},
		{[]string{"help", "exec"}, []string{"berth-runtime exec [flags] <container-id> <command> [args...]", "  -e, --env stringArray ", "  -g, --additional-gids ints ", "Global Flags:\n"}},
		{[]string{"create", "--help"}, []string{"  -b, --bundle string ", "      --preserve-fds int ", "  -h, --help                    help for create\n"}},
		{[]string{"--root", "/nonexistent", "list", "-h"}, []string{`  -f, --format string   select one of: table or json (default "table")`}},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		if code := run(tt.line, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
			t.Errorf("%q: status %d, stderr %q", tt.line, code, stderr.String())
		}
		for _, w := range tt.want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%q printed\n%s\nwithout %q", tt.line, stdout.String(), w)
			}
		}
	}
	// spec's own --rootless (a boolean) hides the global one in its help.
	var stdout bytes.Buffer
	run([]string{"spec", "-h"}, &stdout, &stdout)
	if n := strings.Count(stdout.String(), "--rootless"); n != 1 {
		t.Errorf("spec -h lists --rootless %d times:\n%s", n, stdout.String())
	}
}

func TestErrorsExitNonZeroWithOneLine(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"--root", t.TempDir(), "create", "--bogus", "c1"}, &stdout, &stderr)
	if code != 1 || stdout.Len() != 0 || stderr.String() != "berth-runtime: unknown flag: --bogus\n" {
		t.Errorf("status %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

// Importing cobra brought pflag (which imports net) and text/template,
// whose initialisation costs milliseconds on each of the two or three runs
// of every container start. This keeps them out.
func TestRuntimeLeavesOutSlowPackages(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go list needs the go command: %v", err)
	}
	// The tags hack/build.sh builds berth-runtime with.
	out, err := exec.Command(goTool, "list", "-deps", "-tags", "netgo,osusergo",
		"-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, " ")
		for _, imp := range strings.Fields(imports) {
			if slowPackage(imp) {
				t.Errorf("%s imports %s", pkg, imp)
			}
		}
	}
}

func slowPackage(p string) bool {
	return p == "net" || p == "text/template" || strings.HasPrefix(p, "github.com/spf13/")
}
