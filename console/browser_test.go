package console

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/image"
	"github.com/berth-dev/berth/image/imagetest"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/runtime"
)

// chromium is Debian's, which hack/deps.sh installs.
const chromium = "/usr/bin/chromium"

// The console in a real browser against a real `berth up`: sign in (a wrong
// token is refused), create a service, see its instances run, scale it,
// follow and search its logs, run a command in its terminal, chart it,
// destroy an instance and delete the service. Screenshots of each page go
// to $BERTH_ARTIFACTS/console (default: artifacts/console at the
// repository's top, which git ignores).
func TestConsoleInABrowser(t *testing.T) {
	bin := os.Getenv("BERTH_BIN_DIR")
	if bin == "" {
		t.Skip("BERTH_BIN_DIR is not set: test.sh builds berth, berth-runtime and berth-init there")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: berth up runs containers")
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Skipf("no %s (Debian's chromium, installed by hack/deps.sh): %v", chromium, err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH: the browser is driven by playwright-core on Node.js")
	}
	if _, err := os.Stat("node_modules/playwright-core/package.json"); err != nil {
		t.Fatalf("playwright-core is not installed in console/node_modules: run hack/deps.sh (npm ci in console/): %v", err)
	}
	shots := os.Getenv("BERTH_ARTIFACTS")
	if shots == "" {
		shots = filepath.Join("..", "artifacts")
	}
	shots, _ = filepath.Abs(filepath.Join(shots, "console"))
	// Only this run's pictures: an earlier run's would pass for new ones.
	if err := os.RemoveAll(shots); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	berth := filepath.Join(bin, "berth")
	dir := testdir.World(t)
	data := filepath.Join(dir, "data")
	tarPath := filepath.Join(dir, "busybox.tar")
	if err := os.WriteFile(tarPath, imagetest.BusyboxTar(t).Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(berth, "image", "--root", data, "import", tarPath, "busybox:latest", "-c", "ENV PATH=/bin").CombinedOutput(); err != nil {
		t.Fatalf("import: %v %s", err, out)
	}
	t.Cleanup(func() { removeContainers(t, bin, data) })
	nodeName := fmt.Sprintf("console-%d", os.Getpid())
	apiURL := startUp(t, berth, data, nodeName)
	secret, err := os.ReadFile(filepath.Join(data, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin := api.NewClient(apiURL, strings.TrimSpace(string(secret)), nil)
	tenant := "shop"
	if err := admin.Create(ctx, &api.Tenant{Meta: api.Meta{Name: tenant}}); err != nil {
		t.Fatal(err)
	}
	tok := &api.Token{Meta: api.Meta{Name: "console", Tenant: tenant}, Role: api.RoleTenantAdmin}
	if err := admin.Create(ctx, tok); err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, node, "e2e/console.mjs")
	cmd.Env = append(os.Environ(),
		"BERTH_URL="+consoleURL(t, apiURL),
		"BERTH_TOKEN="+tok.Secret,
		"BERTH_ADMIN_TOKEN="+strings.TrimSpace(string(secret)),
		"BERTH_NODE="+nodeName,
		"CHROMIUM="+chromium,
		"SCREENSHOTS="+shots,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("browser script:\n%s", out.String())
	if err != nil {
		t.Fatalf("browser script: %v", err)
	}
	t.Logf("screenshots in %s", shots)

	// What the browser did happened in the cluster: nothing of the
	// service is left.
	list, err := api.ListOf[*api.Instance](ctx, admin, tenant, "")
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := api.ListOf[*api.Service](ctx, admin, tenant, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 || len(svcs.Items) != 0 {
		t.Fatalf("after the browser deleted the service: %d services, %d instances left", len(svcs.Items), len(list.Items))
	}
}

// consoleURL checks that berth up serves the console at / beside its API,
// and returns where the browser opens it.
func consoleURL(t *testing.T, apiURL string) string {
	t.Helper()
	resp, err := http.Get(apiURL + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte("<title>Berth console</title>")) {
		t.Fatalf("berth up does not serve the console at /: %s %.200s", resp.Status, b)
	}
	return apiURL
}

// startUp runs `berth up` until the test ends and returns its API URL.
func startUp(t *testing.T, berth, data, nodeName string) string {
	t.Helper()
	cmd := exec.Command(berth, "up", "--data-dir", data, "--listen", "127.0.0.1:0", "--node-name", nodeName, "--network", "none")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("berth up did not stop on SIGTERM")
		}
		if t.Failed() {
			t.Logf("berth up's log:\n%s", stderr.String())
		}
	})
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("berth up ended: %s", stderr.String())
			}
			if a, ok := strings.CutPrefix(l, "API: "); ok {
				return a
			}
		case <-deadline:
			t.Fatalf("berth up did not start: %s", stderr.String())
		}
	}
}

// removeContainers removes every container berth up left under data, their
// mounts and the agent's parent cgroup, so a failed run leaves nothing.
func removeContainers(t *testing.T, bin, data string) {
	ctx := context.Background()
	images, err := image.Open(filepath.Join(data, "image"), nil)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	rt, err := runtime.NewNative(filepath.Join(data, "runtime"), nil)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	rt.InitPath = filepath.Join(bin, "berth-runtime")
	root := filepath.Join(data, "agent")
	a, err := agent.New(ctx, agent.Config{Root: root, Images: images, Runtime: rt, InitPath: filepath.Join(bin, "berth-init")})
	if err != nil {
		t.Errorf("cleanup: %v", err)
		b, _ := os.ReadFile("/proc/self/mountinfo")
		lines := strings.Split(string(b), "\n")
		for i := len(lines) - 1; i >= 0; i-- {
			if f := strings.Fields(lines[i]); len(f) > 4 && strings.HasPrefix(f[4], data+"/") {
				_ = syscall.Unmount(f[4], syscall.MNT_DETACH)
			}
		}
		return
	}
	for _, c := range a.List() {
		if err := a.Remove(ctx, c.ID, true); err != nil {
			t.Errorf("cleanup: remove %s: %v", c.ID, err)
		}
	}
	a.Close()
	h := sha256.Sum256([]byte(root))
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, d := range append(hs, "/sys/fs/cgroup") {
		_ = os.Remove(filepath.Join(d, "berth", hex.EncodeToString(h[:6])))
	}
}
