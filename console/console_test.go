package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, method, path string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

func TestHandlerServesThePageAndItsModules(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		path, ctype, has string
	}{
		{"/", "text/html", `<script type="module" src="app.js">`},
		{"/app.js", "text/javascript", "function main()"},
		{"/style.css", "text/css", ":root"},
		{"/vendor/xterm/xterm.mjs", "text/javascript", "export{"},
		{"/vendor/xterm/xterm.css", "text/css", ".xterm"},
	} {
		resp := get(t, h, http.MethodGet, tc.path)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) || !strings.Contains(string(b), tc.has) {
			t.Errorf("GET %s: %d %q, body has %q: %v", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.has, strings.Contains(string(b), tc.has))
		}
		for _, hdr := range []string{"Content-Security-Policy", "X-Content-Type-Options", "Cache-Control"} {
			if resp.Header.Get(hdr) == "" {
				t.Errorf("GET %s: no %s header", tc.path, hdr)
			}
		}
	}
}

func TestHandlerRefusesWhatIsNotAFile(t *testing.T) {
	h := Handler()
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/app.js", http.StatusMethodNotAllowed},
		{http.MethodGet, "/v1/services", http.StatusNotFound},
		{http.MethodGet, "/nope.js", http.StatusNotFound},
		{http.MethodGet, "/../console.go", http.StatusNotFound},
	} {
		if resp := get(t, h, tc.method, tc.path); resp.StatusCode != tc.code {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.code)
		}
	}
}

// Every module the page imports is embedded: a missing vendored file would
// only show in a browser otherwise.
func TestEveryImportIsServed(t *testing.T) {
	h := Handler()
	imp := regexp.MustCompile(`(?m)^(?:import|export) [^'"]*['"](\./[^'"]+)['"]`)
	files, _ := filepath.Glob("web/*.js")
	if len(files) == 0 {
		t.Fatal("no modules in web/")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range imp.FindAllStringSubmatch(string(b), -1) {
			p := "/" + strings.TrimPrefix(m[1], "./")
			if resp := get(t, h, http.MethodGet, p); resp.StatusCode != http.StatusOK {
				t.Errorf("%s imports %s: %d", f, p, resp.StatusCode)
			}
		}
	}
}

// The front end's pure parts (command-line splitting, form to service)
// under Node's own test runner.
func TestFrontEndUnits(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH: the front end's unit tests run on Node.js")
	}
	out, err := exec.Command(node, "--test", "e2e/unit.test.mjs").CombinedOutput()
	if err != nil {
		t.Fatalf("node --test: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "# fail 0") {
		t.Fatalf("node --test ran no tests or failed some:\n%s", out)
	}
}

func TestPolicyNamesOnlyTheHostItWasAskedFor(t *testing.T) {
	h := Handler()
	for host, want := range map[string]string{
		"127.0.0.1:7070":   "connect-src 'self' ws://127.0.0.1:7070 wss://127.0.0.1:7070;",
		"[::1]:7070":       "connect-src 'self' ws://[::1]:7070 wss://[::1]:7070;",
		"evil; script-src": "connect-src 'self';",
	} {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := rec.Header().Get("Content-Security-Policy"); !strings.Contains(got, want) {
			t.Errorf("Host %q: policy %q, want it to hold %q", host, got, want)
		}
	}
}
