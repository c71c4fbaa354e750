package runtime

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestValidateNamesTheFieldAtFault(t *testing.T) {
	neg := -1001
	cases := []struct {
		name   string
		mutate func(*specs.Spec)
		field  string
	}{
		{"no version", func(s *specs.Spec) { s.Version = "" }, "ociVersion"},
		{"no root", func(s *specs.Spec) { s.Root = nil }, "root.path"},
		{"no process", func(s *specs.Spec) { s.Process = nil }, "process"},
		{"empty args", func(s *specs.Spec) { s.Process.Args = nil }, "process.args"},
		{"relative cwd", func(s *specs.Spec) { s.Process.Cwd = "tmp" }, "process.cwd"},
		{"env without =", func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "JUNK") }, "process.env[2]"},
		{"unknown namespace", func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: "bogus"})
		}, "linux.namespaces[6].type"},
		{"duplicate namespace", func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.PIDNamespace})
		}, "linux.namespaces[6].type"},
		{"relative namespace path", func(s *specs.Spec) { s.Linux.Namespaces[1].Path = "proc/1/ns/net" }, "linux.namespaces[1].path"},
		{"no mount namespace", func(s *specs.Spec) { s.Linux.Namespaces = s.Linux.Namespaces[:4] }, "linux.namespaces"},
		{"hostname without uts", func(s *specs.Spec) {
			s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.MountNamespace}}
		}, "hostname"},
		{"mappings without userns", func(s *specs.Spec) {
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{HostID: 1000, Size: 1}}
		}, "linux.uidMappings"},
		{"userns without mappings", func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		}, "linux.uidMappings"},
		{"host sysctl", func(s *specs.Spec) { s.Linux.Sysctl = map[string]string{"vm.swappiness": "1"} }, "linux.sysctl.vm.swappiness"},
		{"net sysctl without netns", func(s *specs.Spec) {
			s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.UTSNamespace}}
			s.Linux.Sysctl = map[string]string{"net.ipv4.ip_forward": "1"}
		}, "linux.sysctl.net.ipv4.ip_forward"},
		{"unknown capability", func(s *specs.Spec) { s.Process.Capabilities.Bounding = []string{"CAP_FLY"} }, "process.capabilities.bounding[0]"},
		{"unknown rlimit", func(s *specs.Spec) { s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_FUN"}} }, "process.rlimits[0].type"},
		{"soft above hard", func(s *specs.Spec) {
			s.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: 10, Hard: 5}}
		}, "process.rlimits[0].soft"},
		{"oom score", func(s *specs.Spec) { s.Process.OOMScoreAdj = &neg }, "process.oomScoreAdj"},
		{"bind without source", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/x", Type: "bind"})
		}, "mounts[7].source"},
		{"device type", func(s *specs.Spec) { s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/x", Type: "q"}} }, "linux.devices[0].type"},
		{"propagation", func(s *specs.Spec) { s.Linux.RootfsPropagation = "sideways" }, "linux.rootfsPropagation"},
		{"relative hook", func(s *specs.Spec) {
			s.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Path: "hook"}}}
		}, "hooks.poststop[0].path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSpec()
			tc.mutate(s)
			err := Validate(s)
			if err == nil {
				t.Fatal("Validate accepted the spec")
			}
			fe, ok := err.(*FieldError)
			if !ok {
				t.Fatalf("error %v is not a FieldError", err)
			}
			if fe.Field != tc.field {
				t.Fatalf("error names %q, want %q (%v)", fe.Field, tc.field, err)
			}
		})
	}
}

func TestValidateAcceptsTheDefaultSpec(t *testing.T) {
	if err := Validate(DefaultSpec()); err != nil {
		t.Fatal(err)
	}
}

func TestDescribeJSONErrorGivesLineAndColumn(t *testing.T) {
	data := []byte("{\n  \"ociVersion\": \"1.0.0\",\n  \"process\": [}\n")
	var s specs.Spec
	err := jsonUnmarshal(data, &s)
	if err == nil {
		t.Fatal("malformed JSON decoded")
	}
	msg := describeJSONError(data, err)
	if !strings.Contains(msg, "line 3") {
		t.Fatalf("message %q does not point at line 3", msg)
	}
}

func TestParseMountOptions(t *testing.T) {
	mo := parseMountOptions([]string{"rbind", "ro", "nosuid", "rprivate", "mode=755", "size=1k"})
	if mo.flags&0x1000 == 0 || mo.flags&1 == 0 {
		t.Fatalf("flags %#x lack MS_BIND or MS_RDONLY", mo.flags)
	}
	if len(mo.propagation) != 1 {
		t.Fatalf("propagation %v", mo.propagation)
	}
	if strings.Join(mo.data, ",") != "mode=755,size=1k" {
		t.Fatalf("data %v", mo.data)
	}
}
