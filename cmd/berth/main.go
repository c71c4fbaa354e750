// Command berth is Berth's one CLI: the control plane, the node agent, the
// image store and the Docker-like verbs. The OCI runtime lives in the lean
// berth-runtime executable beside it; `berth runtime ...` hands over to it.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(exitCode(err))
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "berth",
		Short:         "Berth runs isolated containers, images, networks and services across a fleet",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newRuntimeCmd(),
		newImageCmd(),
		newSystemCmd(),
		newLoginCmd(),
		newServerCmd(),
		newUpCmd(),
		newServiceCmd(),
		newNodeCmd(),
		newTokenCmd(),
	)
	return root
}

// exitError carries a process exit code through cobra without printing twice.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 1
}
