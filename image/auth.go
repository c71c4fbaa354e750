package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/berth-dev/berth/image/reference"
)

// dockerHubAuthKey is the key Docker files Docker Hub credentials under.
const dockerHubAuthKey = "https://index.docker.io/v1/"

// DockerConfig is a keychain reading the Docker client configuration that
// `berth login` and `docker login` write: Dir/config.json, including its
// credential helpers. An empty Dir means $DOCKER_CONFIG or ~/.docker.
type DockerConfig struct {
	Dir string
}

func (k DockerConfig) load() (*configfile.ConfigFile, error) {
	dir := k.Dir
	if dir == "" {
		dir = config.Dir()
	}
	cf, err := config.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("docker config in %s: %w", dir, err)
	}
	return cf, nil
}

// Resolve finds the credentials for a registry; none means anonymous.
func (k DockerConfig) Resolve(res authn.Resource) (authn.Authenticator, error) {
	cf, err := k.load()
	if err != nil {
		return nil, err
	}
	ac, err := cf.GetAuthConfig(authKey(res.RegistryStr()))
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", res.RegistryStr(), err)
	}
	if ac.Username == "" && ac.Password == "" && ac.Auth == "" && ac.IdentityToken == "" && ac.RegistryToken == "" {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{
		Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
		IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken,
	}), nil
}

// authKey is the config.json key for a registry host, as Docker writes it.
func authKey(host string) string {
	switch host {
	case reference.DefaultRegistry, reference.DefaultRegistryHost, "registry-1.docker.io":
		return dockerHubAuthKey
	}
	return host
}

// LoginServer turns what a user types after `login` (`localhost:5000`,
// `https://ghcr.io`, `docker.io`, nothing) into a registry host.
func LoginServer(s string) (string, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	s = strings.TrimSuffix(strings.TrimSuffix(s, "/"), "/v1")
	s = strings.TrimSuffix(s, "/v2")
	switch s {
	case "", reference.DefaultRegistry, reference.DefaultRegistryHost, "registry-1.docker.io":
		return reference.DefaultRegistry, nil
	}
	// A reference in that registry reuses the host rules; a word that is
	// no host (no dot, no port, not localhost) parses as a repository.
	if r, err := reference.Parse(s + "/x"); err != nil || r.Registry != s {
		return "", fmt.Errorf("login: %q is not a registry host", s)
	}
	return s, nil
}

// ErrUnauthorized is returned by Login when the registry refuses the
// credentials.
const ErrUnauthorized = Error("unauthorized: the registry refused the user name or password")

// Login checks user and password against the registry at server (as
// LoginServer reads it) and, when it accepts them, stores them in the Docker
// config under dir ("" for the default) for later pulls and pushes.
func Login(ctx context.Context, server, user, password, dir string, opt RegistryOptions) error {
	host, err := LoginServer(server)
	if err != nil {
		return err
	}
	if user == "" || password == "" {
		return fmt.Errorf("login %s: user name and password are both needed", host)
	}
	r, err := reference.Parse(host + "/x")
	if err != nil {
		return fmt.Errorf("login %s: %w", host, err)
	}
	nref, err := opt.name(r)
	if err != nil {
		return fmt.Errorf("login %s: %w", host, err)
	}
	base := opt.transport()
	auth := authn.FromConfig(authn.AuthConfig{Username: user, Password: password})
	// A token registry checks the password when the token is fetched, a
	// basic-auth one on the next request: /v2/ answers 200 only when it
	// accepts them.
	rt, err := transport.NewWithContext(ctx, nref.Context().Registry, auth, base, nil)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusUnauthorized {
			return fmt.Errorf("login %s: %w", host, ErrUnauthorized)
		}
		return fmt.Errorf("login %s: %w", host, err)
	}
	reg := nref.Context().Registry
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, reg.Scheme()+"://"+reg.RegistryStr()+"/v2/", nil)
	if err != nil {
		return fmt.Errorf("login %s: %w", host, err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("login %s: %w", host, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("login %s: %w", host, ErrUnauthorized)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("login %s: registry answered %s", host, resp.Status)
	}
	cf, err := DockerConfig{Dir: dir}.load()
	if err != nil {
		return fmt.Errorf("login %s: %w", host, err)
	}
	key := authKey(host)
	ac := types.AuthConfig{Username: user, Password: password, ServerAddress: key}
	if cf.CredentialsStore == "" && cf.CredentialHelpers[key] == "" {
		// Straight into config.json, as docker's file store does, but
		// without its warning on stderr: the caller decides what to say.
		if cf.AuthConfigs == nil {
			cf.AuthConfigs = map[string]types.AuthConfig{}
		}
		cf.AuthConfigs[key] = ac
	} else if err := cf.GetCredentialsStore(key).Store(ac); err != nil {
		return fmt.Errorf("login %s: store credentials: %w", host, err)
	}
	if err := cf.Save(); err != nil {
		return fmt.Errorf("login %s: %w", host, err)
	}
	return nil
}
