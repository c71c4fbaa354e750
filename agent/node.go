package agent

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/berth-dev/berth/api"
)

// Labels the node loop puts on the containers it runs, so that after a
// restart it finds which container is which instance without any state of
// its own.
const (
	LabelNode     = "berth.dev/node"
	LabelTenant   = "berth.dev/tenant"
	LabelInstance = "berth.dev/instance"
	LabelTemplate = "berth.dev/template"
	// LabelCreated is when the instance was made (RFC 3339): it tells a
	// container from that of an earlier instance of the same name.
	LabelCreated = "berth.dev/created"
)

// InstanceSpec turns an instance placed on node into what the agent runs.
// network is the node's network ("" or "none": loopback only).
//
// The restart policy is deliberately not handed to the agent: the control
// plane's health manager owns restarts (back-off, crash-loop verdicts,
// rescheduling) and asks for one by raising the restart generation, so the
// container runs with "no" and every exit is reported.
func InstanceSpec(in *api.Instance, node, network string) (ContainerSpec, error) {
	t := in.Spec.Template
	if t.Network == "none" {
		network = "none"
	}
	s := ContainerSpec{
		Name:    api.ContainerName(in.Tenant, in.Name),
		Image:   t.Image,
		Tenant:  in.Tenant,
		Memory:  t.Resources.Memory,
		CPUs:    float64(t.Resources.CPU) / 1000,
		Network: network,
		Restart: RestartPolicy{Name: "no"},
		Labels:  map[string]string{},

		User:      t.User,
		Workdir:   t.Workdir,
		ReadOnly:  t.ReadOnly,
		CapAdd:    slices.Clone(t.CapAdd),
		CapDrop:   slices.Clone(t.CapDrop),
		PidsLimit: t.PidsLimit,
		NoInit:    t.NoInit,
		TTY:       t.TTY,
		Stdin:     t.Stdin,
		Ephemeral: in.Spec.AutoRemove,
	}
	if len(t.Command) > 0 {
		s.Cmd = slices.Clone(t.Command)
	}
	if len(t.Entrypoint) > 0 {
		s.Entrypoint = slices.Clone(t.Entrypoint)
	}
	for _, m := range t.Mounts {
		src := m.Source
		if m.Type == "volume" {
			src = api.VolumeName(in.Tenant, src)
		}
		s.Mounts = append(s.Mounts, Mount{Type: m.Type, Source: src, Target: m.Target, ReadOnly: m.ReadOnly})
	}
	keys := make([]string, 0, len(t.Env))
	for k := range t.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		s.Env = append(s.Env, k+"="+t.Env[k])
	}
	for k, v := range t.Labels {
		s.Labels[k] = v
	}
	s.Labels[LabelNode] = node
	s.Labels[LabelTenant] = in.Tenant
	s.Labels[LabelInstance] = in.Name
	s.Labels[LabelTemplate] = templateHash(in)
	if !in.Created.IsZero() {
		s.Labels[LabelCreated] = in.Created.UTC().Format(time.RFC3339Nano)
	}
	for i, p := range t.Ports {
		if p.HostPort == 0 {
			// Only a declaration of what the container listens on.
			continue
		}
		if network == "" || network == "none" {
			return s, fmt.Errorf("ports[%d]: host port %d needs a network, and this node runs containers with network none", i, p.HostPort)
		}
		if p.Port < 1 || p.Port > 65535 || p.HostPort < 1 || p.HostPort > 65535 {
			return s, fmt.Errorf("ports[%d]: %d:%d out of range", i, p.HostPort, p.Port)
		}
		s.Ports = append(s.Ports, PortMapping{HostPort: uint16(p.HostPort), ContainerPort: uint16(p.Port), Proto: p.Protocol})
	}
	if h := t.Health; h != nil {
		s.Health = &HealthCheck{Cmd: slices.Clone(h.Command), HTTPPath: h.HTTPPath, Port: h.Port,
			Interval: time.Duration(h.Interval), Timeout: time.Duration(h.Timeout), Retries: h.Retries}
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("instance %s/%s: %w", in.Tenant, in.Name, err)
	}
	return s, nil
}

func templateHash(in *api.Instance) string {
	if in.Spec.TemplateHash != "" {
		return in.Spec.TemplateHash
	}
	return in.Spec.Template.Hash()
}

// InstanceStatus is what the node reports for a container, restarts being
// the restart generation the node last acted on.
func InstanceStatus(c Container, restarts int) api.InstanceStatus {
	st := api.InstanceStatus{Restarts: restarts, StartedAt: c.State.StartedAt}
	switch c.State.Status {
	case StatusCreated:
		st.Phase = api.PhasePlaced
	case StatusRunning:
		st.Phase = api.PhaseRunning
		if len(c.State.Addresses) > 0 {
			st.IP = c.State.Addresses[0].Addr()
		}
		if h := c.State.Health; h != nil {
			switch h.Status {
			case "healthy":
				st.Health = api.HealthHealthy
			case "unhealthy":
				st.Health = api.HealthUnhealthy
			}
		}
	default:
		st.Phase = api.PhaseExited
		st.ExitCode = c.State.ExitCode
		st.FinishedAt = c.State.FinishedAt
		switch {
		case c.State.OOMKilled:
			st.Reason = "OOMKilled"
		case c.State.Error != "":
			st.Reason = c.State.Error
		default:
			st.Reason = "exited with code " + strconv.Itoa(c.State.ExitCode)
		}
	}
	return st
}

// runningSettle is how long the first report that a container runs waits
// after its start: one that exits within it is reported once, as exited. A
// run of `true` is over within a few milliseconds, and its report of
// running was a write to the store that no one needed, made while the run
// itself waited for the CPU.
const runningSettle = 5 * time.Millisecond

// followedSettle is how long the report of an auto-removed container's exit
// waits when a follower (a run in the foreground) took the exit: the
// server that followed it deletes the instance with the exit on record,
// and the report would be a write of the store's for nothing. Should the
// server not get to it, the report goes after all.
const followedSettle = 100 * time.Millisecond

// SettleUntil is when st may be reported, reported being what was last: a
// first report of running waits until runningSettle after the start, the
// exit of a run handed on to a follower that removes it followedSettle
// after the end; anything else may go at once (zero).
func SettleUntil(st api.InstanceStatus, reported *api.InstanceStatus, handedOn bool) time.Time {
	if handedOn && st.Phase == api.PhaseExited {
		return st.FinishedAt.Add(followedSettle)
	}
	if st.Phase != api.PhaseRunning || reported != nil && reported.Phase == api.PhaseRunning && reported.StartedAt.Equal(st.StartedAt) {
		return time.Time{}
	}
	return st.StartedAt.Add(runningSettle)
}

// SameStatus reports whether two statuses say the same about a container
// (times compared as instants, as they come back from the wire); the
// control plane's own annotations are ignored.
func SameStatus(a, b api.InstanceStatus) bool {
	return a.Phase == b.Phase && a.Reason == b.Reason && a.ExitCode == b.ExitCode && a.Restarts == b.Restarts &&
		a.IP == b.IP && a.Health == b.Health && a.StartedAt.Equal(b.StartedAt) && a.FinishedAt.Equal(b.FinishedAt)
}

// NodeAction is what the node does to bring one instance's container in
// line with the instance.
type NodeAction int

// The node's actions.
const (
	ActNone    NodeAction = iota
	ActCreate             // no container: create and start one
	ActReplace            // the container runs another template: remove it, create anew
	ActStart              // start the (created or exited) container again
	ActRestart            // stop the running container, then start it
	ActStop               // stop the container, keep it
)

func (a NodeAction) String() string {
	return [...]string{"none", "create", "replace", "start", "restart", "stop"}[a]
}

// DecideInstance chooses the action for in given the container that runs
// it (nil if none) and the restart generation last acted on.
func DecideInstance(in *api.Instance, have *Container, acted int) NodeAction {
	if in.Spec.Desired == api.DesiredStopped {
		if have != nil && (have.State.Status == StatusRunning || have.State.Status == StatusRestarting) {
			return ActStop
		}
		return ActNone
	}
	if have == nil {
		return ActCreate
	}
	if have.Spec.Labels[LabelTemplate] != templateHash(in) {
		return ActReplace
	}
	running := have.State.Status == StatusRunning
	if in.Spec.RestartGeneration > acted {
		if running {
			return ActRestart
		}
		return ActStart
	}
	// Created and never started. An exited container starts again only
	// when asked through the generation (the API raises it when a stopped
	// instance is wanted again): one killed by a user stays down.
	if have.State.Status == StatusCreated {
		return ActStart
	}
	return ActNone
}

// Handoff is what a node does with the container of an instance that left
// it (moved by a drain or a move, or rescheduled while the node was cut
// off): the container keeps serving until the instance serves elsewhere,
// then its grace period, so that a move never drops capacity and a short
// partition never causes an outage.
type Handoff int

// The handoff verdicts.
const (
	HandoffKeep   Handoff = iota // keep running
	HandoffWait                  // the new one is ready: waiting out the grace period
	HandoffRemove                // stop and remove the container now
	HandoffBack                  // the instance is this node's again
)

// DecideHandoff judges a left instance by what the control plane says of
// it now: e is nil when the instance no longer exists. readySince is when
// it was first seen ready elsewhere (zero if not yet); running says whether
// this node's container still runs (one that does not serves nothing).
func DecideHandoff(e *api.FabricEndpoint, self string, running bool, readySince, now time.Time, grace time.Duration) Handoff {
	switch {
	case e == nil, e.Stopped, !running:
		return HandoffRemove
	case e.Node == self:
		return HandoffBack
	case !e.Ready || e.Node == "":
		return HandoffKeep
	case readySince.IsZero() || now.Sub(readySince) < grace:
		return HandoffWait
	}
	return HandoffRemove
}
