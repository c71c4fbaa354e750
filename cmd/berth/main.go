// Command berth is Berth's one CLI: the Docker-like verbs, services, nodes
// and tokens, all through the API. It stays a lean client; `berth up`,
// `server`, `image`, `system` and `login` hand over to berthd beside it, and
// `berth runtime` to berth-runtime (see runtime.go).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		// A container's own exit code is passed on without a word.
		if e, ok := err.(*exitError); !ok || e.err != nil {
			fmt.Fprintln(os.Stderr, "berth:", err)
		}
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
		handover("runtime [runc arguments]", "The OCI runtime (runc's command line), served by berth-runtime", "berth-runtime"),
		handover("up", "Run Berth on this machine: embedded etcd, the control plane and the node agent in one process", "berthd"),
		handover("server", "Run the control plane: the API, and (when elected leader) the scheduler and controllers", "berthd"),
		handover("agent", "Run this host's node agent, joined to a control plane over mutual TLS", "berthd"),
		handover("image", "Pull, push, build archives of and manage this machine's images", "berthd"),
		handover("system", "Disk usage and clean-up of this machine's Berth data", "berthd"),
		handover("login", "Check registry credentials and store them in ~/.docker/config.json", "berthd"),
		newServiceCmd(),
		newNodeCmd(), newMoveCmd(), newClusterCmd(),
		newTokenCmd(),
	)
	// The Docker-like verbs share one set of connection flags.
	af := &apiFlags{}
	for _, c := range []*cobra.Command{newRunCmd(af), newPsCmd(af), newLogsCmd(af), newExecCmd(af), newAttachCmd(af),
		newStopCmd(af), newStartCmd(af), newRestartCmd(af), newKillCmd(af), newRmCmd(af), newInspectCmd(af),
		newStatsCmd(af), newTopCmd(af), newWaitCmd(af), newCpCmd(af), newEventsCmd(af)} {
		af.add(c)
		c.GroupID = "containers"
		if c.Name() != "run" && c.Name() != "ps" && c.Name() != "events" && c.Name() != "cp" {
			c.ValidArgsFunction = completeInstances(af)
		}
		root.AddCommand(c)
	}
	root.AddGroup(&cobra.Group{ID: "containers", Title: "Containers:"})
	return root
}

// exitError carries a process exit code through cobra without printing twice.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(*exitError); ok {
		return e.code
	}
	return 1
}
