package runtime

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Every process setting the spec has lands on the container's process.
func TestProcessSettingsApply(t *testing.T) {
	r := testRuntime(t)
	script := `echo id=$(id -u):$(id -g) groups=$(id -G); echo cwd=$(pwd); echo env=$GREETING;
echo umask=$(umask); echo nofile=$(ulimit -n); echo oom=$(cat /proc/self/oom_score_adj);
echo sysctl=$(cat /proc/sys/kernel/msgmax); echo mqsysctl=$(cat /proc/sys/fs/mqueue/msg_max);
grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status | tr '\t' ' '; echo arch=$(uname -m)`
	bundle := testBundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Process.User = specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{10, 20}}
		umask := uint32(0o027)
		s.Process.User.Umask = &umask
		s.Process.Cwd = "/tmp"
		s.Process.Env = append(s.Process.Env, "GREETING=ahoy")
		s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 512, Soft: 256}}
		oom := 123
		s.Process.OOMScoreAdj = &oom
		s.Linux.Sysctl = map[string]string{"kernel.msgmax": "4096", "fs.mqueue.msg_max": "42"}
		// NET_RAW (bit 13) in every set, ambient too, so a non-root user
		// keeps it through execve; NNP off so nothing is lost.
		s.Process.NoNewPrivileges = false
		c := []string{"CAP_NET_RAW"}
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: append(c, "CAP_CHOWN"), Permitted: c, Effective: c, Inheritable: c, Ambient: c}
		s.Linux.Personality = &specs.LinuxPersonality{Domain: specs.PerLinux32}
	})
	code, out := runOutput(t, r, "settings", bundle)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{
		"id=1000:1000 groups=1000 10 20\n", "cwd=/tmp\n", "env=ahoy\n", "umask=0027\n",
		"nofile=256\n", "oom=123\n", "sysctl=4096\n", "mqsysctl=42\n",
		"CapInh: 0000000000002000\n", "CapPrm: 0000000000002000\n", "CapEff: 0000000000002000\n",
		"CapBnd: 0000000000002001\n", "CapAmb: 0000000000002000\n", "arch=i686\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if b, _ := os.ReadFile("/proc/sys/kernel/msgmax"); strings.TrimSpace(string(b)) == "4096" {
		t.Errorf("the container's sysctl changed the host's kernel.msgmax")
	}
}

// Each mount type of the spec's examples, with options and propagation.
func TestMountsOfEveryKind(t *testing.T) {
	r := testRuntime(t)
	hostDir := worldDir(t)
	if err := os.WriteFile(filepath.Join(hostDir, "file"), []byte("from host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `cat /data/file; touch /data/new 2>/dev/null && echo data=rw || echo data=ro;
grep -E ' /(scratch|data|dev/mqueue|sys|dev/pts|sys/fs/cgroup/memory) ' /proc/self/mountinfo | awk '{print $5, $6, $7, $9}';
df -k /scratch | tail -1 | awk '{print "scratchKiB=" $2}'; ls /sys/fs/cgroup | tr '\n' ' '`
	bundle := testBundle(t, []string{"sh", "-c", script}, func(s *specs.Spec) {
		s.Mounts = append(s.Mounts,
			specs.Mount{Destination: "/scratch", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "noexec", "size=1024k", "mode=1777"}},
			specs.Mount{Destination: "/data", Type: "bind", Source: hostDir, Options: []string{"rbind", "ro", "nosuid", "rprivate"}},
		)
	})
	code, out := runOutput(t, r, "mounts", bundle)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{
		"from host\n", "data=ro\n", "scratchKiB=1024\n",
		"/scratch rw,nosuid,nodev,noexec", "/data ro,nosuid", "/dev/mqueue", "/dev/pts", "/sys ro",
		"memory", "pids",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(hostDir, "new")); err == nil {
		t.Errorf("the read-only bind mount was written")
	}
}

// A container can join another's network and uts namespaces by path, and
// --no-pivot runs it with chroot-style MS_MOVE instead of pivot_root.
func TestJoinNamespaceByPathAndNoPivot(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	first := testBundle(t, []string{"sleep", "100"}, func(s *specs.Spec) { s.Hostname = "shared-host" })
	if err := r.Create(ctx, "owner", first, CreateOpts{}); err != nil {
		t.Fatal(err)
	}
	st, err := r.State(ctx, "owner")
	if err != nil {
		t.Fatal(err)
	}
	// A veth pair in the owner's network namespace, for the joiner to see.
	nsPath := func(kind string) string { return "/proc/" + strconv.Itoa(st.Pid) + "/ns/" + kind }
	if out, err := exec.Command("nsenter", "--net="+nsPath("net"), "ip", "link", "add", "berthdummy0", "type", "veth", "peer", "name", "berthdummy1").CombinedOutput(); err != nil {
		t.Fatalf("add dummy link: %v %s", err, out)
	}
	second := testBundle(t, []string{"sh", "-c", "hostname; ls /sys/class/net | tr '\\n' ' '; echo; readlink /proc/self/ns/net; ls /bin/sh"}, func(s *specs.Spec) {
		for i, ns := range s.Linux.Namespaces {
			switch ns.Type {
			case specs.NetworkNamespace:
				s.Linux.Namespaces[i].Path = nsPath("net")
			case specs.UTSNamespace:
				s.Linux.Namespaces[i].Path = nsPath("uts")
			}
		}
		s.Hostname = "" // the joined uts namespace keeps its own
	})
	var outBuf strings.Builder
	w := &lockedWriter{b: &outBuf}
	code, err := r.Run(ctx, "joiner", second, CreateOpts{NoPivot: true, IO: IO{Stdout: w, Stderr: w}}, false)
	if err != nil || code != 0 {
		t.Fatalf("run joiner: %d %v %s", code, err, outBuf.String())
	}
	ownerNet, _ := os.Readlink(nsPath("net"))
	out := outBuf.String()
	for _, want := range []string{"shared-host\n", "berthdummy0", ownerNet + "\n", "/bin/sh\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

type lockedWriter struct{ b *strings.Builder }

func (w *lockedWriter) Write(p []byte) (int, error) { return w.b.Write(p) }
