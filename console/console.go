// Package console is Berth's web console: a static single-page application,
// embedded in the binary, that speaks only the public /v1 API and its watch
// streams from the browser, so anything it does a script can do too.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// web holds the page, its modules and the vendored libraries (see
// vendor.sh). go:embed can only fill a package-level variable; it is
// read-only.
//
//go:embed web
var web embed.FS

// Handler serves the console's files. Mount it at "/" beside the API: the
// page calls /v1 on the same origin.
func Handler() http.Handler {
	root, err := fs.Sub(web, "web")
	if err != nil {
		// Only a broken embed directive gets here, which the tests catch.
		panic("console: embedded files: " + err.Error())
	}
	files := http.FileServerFS(root)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the console is read-only: use the API under /v1", http.StatusMethodNotAllowed)
			return
		}
		p := path.Clean("/" + r.URL.Path)
		if p == "/v1" || strings.HasPrefix(p, "/v1/") {
			// The API is mounted beside the console; reaching here means
			// the route does not exist, and HTML would confuse a client.
			http.Error(w, "no such API path", http.StatusNotFound)
			return
		}
		h := w.Header()
		// The page's state is in the hash and sessionStorage; every
		// response revalidates so an upgraded server is seen at once.
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// xterm.js sets inline styles; nothing else needs more than self.
		// The terminal's websocket is named explicitly: not every browser
		// counts ws: on the page's own host as 'self'.
		connect := "'self'"
		if hostPort(r.Host) {
			connect += " ws://" + r.Host + " wss://" + r.Host
		}
		h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src "+connect+"; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		files.ServeHTTP(w, r)
	})
}

// hostPort reports whether s is a plain host[:port] (a name, an IPv4 or a
// bracketed IPv6 address), safe to repeat inside a header.
func hostPort(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.ContainsRune(".-:[]", c):
		default:
			return false
		}
	}
	return true
}
