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
	Create int // new instances of the current template
	// Retire are instances (names) to take out of the endpoints now and
	// delete once their grace period has passed: StopAt maps each to its
	// deadline.
	Retire map[string]time.Time
	// Delete are instances (names) to delete now: retiring ones whose
	// deadline passed, and surplus ones that were not serving (or have no
	// grace period).
	Delete []string
	Status api.ServiceStatus
}

// Retiring reports whether the service controller has taken an instance
// out of service, to be deleted at its StopAt.
func Retiring(in *api.Instance) bool { return !in.Spec.StopAt.IsZero() }

// Ready reports whether an instance serves: placed, running, not retiring,
// and healthy, or, without a health check, not reported unhealthy. A new
// instance with a health check is not ready before its first check passes.
func Ready(in *api.Instance) bool {
	if Retiring(in) || in.Spec.Node == "" || in.Spec.Desired == api.DesiredStopped || in.Status.Phase != api.PhaseRunning {
		return false
	}
	if in.Spec.Template.Health != nil {
		return in.Status.Health == api.HealthHealthy
	}
	return in.Status.Health != api.HealthUnhealthy
}

// Endpoints are where a service's traffic may go: its ready instances that
// have an address, by instance name.
func Endpoints(svc *api.Service, instances []*api.Instance) []api.Endpoint {
	out := []api.Endpoint{}
	for _, in := range instances {
		if in.Tenant != svc.Tenant || in.Spec.Service != svc.Name || !Ready(in) || !in.Status.IP.IsValid() {
			continue
		}
		out = append(out, api.Endpoint{Instance: in.Name, Node: in.Spec.Node, IP: in.Status.IP, Ports: in.Spec.Template.Ports})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Instance < out[j].Instance })
	return out
}

// failing reports an instance of a new template that proves it bad.
func failing(in *api.Instance) bool {
	return in.Status.CrashLoop || in.Status.Health == api.HealthUnhealthy ||
		in.Status.Phase == api.PhaseFailed ||
		in.Status.Phase == api.PhaseExited && in.Status.ExitCode != 0
}

// Service decides how to bring a service's instances to its spec at time
// now. Retiring instances count toward nothing: replacements are made
// without waiting for them, and each is deleted once its StopAt passes.
//
// Of the rest there should be Replicas. A surplus instance that serves is
// retired (out of the endpoints now, stopped after its template's grace
// period); one that does not is deleted at once. When the template changed,
// new instances are added Parallelism at a time above Replicas, and an old
// one retires only while the serving instances stay at least Replicas, so a
// rolling update never shrinks the endpoints below the desired count. The
// rollout stops as soon as a new instance fails, keeping every old one.
//
// Instances on draining nodes count toward nothing either: they are
// replaced at once, and each retires only while the others serve Replicas
// without it, so a drain keeps the service's capacity throughout.
func Service(svc *api.Service, instances []*api.Instance, draining map[string]bool, now time.Time) ServicePlan {
	hash := svc.Spec.Template.Hash()
	par := max(svc.Spec.Parallelism, 1)
	plan := ServicePlan{}
	var cur, old, evac []*api.Instance
	retiring := 0
	for _, in := range instances {
		switch {
		case Retiring(in):
			if !now.Before(in.Spec.StopAt) {
				plan.Delete = append(plan.Delete, in.Name)
			} else {
				retiring++
			}
		case draining[in.Spec.Node]:
			evac = append(evac, in)
		case in.Spec.TemplateHash == hash:
			cur = append(cur, in)
		default:
			old = append(old, in)
		}
	}
	sort.Strings(plan.Delete)

	st := api.ServiceStatus{TemplateHash: hash, Stable: svc.Status.Stable, Retiring: retiring}
	var failed *api.Instance
	readyCur, readyOld := 0, 0
	for _, in := range cur {
		if Ready(in) {
			readyCur++
		}
		if failing(in) && len(old) > 0 && (failed == nil || in.Name < failed.Name) {
			failed = in
		}
	}
	for _, in := range old {
		if Ready(in) {
			readyOld++
		}
	}
	want := svc.Spec.Replicas
	total := len(cur) + len(old)
	if failed == nil {
		surge := 0
		if len(old) > 0 {
			surge = par
		}
		plan.Create = max(0, min(want+surge-total, want-len(cur)))
	}

	// Surplus candidates: every old instance, and new ones beyond Replicas;
	// never a failing one, which stays as the reason the rollout stopped.
	cand := append([]*api.Instance{}, old...)
	var extra []*api.Instance
	for _, in := range cur {
		if failed == nil || !failing(in) {
			extra = append(extra, in)
		}
	}
	if n := len(cur) - want; n > 0 {
		// Sorted only when some are surplus: a service of a hundred
		// thousand instances would otherwise sort them all every cycle.
		sortSurplus(extra, nil)
		cand = append(cand, extra[:min(n, len(extra))]...)
	}
	oldSet := map[*api.Instance]bool{}
	for _, in := range old {
		oldSet[in] = true
	}
	sortSurplus(cand, oldSet)
	serving := readyCur + readyOld
	surplus := total - want
	removedCur := 0
	for _, in := range cand {
		if surplus <= 0 {
			break
		}
		if Ready(in) {
			if serving <= want {
				// Only unready candidates follow: none may go.
				break
			}
			serving--
		}
		plan.remove(in, now)
		if !oldSet[in] {
			removedCur++
		}
		surplus--
	}
	// Then the instances of draining nodes, by the same rule.
	placed := serving
	for _, in := range evac {
		if Ready(in) {
			serving++
		}
	}
	sortSurplus(evac, nil)
	evacLeft := len(evac)
	for _, in := range evac {
		if Ready(in) {
			if serving <= want {
				break
			}
			serving--
		}
		plan.remove(in, now)
		evacLeft--
	}

	// The counts are those after the plan: what the endpoints will hold.
	removed := total - want - surplus
	curLeft, oldLeft := len(cur)-removedCur, len(old)-(removed-removedCur)
	switch {
	case failed != nil:
		// Keep what runs; add nothing of the bad template. Rollback is the
		// user's call: it restores Status.Stable.
		st.Rollout = api.RolloutFailed
		st.Message = fmt.Sprintf("instance %s of the new template failed (%s); rollout stopped, old instances kept", failed.Name, describe(failed))
	case oldLeft == 0 && curLeft == want && placed == want && evacLeft == 0:
		st.Rollout = api.RolloutComplete
		t := svc.Spec.Template
		st.Stable = &t
	default:
		st.Rollout = api.RolloutProgressing
	}
	st.Replicas = curLeft + oldLeft + evacLeft
	st.Updated = curLeft
	st.Ready = serving
	st.Retiring += len(plan.Retire)
	plan.Status = st
	return plan
}

// remove retires an instance that serves, for its grace period, and
// deletes one that does not (or has none).
func (p *ServicePlan) remove(in *api.Instance, now time.Time) {
	if g := in.Spec.Template.GracePeriod(); g > 0 && Ready(in) {
		if p.Retire == nil {
			p.Retire = map[string]time.Time{}
		}
		p.Retire[in.Name] = now.Add(g)
		return
	}
	p.Delete = append(p.Delete, in.Name)
}

// sortSurplus orders instances for removal: those not serving first, then
// (if old is given) the old template before the new, then by name, last
// first.
func sortSurplus(s []*api.Instance, old map[*api.Instance]bool) {
	sort.Slice(s, func(i, j int) bool {
		if ri, rj := Ready(s[i]), Ready(s[j]); ri != rj {
			return !ri
		}
		if oi, oj := old[s[i]], old[s[j]]; oi != oj {
			return oi
		}
		return s[i].Name > s[j].Name
	})
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
	// A retiring instance is on its way out: restarting it serves no one.
	if in.Spec.Node == "" || in.Spec.Desired == api.DesiredStopped || Retiring(in) {
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
