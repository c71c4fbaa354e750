package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-dev/berth/image/imagetest"
)

func TestLoginServer(t *testing.T) {
	for in, want := range map[string]string{
		"": "docker.io", "docker.io": "docker.io", "https://index.docker.io/v1/": "docker.io",
		"localhost:5000": "localhost:5000", "https://ghcr.io": "ghcr.io", "127.0.0.1:5000/v2/": "127.0.0.1:5000",
		"registry.example.com": "registry.example.com",
	} {
		got, err := LoginServer(in)
		if err != nil || got != want {
			t.Errorf("LoginServer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"busybox", "bad host", "a/b"} {
		if got, err := LoginServer(bad); err == nil {
			t.Errorf("LoginServer(%q) = %q, want an error", bad, got)
		}
	}
}

func TestLoginThenPushAndPullWithAPasswordProtectedRegistry(t *testing.T) {
	needRoot(t)
	reg := imagetest.RegistryWithLogin(t, "berth", "s3cret")
	ctx := context.Background()
	src := newStore(t)
	img, err := src.Import(ctx, imagetest.Tar(t, imagetest.File{Name: "hello", Body: "world"}), "app:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfgDir := t.TempDir()
	opt := RegistryOptions{Keychain: DockerConfig{Dir: cfgDir}}
	ref := reg + "/team/app:1"

	if _, err := src.Push(ctx, "app:1", ref, opt); err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("push without login: want 401, got %v", err)
	}
	if err := Login(ctx, reg, "berth", "wrong", cfgDir, RegistryOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("login with a wrong password: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfgDir, "config.json")); err == nil {
		t.Fatal("a refused login wrote credentials")
	}
	if err := Login(ctx, "http://"+reg, "berth", "s3cret", cfgDir, RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(cfgDir, "config.json"))
	if err != nil || !strings.Contains(string(b), `"`+reg+`"`) {
		t.Fatalf("config.json after login: %s %v", b, err)
	}
	if _, err := src.Push(ctx, "app:1", ref, opt); err != nil {
		t.Fatal(err)
	}
	dst := newStore(t)
	if _, err := dst.Pull(ctx, ref, PullOptions{RegistryOptions: RegistryOptions{Keychain: DockerConfig{Dir: t.TempDir()}}}); err == nil {
		t.Fatal("anonymous pull from a protected registry succeeded")
	}
	got, err := dst.Pull(ctx, ref, PullOptions{RegistryOptions: opt})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != img.Digest {
		t.Fatalf("pulled %s, pushed %s", got.Digest, img.Digest)
	}
}

// The token flow most hosted registries use: credentials from `login` go to
// the token server, the registry sees only the signed token.
func TestLoginThenPullWithATokenRegistry(t *testing.T) {
	needRoot(t)
	reg := imagetest.RegistryWithTokens(t, "berth", "t0ken")
	ctx := context.Background()
	src := newStore(t)
	img, err := src.Import(ctx, imagetest.Tar(t, imagetest.File{Name: "hello", Body: "world"}), "app:tok", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfgDir := t.TempDir()
	opt := RegistryOptions{Keychain: DockerConfig{Dir: cfgDir}}
	ref := reg.Addr + "/team/app:1"
	if err := Login(ctx, reg.Addr, "berth", "nope", cfgDir, RegistryOptions{}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("login with a wrong password: %v", err)
	}
	if err := Login(ctx, reg.Addr, "berth", "t0ken", cfgDir, RegistryOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Push(ctx, "app:tok", ref, opt); err != nil {
		t.Fatal(err)
	}
	dst := newStore(t)
	if _, err := dst.Pull(ctx, ref, PullOptions{RegistryOptions: RegistryOptions{Keychain: DockerConfig{Dir: t.TempDir()}}}); err == nil {
		t.Fatal("anonymous pull from a token registry succeeded")
	}
	before := reg.Tokens.Load()
	got, err := dst.Pull(ctx, ref, PullOptions{RegistryOptions: opt})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != img.Digest || reg.Tokens.Load() == before {
		t.Fatalf("pulled %s (want %s) with %d new tokens", got.Digest, img.Digest, reg.Tokens.Load()-before)
	}
}
