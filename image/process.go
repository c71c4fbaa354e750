package image

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultPath is the PATH Docker gives a container whose image sets none.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Command is what a container of an image runs: the entrypoint followed by
// args when given, else by the image's Cmd, as `docker run IMAGE ARGS` does.
func Command(cfg ocispec.ImageConfig, args []string) ([]string, error) {
	if len(args) == 0 {
		args = cfg.Cmd
	}
	argv := append(append([]string(nil), cfg.Entrypoint...), args...)
	if len(argv) == 0 {
		return nil, errors.New("image has neither an entrypoint nor a command, and none was given")
	}
	return argv, nil
}

// Environment is the image's environment with PATH defaulted.
func Environment(cfg ocispec.ImageConfig) []string {
	env := append([]string(nil), cfg.Env...)
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			return env
		}
	}
	return append(env, defaultPath)
}

// ContainerProcess turns an image config into the process of an OCI
// runtime spec for a container whose root filesystem is rootfs: command,
// environment, working directory, and the user resolved against the
// image's own /etc/passwd and /etc/group (read inside rootfs, whatever
// symlinks it holds).
func ContainerProcess(rootfs string, cfg ocispec.ImageConfig, args []string) (specs.Process, error) {
	argv, err := Command(cfg, args)
	if err != nil {
		return specs.Process{}, err
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return specs.Process{}, fmt.Errorf("container process: %w", err)
	}
	defer root.Close()
	user, err := ResolveUser(cfg.User, func(name string) (io.ReadCloser, error) { return root.Open(name) })
	if err != nil {
		return specs.Process{}, fmt.Errorf("container process: %w", err)
	}
	cwd := cfg.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	return specs.Process{Args: argv, Env: Environment(cfg), Cwd: cwd, User: user}, nil
}

// ResolveUser reads Docker's USER forms (`name`, `uid`, `name:group`,
// `uid:gid`) into numeric ids and supplementary groups, looking names up in
// etc/passwd and etc/group opened by open. An empty user is root.
func ResolveUser(user string, open func(name string) (io.ReadCloser, error)) (specs.User, error) {
	name, group, hasGroup := strings.Cut(user, ":")
	if name == "" {
		name = "0"
	}
	u := specs.User{}
	passwd, err := readDB(open, "etc/passwd")
	if err != nil {
		return u, err
	}
	if id, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.UID = uint32(id)
		// A numeric user in passwd still brings its primary group.
		for _, f := range passwd {
			if len(f) > 3 && f[2] == name {
				if gid, err := strconv.ParseUint(f[3], 10, 32); err == nil {
					u.GID = uint32(gid)
				}
				name = f[0]
				break
			}
		}
	} else {
		found := false
		for _, f := range passwd {
			if len(f) > 3 && f[0] == name {
				uid, err1 := strconv.ParseUint(f[2], 10, 32)
				gid, err2 := strconv.ParseUint(f[3], 10, 32)
				if err1 != nil || err2 != nil {
					return u, fmt.Errorf("user %q: malformed passwd entry", name)
				}
				u.UID, u.GID, found = uint32(uid), uint32(gid), true
				break
			}
		}
		if !found {
			return u, fmt.Errorf("user %q: not in the image's /etc/passwd", name)
		}
	}
	groups, err := readDB(open, "etc/group")
	if err != nil {
		return u, err
	}
	if hasGroup {
		if gid, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(gid)
		} else {
			found := false
			for _, f := range groups {
				if len(f) > 2 && f[0] == group {
					gid, err := strconv.ParseUint(f[2], 10, 32)
					if err != nil {
						return u, fmt.Errorf("group %q: malformed group entry", group)
					}
					u.GID, found = uint32(gid), true
					break
				}
			}
			if !found {
				return u, fmt.Errorf("group %q: not in the image's /etc/group", group)
			}
		}
		return u, nil
	}
	// Supplementary groups: those listing the user as a member.
	for _, f := range groups {
		if len(f) < 4 {
			continue
		}
		for _, member := range strings.Split(f[3], ",") {
			if member == name {
				if gid, err := strconv.ParseUint(f[2], 10, 32); err == nil && uint32(gid) != u.GID {
					u.AdditionalGids = append(u.AdditionalGids, uint32(gid))
				}
			}
		}
	}
	return u, nil
}

// readDB reads a colon-separated database; a missing file is empty, as in
// images without one.
func readDB(open func(string) (io.ReadCloser, error), name string) ([][]string, error) {
	f, err := open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read /%s: %w", name, err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, strings.Split(line, ":"))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /%s: %w", name, err)
	}
	return out, nil
}
