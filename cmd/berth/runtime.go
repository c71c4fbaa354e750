package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// newRuntimeCmd hands `berth runtime ARGS` to berth-runtime. The runtime is a
// separate, lean executable because this binary links etcd and gRPC, whose
// package initialisers alone cost ~30 ms per process start, more than a whole
// container start is allowed to take.
func newRuntimeCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "runtime [runc arguments]",
		Short:              "The OCI runtime (runc's command line), served by berth-runtime",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := runtimePath()
			if err != nil {
				return err
			}
			argv := append([]string{path}, args...)
			if err := syscall.Exec(path, argv, os.Environ()); err != nil {
				return fmt.Errorf("exec %s: %w", path, err)
			}
			return nil
		},
	}
}

// runtimePath finds berth-runtime beside this executable, then on PATH.
func runtimePath() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "berth-runtime")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("berth-runtime")
	if err != nil {
		return "", errors.New("berth-runtime not found beside berth or on PATH: build it with hack/build.sh")
	}
	return p, nil
}
