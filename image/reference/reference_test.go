package reference

import "testing"

func TestParseNormalisesLikeDocker(t *testing.T) {
	d := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct{ in, want, familiar string }{
		{"busybox", "docker.io/library/busybox:latest", "busybox:latest"},
		{"library/busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"},
		{"docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"},
		{"index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"},
		{"user/app", "docker.io/user/app:latest", "user/app:latest"},
		{"host:5000/app@" + d, "host:5000/app@" + d, "host:5000/app@" + d},
		{"localhost/app:v1", "localhost/app:v1", "localhost/app:v1"},
		{"127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag"},
		{"ghcr.io/x/y:1@" + d, "ghcr.io/x/y:1@" + d, "ghcr.io/x/y:1@" + d},
		{"my_app-x.y", "docker.io/library/my_app-x.y:latest", "my_app-x.y:latest"},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			r, err := Parse(c.in)
			if err != nil {
				t.Fatal(err)
			}
			if r.String() != c.want {
				t.Errorf("String() = %q, want %q", r.String(), c.want)
			}
			if r.Familiar() != c.familiar {
				t.Errorf("Familiar() = %q, want %q", r.Familiar(), c.familiar)
			}
		})
	}
}

func TestParseRejectsBadReferences(t *testing.T) {
	for _, in := range []string{"", "Busybox", "busybox:", "a/:tag", "busybox@sha256:zz", "bad host:5000/x", "x:tag:tag", "-x", "app:" + string(make([]byte, 200))} {
		t.Run(in, func(t *testing.T) {
			if r, err := Parse(in); err == nil {
				t.Fatalf("Parse(%q) = %v, want error", in, r)
			}
		})
	}
}

func TestLoopback(t *testing.T) {
	for in, want := range map[string]bool{
		"localhost:5000/a": true, "127.0.0.1:5000/a": true, "[::1]:5000/a": true,
		"busybox": false, "example.com:5000/a": false,
	} {
		r, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if r.Loopback() != want {
			t.Errorf("%s: Loopback() = %v", in, r.Loopback())
		}
	}
}

func TestValidators(t *testing.T) {
	for c, want := range map[string]bool{
		"a": true, "a.b": true, "a_b": true, "a__b": true, "a---b": true, "a1-2": true,
		"": false, "-a": false, "a-": false, "a..b": false, "a___b": false, "a._b": false, "A": false, "a b": false,
	} {
		if got := validComponent(c); got != want {
			t.Errorf("validComponent(%q) = %v", c, got)
		}
	}
	for h, want := range map[string]bool{
		"localhost": true, "host:5000": true, "a.b-c.io": true, "[::1]:5000": true, "[fe80::1]": true, "Reg.Example": true,
		"host:": false, "-host": false, "a..b": false, "[]": false, "[::1]x": false, "host:123456": false, "a_b.io": false,
	} {
		if got := validHost(h); got != want {
			t.Errorf("validHost(%q) = %v", h, got)
		}
	}
	for tag, want := range map[string]bool{"latest": true, "1.36": true, "_x": true, "v1-rc.2_3": true, ".x": false, "-x": false, "a/b": false, "": false} {
		if got := validTag(tag); got != want {
			t.Errorf("validTag(%q) = %v", tag, got)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for in, want := range map[string]bool{
		"localhost": true, "localhost:5000": true, "127.0.0.1": true, "127.1.2.3:80": true, "[::1]:5000": true, "::1": true,
		"10.0.0.5:5000": false, "example.com": false, "localhost.example.com:5000": false, "[fe80::1]:5000": false, "128.0.0.1": false,
	} {
		if got := IsLoopback(in); got != want {
			t.Errorf("IsLoopback(%q) = %v", in, got)
		}
	}
}
