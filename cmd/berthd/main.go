// Command berthd is the half of Berth that serves and owns state: `berth
// up`, `berth server`, and the commands on this machine's image store. The
// berth CLI hands these commands over to it, so that the CLI itself stays a
// lean API client; it can also be run directly (berthd up).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "berthd",
		Short:         "Berth's servers and this machine's image store (the berth CLI hands these commands over)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newUpCmd(), newServerCmd(), newAgentCmd(), newImageCmd(), newSystemCmd(), newLoginCmd())
	return root
}
