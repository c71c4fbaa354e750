package main

import (
	"fmt"
	"github.com/berth-dev/berth/internal/sibling"
	"os"
	"syscall"

	"github.com/spf13/cobra"
)

// This executable is the lean client: it links the API client and nothing
// of the servers, so that every command starts in a few milliseconds
// (etcd's and gRPC's package initialisers alone cost tens of milliseconds,
// more than `berth run` may spend end to end). What runs a server or
// touches this machine's stores hands over to a sibling executable:
// berth-runtime for the OCI runtime, berthd for the rest.

// handover is a command served by another executable beside this one.
func handover(use, short, exe string) *cobra.Command {
	return &cobra.Command{
		Use:                use,
		Short:              short,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := sibling.Find(exe)
			if err != nil {
				return err
			}
			argv := append([]string{path}, args...)
			if exe != "berth-runtime" {
				argv = append([]string{path, cmd.Name()}, args...)
			}
			if err := syscall.Exec(path, argv, os.Environ()); err != nil {
				return fmt.Errorf("exec %s: %w", path, err)
			}
			return nil
		},
	}
}
