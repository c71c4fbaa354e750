package image

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/berth-dev/berth/image/imagetest"
)

func TestCommand(t *testing.T) {
	cases := []struct {
		name string
		cfg  ocispec.ImageConfig
		args []string
		want []string
	}{
		{"cmd only", ocispec.ImageConfig{Cmd: []string{"sh"}}, nil, []string{"sh"}},
		{"entrypoint and cmd", ocispec.ImageConfig{Entrypoint: []string{"/app"}, Cmd: []string{"--help"}}, nil, []string{"/app", "--help"}},
		{"args replace cmd", ocispec.ImageConfig{Entrypoint: []string{"/app"}, Cmd: []string{"--help"}}, []string{"serve"}, []string{"/app", "serve"}},
		{"args alone", ocispec.ImageConfig{}, []string{"ls"}, []string{"ls"}},
	}
	for _, c := range cases {
		got, err := Command(c.cfg, c.args)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v %v, want %v", c.name, got, err, c.want)
		}
	}
	if _, err := Command(ocispec.ImageConfig{}, nil); err == nil {
		t.Error("nothing to run accepted")
	}
	if env := Environment(ocispec.ImageConfig{Env: []string{"A=b"}}); len(env) != 2 || !strings.HasPrefix(env[1], "PATH=") {
		t.Errorf("default PATH: %v", env)
	}
	if env := Environment(ocispec.ImageConfig{Env: []string{"PATH=/x"}}); len(env) != 1 {
		t.Errorf("image PATH overridden: %v", env)
	}
}

func TestResolveUser(t *testing.T) {
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n# comment\nweb:x:33:33::/var/www:/bin/false\n",
		"etc/group":  "root:x:0:\napp:x:1000:\nstaff:x:50:app,web\nweb:x:33:\n",
	}
	open := func(name string) (io.ReadCloser, error) {
		s, ok := files[name]
		if !ok {
			return nil, os.ErrNotExist
		}
		return io.NopCloser(strings.NewReader(s)), nil
	}
	cases := []struct {
		user string
		want specs.User
	}{
		{"", specs.User{}},
		{"app", specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{50}}},
		{"1000", specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{50}}},
		{"4242", specs.User{UID: 4242}},
		{"app:staff", specs.User{UID: 1000, GID: 50}},
		{"web:7", specs.User{UID: 33, GID: 7}},
		{"5:6", specs.User{UID: 5, GID: 6}},
	}
	for _, c := range cases {
		got, err := ResolveUser(c.user, open)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ResolveUser(%q) = %+v, %v; want %+v", c.user, got, err, c.want)
		}
	}
	for _, bad := range []string{"nobody", "app:nogroup"} {
		if _, err := ResolveUser(bad, open); err == nil {
			t.Errorf("ResolveUser(%q) accepted", bad)
		}
	}
}

// The image's own config, turned into a runtime process, runs in runc on a
// snapshot: the user, environment and working directory are the image's.
func TestImageConfigRunsAsItsProcess(t *testing.T) {
	needRoot(t)
	s := newStore(t)
	base := imagetest.BusyboxTar(t)
	extra := imagetest.Tar(t,
		imagetest.File{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n"},
		imagetest.File{Name: "srv/", Type: '5', Mode: 0o777},
	)
	img, err := s.Create(context.Background(), "test/proc", NewImage{
		Layers: []io.Reader{base, extra},
		Config: ocispec.ImageConfig{
			Entrypoint: []string{"/bin/sh", "-c"},
			Cmd:        []string{`echo "$(id -u):$(id -g) $(pwd) $GREETING" && touch mine && ls -n mine`},
			Env:        []string{"GREETING=hello"},
			WorkingDir: "/srv",
			User:       "app",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := s.Snapshot(context.Background(), img, "proc")
	if err != nil {
		t.Fatal(err)
	}
	proc, err := ContainerProcess(rootfs, img.Config.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := imagetest.RunProcess(t, rootfs, proc)
	if !strings.HasPrefix(out, "1000:1000 /srv hello\n") || !strings.Contains(out, " 1000 ") {
		t.Fatalf("container printed %q", out)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "snapshots", "proc", "upper", "srv", "mine")); err != nil {
		t.Fatalf("the container's file is not in the upper dir: %v", err)
	}
}
