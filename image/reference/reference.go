// Package reference parses image references the way Docker users write them
// (`busybox`, `library/busybox:1.36`, `host:5000/app@sha256:…`) into a fully
// qualified form, defaulting to Docker Hub and the `latest` tag.
package reference

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/opencontainers/go-digest"
)

// DefaultRegistry is the registry name used when a reference names no host,
// as Docker does; pulls talk to DefaultRegistryHost.
const (
	DefaultRegistry     = "docker.io"
	DefaultRegistryHost = "index.docker.io"
	DefaultTag          = "latest"
)

// Reference is a parsed, normalised image reference. Digest, when set, pins
// the content; Tag is kept alongside for display (`app:1.0@sha256:…`).
type Reference struct {
	Registry   string // docker.io, localhost:5000
	Repository string // library/busybox
	Tag        string // latest; empty when only a digest was given
	Digest     digest.Digest
}

// Parse normalises s: `busybox` becomes docker.io/library/busybox:latest.
func Parse(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("parse reference: empty")
	}
	if len(s) > 4096 {
		return Reference{}, fmt.Errorf("parse reference: %d characters is too long", len(s))
	}
	var r Reference
	rest := s
	if i := strings.Index(rest, "@"); i >= 0 {
		d, err := digest.Parse(rest[i+1:])
		if err != nil {
			return Reference{}, fmt.Errorf("parse reference %q: digest: %w", s, err)
		}
		r.Digest = d
		rest = rest[:i]
	}
	// A colon after the last slash is a tag; one before it is a port.
	if i := strings.LastIndex(rest, ":"); i >= 0 && i > strings.LastIndex(rest, "/") {
		r.Tag = rest[i+1:]
		rest = rest[:i]
		if !validTag(r.Tag) {
			return Reference{}, fmt.Errorf("parse reference %q: invalid tag %q", s, r.Tag)
		}
	}
	name := rest
	if i := strings.Index(name, "/"); i >= 0 {
		first := name[:i]
		// Docker's rule: the first component is a host when it has a dot or a
		// port, or is localhost.
		if strings.ContainsAny(first, ".:") || first == "localhost" || strings.HasPrefix(first, "[") {
			if !validHost(first) {
				return Reference{}, fmt.Errorf("parse reference %q: invalid registry %q", s, first)
			}
			r.Registry = first
			name = name[i+1:]
		}
	}
	if r.Registry == "" || r.Registry == "index.docker.io" || r.Registry == "registry-1.docker.io" {
		r.Registry = DefaultRegistry
	}
	if r.Registry == DefaultRegistry && !strings.Contains(name, "/") {
		name = "library/" + name
	}
	if name == "" {
		return Reference{}, fmt.Errorf("parse reference %q: no repository name", s)
	}
	for _, c := range strings.Split(name, "/") {
		if !validComponent(c) {
			return Reference{}, fmt.Errorf("parse reference %q: invalid repository component %q (lowercase letters, digits and separators only)", s, c)
		}
	}
	if len(r.Registry)+1+len(name) > 255 {
		return Reference{}, fmt.Errorf("parse reference %q: repository name longer than 255 characters", s)
	}
	r.Repository = name
	if r.Tag == "" && r.Digest == "" {
		r.Tag = DefaultTag
	}
	return r, nil
}

// Name is registry/repository, with no tag or digest.
func (r Reference) Name() string { return r.Registry + "/" + r.Repository }

// String is the fully qualified form.
func (r Reference) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// Familiar is the short form Docker prints (`busybox:latest`, `host:5000/app:1`).
func (r Reference) Familiar() string {
	name := r.Name()
	if r.Registry == DefaultRegistry {
		name = strings.TrimPrefix(r.Repository, "library/")
	}
	if r.Tag != "" {
		name += ":" + r.Tag
	}
	if r.Digest != "" {
		name += "@" + r.Digest.String()
	}
	return name
}

// Host is the address to dial: Docker Hub's name differs from its host.
func (r Reference) Host() string {
	if r.Registry == DefaultRegistry {
		return DefaultRegistryHost
	}
	return r.Registry
}

// Loopback reports whether the registry is on this machine, where plain HTTP
// is allowed without the user marking it insecure, as Docker does.
func (r Reference) Loopback() bool { return IsLoopback(r.Registry) }

// IsLoopback reports whether host[:port] names this machine: localhost,
// 127.0.0.0/8 or ::1.
func IsLoopback(hostport string) bool {
	host := hostport
	if i := strings.LastIndex(host, ":"); i >= 0 && !strings.HasSuffix(host, "]") && strings.Count(host, ":") == 1 {
		host = host[:i]
	} else if strings.HasPrefix(host, "[") {
		if end := strings.Index(host, "]"); end > 0 {
			host = host[1:end]
		}
	}
	if host == "localhost" || host == "::1" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func isLower(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func isAlnum(c byte) bool { return isLower(c) || c >= 'A' && c <= 'Z' }

// validComponent checks one path component as the distribution spec allows
// it: lowercase alphanumerics joined by ".", "_", "__" or runs of "-".
func validComponent(c string) bool {
	if c == "" || !isLower(c[0]) || !isLower(c[len(c)-1]) {
		return false
	}
	for i := 0; i < len(c); i++ {
		if isLower(c[i]) {
			continue
		}
		j := i
		for j < len(c) && !isLower(c[j]) {
			j++
		}
		switch sep := c[i:j]; {
		case sep == "." || sep == "_" || sep == "__":
		case strings.Trim(sep, "-") == "":
		default:
			return false
		}
		i = j - 1
	}
	return true
}

// validTag: up to 128 of [A-Za-z0-9_.-], not starting with "." or "-".
func validTag(t string) bool {
	if t == "" || len(t) > 128 || t[0] == '.' || t[0] == '-' {
		return false
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// validHost: a DNS name or a bracketed IPv6 address, with an optional port.
func validHost(h string) bool {
	if strings.HasPrefix(h, "[") {
		end := strings.Index(h, "]")
		if end < 2 || strings.Trim(h[1:end], "0123456789abcdefABCDEF:.") != "" {
			return false
		}
		h = h[end+1:]
		if h == "" {
			return true
		}
		return h[0] == ':' && validPort(h[1:])
	}
	if i := strings.LastIndex(h, ":"); i >= 0 {
		if !validPort(h[i+1:]) {
			return false
		}
		h = h[:i]
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || !isAlnum(label[0]) || !isAlnum(label[len(label)-1]) {
			return false
		}
		for i := 0; i < len(label); i++ {
			if !isAlnum(label[i]) && label[i] != '-' {
				return false
			}
		}
	}
	return true
}

func validPort(p string) bool {
	return p != "" && len(p) <= 5 && strings.Trim(p, "0123456789") == ""
}
