// Package sibling finds Berth's executables beside the running one: berth
// hands commands over to berthd and berth-runtime, berthd runs
// berth-runtime and berth-init.
package sibling

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
)

// Find returns the path of executable name beside the running one, else on
// PATH.
func Find(name string) (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errors.New(name + " not found beside " + filepath.Base(os.Args[0]) + " or on PATH: build it with hack/build.sh")
	}
	return p, nil
}
