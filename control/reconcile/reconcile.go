// Package reconcile holds the controllers' decisions as pure functions:
// desired and observed state (and a clock value) in, actions out.
package reconcile

import (
	"fmt"
	"sort"
	"time"

	"github.com/berth-dev/berth/api"
)

// ServicePlan is what the service controller should do for one service.
type ServicePlan struct {
	Create int      // new instances of the current template
	Delete []string // instance names
	Status api.ServiceStatus
}

// Ready reports whether an instance counts as serving.
func Ready(in *api.Instance) bool {
	return in.Status.Phase == api.PhaseRunning && in.Status.Health != api.HealthUnhealthy
}

// failing reports an instance of a new template that proves it bad.
func failing(in *api.Instance) bool {
	return in.Status.CrashLoop || in.Status.Health == api.HealthUnhealthy ||
		in.Status.Phase == api.PhaseFailed ||
		in.Status.Phase == api.PhaseExited && in.Status.ExitCode != 0
}

// Service decides how to bring a service's instances to its spec: exactly
// Replicas instances; when the template changed, replace old instances
// Parallelism at a time, waiting for each batch of new ones to be ready, and
// stop the rollout as soon as a new instance fails.
func Service(svc *api.Service, instances []*api.Instance) ServicePlan {
	hash := svc.Spec.Template.Hash()
	par := svc.Spec.Parallelism
	if par <= 0 {
		par = 1
	}
	var cur, old []*api.Instance
	for _, in := range instances {
		if in.Spec.TemplateHash == hash {
			cur = append(cur, in)
		} else {
			old = append(old, in)
		}
	}
	// Delete order: not ready before ready, then by name for determinism.
	order := func(s []*api.Instance) {
		sort.Slice(s, func(i, j int) bool {
			ri, rj := Ready(s[i]), Ready(s[j])
			if ri != rj {
				return !ri
			}
			return s[i].Name > s[j].Name
		})
	}
	order(cur)
	order(old)

	st := api.ServiceStatus{TemplateHash: hash, Stable: svc.Status.Stable}
	var failed *api.Instance
	readyCur := 0
	for _, in := range cur {
		if Ready(in) {
			readyCur++
		}
		if failed == nil && failing(in) && len(old) > 0 {
			failed = in
		}
	}
	plan := ServicePlan{}
	want := svc.Spec.Replicas
	total := len(cur) + len(old)
	switch {
	case failed != nil:
		// Keep what runs; add nothing of the bad template. Rollback is the
		// user's call: it restores Status.Stable.
		st.Rollout = api.RolloutFailed
		st.Message = fmt.Sprintf("instance %s of the new template failed (%s); rollout stopped, old instances kept", failed.Name, describe(failed))
		if total > want {
			plan.Delete = names(append(append([]*api.Instance{}, old...), cur...)[:total-want])
		}
	case total > want:
		// Scale down, old template first.
		all := append(append([]*api.Instance{}, old...), cur...)
		plan.Delete = names(all[:total-want])
	case total < want:
		plan.Create = want - total
	case len(old) > 0:
		unready := len(cur) - readyCur
		if n := min(par-unready, len(old)); n > 0 {
			plan.Delete = names(old[:n])
			plan.Create = n
		}
	}
	if failed == nil {
		if len(old) == 0 && readyCur == want && total == want {
			st.Rollout = api.RolloutComplete
			t := svc.Spec.Template
			st.Stable = &t
		} else {
			st.Rollout = api.RolloutProgressing
		}
	}
	st.Replicas = total
	st.Updated = len(cur)
	for _, in := range instances {
		if Ready(in) {
			st.Ready++
		}
	}
	plan.Status = st
	return plan
}

func describe(in *api.Instance) string {
	switch {
	case in.Status.CrashLoop:
		return "crash-looping"
	case in.Status.Health == api.HealthUnhealthy:
		return "health check failing"
	case in.Status.Phase == api.PhaseExited:
		return fmt.Sprintf("exited with code %d", in.Status.ExitCode)
	}
	return in.Status.Phase + ": " + in.Status.Reason
}

func names(s []*api.Instance) []string {
	out := make([]string, len(s))
	for i, in := range s {
		out[i] = in.Name
	}
	return out
}

// Restart back-off bounds, and how many quick restarts make a crash loop.
const (
	BackoffBase     = time.Second
	BackoffMax      = time.Minute
	CrashLoopAfter  = 5
	QuickRunCeiling = 10 * time.Second
)

// HealthAction is the health manager's decision for one instance.
type HealthAction struct {
	// Restart asks the agent to start the instance again (raise the generation).
	Restart bool
	// At is when to act, or when to look again if not yet.
	At        time.Time
	CrashLoop bool
}

// Health decides whether an exited or unhealthy instance is restarted, per
// its restart policy, with exponential back-off; an instance restarted
// CrashLoopAfter times having run less than QuickRunCeiling each time is
// reported as crash-looping (and still retried at the maximum back-off).
func Health(in *api.Instance, now time.Time) (HealthAction, bool) {
	if in.Spec.Node == "" || in.Spec.Desired == api.DesiredStopped {
		return HealthAction{}, false
	}
	// The agent has not yet acted on the last restart request.
	if in.Spec.RestartGeneration > in.Status.Restarts {
		return HealthAction{}, false
	}
	s := in.Status
	down := s.Phase == api.PhaseExited || s.Phase == api.PhaseFailed ||
		s.Phase == api.PhaseRunning && s.Health == api.HealthUnhealthy
	if !down {
		return HealthAction{}, false
	}
	switch in.Spec.Template.Restart {
	case api.RestartNever:
		return HealthAction{}, false
	case api.RestartOnFailure:
		if s.Phase == api.PhaseExited && s.ExitCode == 0 {
			return HealthAction{}, false
		}
	}
	backoff := BackoffBase << min(s.Restarts, 16)
	if backoff > BackoffMax {
		backoff = BackoffMax
	}
	since := s.FinishedAt
	if since.IsZero() {
		since = now
	}
	crash := s.Restarts >= CrashLoopAfter && !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() &&
		s.FinishedAt.Sub(s.StartedAt) < QuickRunCeiling
	at := since.Add(backoff)
	return HealthAction{Restart: !now.Before(at), At: at, CrashLoop: crash}, true
}

// Removable reports whether an auto-removed instance (docker run --rm) is
// done: it ran on a node, exited or failed there, and no restart is pending.
func Removable(in *api.Instance) bool {
	if !in.Spec.AutoRemove || in.Spec.Node == "" || in.Spec.RestartGeneration > in.Status.Restarts {
		return false
	}
	return in.Status.Phase == api.PhaseExited || in.Status.Phase == api.PhaseFailed
}
