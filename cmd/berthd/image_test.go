package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-dev/berth/image/imagetest"
)

// berth runs the CLI in-process and returns its output.
func berth(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(bytes.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func mustBerth(t *testing.T, args ...string) string {
	t.Helper()
	out, err := berth(t, nil, args...)
	if err != nil {
		t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// The image verbs end to end on a real store and a real registry: import
// with --change, tag, ls, inspect, history, push, pull, save, load, rm,
// prune and system df.
func TestImageCommands(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the store keeps tar ownership")
	}
	root := t.TempDir()
	rootfs := filepath.Join(t.TempDir(), "rootfs.tar")
	if err := os.WriteFile(rootfs, imagetest.Tar(t, imagetest.File{Name: "hello", Body: "hi"}).Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(mustBerth(t, "image", "--root", root, "import", "--change", `CMD ["/hello"]`, "--change", "ENV A=b", rootfs, "app:1"))
	if !strings.HasPrefix(id, "sha256:") {
		t.Fatalf("import printed %q", id)
	}
	mustBerth(t, "image", "--root", root, "tag", "app:1", "example.com/team/app:2")
	ls := mustBerth(t, "image", "--root", root, "ls")
	for _, want := range []string{"REPOSITORY", "app ", "example.com/team/app", id[7:19]} {
		if !strings.Contains(ls, want) {
			t.Errorf("ls lacks %q:\n%s", want, ls)
		}
	}
	var inspected []struct {
		Id     string
		Config struct{ Cmd, Env []string }
	}
	if err := json.Unmarshal([]byte(mustBerth(t, "image", "--root", root, "inspect", "app:1")), &inspected); err != nil {
		t.Fatal(err)
	}
	if len(inspected) != 1 || inspected[0].Id != id || inspected[0].Config.Cmd[0] != "/hello" || inspected[0].Config.Env[0] != "A=b" {
		t.Fatalf("inspect: %+v", inspected)
	}
	if h := mustBerth(t, "image", "--root", root, "history", "app:1"); !strings.Contains(h, "imported") {
		t.Errorf("history:\n%s", h)
	}

	reg := imagetest.Registry(t)
	mustBerth(t, "image", "--root", root, "push", "app:1", reg+"/cli/app:1")
	root2 := t.TempDir()
	pull := mustBerth(t, "image", "--root", root2, "pull", reg+"/cli/app:1")
	if !strings.Contains(pull, "downloading") || !strings.Contains(pull, "done") || !strings.Contains(pull, reg+"/cli/app:1") {
		t.Errorf("pull output:\n%s", pull)
	}
	if q := mustBerth(t, "image", "--root", root2, "pull", "-q", reg+"/cli/app:1"); !strings.HasPrefix(q, "sha256:") || strings.Count(q, "\n") != 1 {
		t.Errorf("pull -q printed %q", q)
	}

	archive := filepath.Join(t.TempDir(), "app.tar")
	mustBerth(t, "image", "--root", root, "save", "-o", archive, "app:1")
	root3 := t.TempDir()
	if out := mustBerth(t, "image", "--root", root3, "load", "-i", archive); !strings.Contains(out, "docker.io/library/app:1") {
		t.Errorf("load printed %q", out)
	}

	if _, err := berth(t, nil, "image", "--root", root, "rm", "nosuch:1"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("rm of an unknown image: %v", err)
	}
	mustBerth(t, "image", "--root", root, "rm", "app:1")
	rm := mustBerth(t, "image", "--root", root, "rm", "example.com/team/app:2")
	if !strings.Contains(rm, "Deleted:") || !strings.Contains(rm, "Freed") {
		t.Errorf("rm of the last name:\n%s", rm)
	}
	df := mustBerth(t, "system", "--root", root, "df")
	for _, line := range strings.Split(df, "\n") {
		if f := strings.Fields(line); len(f) > 2 && (f[0] == "blobs" || f[0] == "layers") && f[1] != "0" {
			t.Errorf("content left after rm: %s", line)
		}
	}
	if out := mustBerth(t, "image", "--root", root2, "prune", "-a"); !strings.Contains(out, "Deleted:") {
		t.Errorf("prune -a:\n%s", out)
	}
}

func TestLoginNeedsPasswordOnStdin(t *testing.T) {
	if _, err := berth(t, nil, "login", "-u", "x", "localhost:5000"); err == nil || !strings.Contains(err.Error(), "--password-stdin") {
		t.Fatalf("login without --password-stdin: %v", err)
	}
}
