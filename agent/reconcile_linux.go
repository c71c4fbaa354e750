package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/runtime"
)

// ReconcileAction is what reconcile does with one container it finds.
type ReconcileAction string

const (
	// Adopt a running container: watch it again.
	ActAdopt ReconcileAction = "adopt"
	// Record an exit that happened while no agent watched (then apply the
	// restart policy).
	ActRecordExit ReconcileAction = "record-exit"
	// Leave a container that was not running alone.
	ActKeep ReconcileAction = "keep"
	// Remove what is left of a container with no valid metadata.
	ActCleanup ReconcileAction = "cleanup"
)

// Decide is reconcile's rule for one container directory: hasMeta says its
// metadata is whole, wasRunning whether it says the container ran, and
// status what the runtime reports ("" when it has no such container).
func Decide(hasMeta, wasRunning bool, status runtime.Status) ReconcileAction {
	switch {
	case !hasMeta:
		return ActCleanup
	case status == runtime.Running || status == runtime.Paused:
		return ActAdopt
	case wasRunning || status != "":
		return ActRecordExit
	}
	return ActKeep
}

func (a *Agent) reconcile(ctx context.Context) error {
	ents, err := os.ReadDir(filepath.Join(a.cfg.Root, "containers"))
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, e := range ents {
		id := e.Name()
		if !e.IsDir() || !validName(id, 128, "") {
			continue
		}
		var meta Container
		b, err := os.ReadFile(filepath.Join(a.dir(id), "meta.json"))
		hasMeta := err == nil && json.Unmarshal(b, &meta) == nil && meta.ID == id
		var status runtime.Status
		st, err := a.cfg.Runtime.State(ctx, id)
		if err == nil {
			status = st.Status
		}
		s := meta.State.Status
		act := Decide(hasMeta, s == StatusRunning || s == StatusRestarting, status)
		a.log.Info("reconcile", "id", id, "action", act, "runtime", status)
		if act == ActCleanup {
			if err := a.destroy(id); err != nil {
				a.log.Warn("clean up leftover container", "id", id, "err", err)
			}
			continue
		}
		known[id] = true
		c := &container{meta: meta}
		a.mu.Lock()
		a.containers[id] = c
		a.mu.Unlock()
		c.mu.Lock()
		switch act {
		case ActAdopt:
			c.meta.State.Pid = st.Pid
			if werr := a.watchLocked(c, st.Pid); werr != nil {
				// It exited between State and here: record that, as
				// for one found exited; one container never stops the
				// agent from starting.
				a.log.Warn("adopt container", "id", id, "err", werr)
				a.exitLocked(c)
				a.maybeRestartLocked(c)
			}
		case ActRecordExit:
			if s == StatusRestarting {
				// It had exited already; only the restart was pending.
				a.maybeRestartLocked(c)
				break
			}
			a.exitLocked(c)
			a.maybeRestartLocked(c)
		}
		c.mu.Unlock()
	}
	// State directories of containers that are gone, their mounts first.
	// (With StateRoot at Root they are the containers' own directories.)
	// After a reboot the state root is empty: a container's runtime state
	// is gone with it, and Decide takes the container for exited.
	if a.cfg.StateRoot != a.cfg.Root {
		ents, err := os.ReadDir(filepath.Join(a.cfg.StateRoot, "containers"))
		if err != nil {
			return err
		}
		for _, e := range ents {
			if id := e.Name(); !known[id] && validName(id, 128, "") {
				a.log.Info("reconcile", "id", id, "action", "remove leftover state")
				if err := a.removeState(id); err != nil {
					a.log.Warn("clean up leftover state", "id", id, "err", err)
				}
			}
		}
	}
	// Runtime state of this agent's containers that are gone.
	list, err := a.cfg.Runtime.List(ctx)
	if err != nil {
		return err
	}
	for _, st := range list {
		if st.Annotations[annotationRoot] == a.cfg.Root && !known[st.ID] {
			if err := a.cfg.Runtime.Delete(ctx, st.ID, true); err != nil {
				a.log.Warn("delete leftover runtime state", "id", st.ID, "err", err)
			}
		}
	}
	// Cgroups under this agent's parent that no container owns.
	for _, base := range cgroupBases() {
		ents, err := os.ReadDir(filepath.Join(base, a.cgroups))
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && !known[e.Name()] {
				if cg, err := a.cgroup(e.Name()); err == nil {
					if err := cg.Destroy(); err != nil {
						a.log.Warn("remove leftover cgroup", "id", e.Name(), "err", err)
					}
				}
			}
		}
	}
	return nil
}

// cgroupBases are the hierarchies whose directories name containers.
func cgroupBases() []string {
	var out []string
	for _, p := range []string{"/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
			out = append(out, p)
		} else if !errors.Is(err, os.ErrNotExist) {
			continue
		}
	}
	return out
}
