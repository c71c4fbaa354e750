package console

import (
	"bytes"
	"context"
	"fmt"
	"github.com/berth-dev/berth/internal/uptest"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
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
	data := uptest.BusyboxData(t, berth)
	t.Cleanup(func() { uptest.RemoveContainers(t, bin, data) })
	nodeName := fmt.Sprintf("console-%d", os.Getpid())
	apiURL := uptest.Start(t, uptest.Config{Berth: berth, Data: data, Node: nodeName, Args: []string{"--network", "none"}}).Addr
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
