package api

import (
	"cmp"
	"fmt"
	"strings"
	"time"
)

// Limits on what a spec may ask for.
const (
	MaxReplicas = 1_000_000
	maxLabels   = 64
	maxEnv      = 1024
	maxPorts    = 64
)

// Validate checks an object a client submitted; the error is a *FieldError
// naming the first offending field.
func Validate(o Object) error {
	m := o.GetMeta()
	if err := ValidName(m.Name); err != nil {
		return &FieldError{Field: "name", Message: err.Error()}
	}
	if o.Kind().TenantScoped() {
		if err := ValidName(m.Tenant); err != nil {
			return &FieldError{Field: "tenant", Message: err.Error()}
		}
	} else if m.Tenant != "" {
		return &FieldError{Field: "tenant", Message: string(o.Kind()) + " are not tenant-scoped"}
	}
	if err := validLabels("labels", m.Labels); err != nil {
		return err
	}
	switch v := o.(type) {
	case *Tenant:
		if len(v.Description) > 1024 {
			return &FieldError{Field: "description", Message: "longer than 1024 bytes"}
		}
	case *Token:
		switch v.Role {
		case RoleAdmin, RoleTenantAdmin, RoleReadOnly:
			if v.Node != "" {
				return &FieldError{Field: "node", Message: "only node tokens name a node"}
			}
		case RoleNode:
			if err := ValidName(v.Node); err != nil {
				return &FieldError{Field: "node", Message: err.Error()}
			}
		case RoleJoin:
			if v.Expires.IsZero() {
				return &FieldError{Field: "expires", Message: "a join token must expire"}
			}
		default:
			return &FieldError{Field: "role", Message: fmt.Sprintf("unknown role %q (admin, tenant-admin, read-only, node, join)", v.Role)}
		}
		if (v.Role == RoleAdmin || v.Role == RoleNode || v.Role == RoleJoin) && v.Tenant != SystemTenant {
			return &FieldError{Field: "role", Message: string(v.Role) + " tokens belong to the system tenant"}
		}
	case *Node:
		return validNodeSpec("spec", v.Spec)
	case *Service:
		if v.Spec.Replicas < 0 || v.Spec.Replicas > MaxReplicas {
			return &FieldError{Field: "spec.replicas", Message: fmt.Sprintf("must be between 0 and %d", MaxReplicas)}
		}
		if v.Spec.Parallelism < 0 {
			return &FieldError{Field: "spec.parallelism", Message: "must not be negative"}
		}
		return ValidTemplate("spec.template", v.Spec.Template)
	case *Instance:
		if v.Spec.Service != "" {
			if err := ValidName(v.Spec.Service); err != nil {
				return &FieldError{Field: "spec.service", Message: err.Error()}
			}
		}
		for _, f := range []struct{ name, v string }{{"spec.node", v.Spec.Node}, {"spec.pin", v.Spec.Pin}} {
			if f.v != "" {
				if err := ValidName(f.v); err != nil {
					return &FieldError{Field: f.name, Message: err.Error()}
				}
			}
		}
		switch v.Spec.Desired {
		case "", DesiredRunning, DesiredStopped:
		default:
			return &FieldError{Field: "spec.desired", Message: "must be running or stopped"}
		}
		if v.Spec.AutoRemove && v.Spec.Service != "" {
			return &FieldError{Field: "spec.autoRemove", Message: "a service's instances are not auto-removed"}
		}
		if v.Spec.AutoRemove && v.Spec.Template.Restart != RestartNever {
			return &FieldError{Field: "spec.autoRemove", Message: "conflicts with restart policy " + cmp.Or(v.Spec.Template.Restart, RestartAlways) + " (auto-removal needs restart never)"}
		}
		if v.Spec.RestartGeneration < 0 {
			return &FieldError{Field: "spec.restartGeneration", Message: "must not be negative"}
		}
		if !v.Spec.StopAt.IsZero() && v.Spec.Service == "" {
			return &FieldError{Field: "spec.stopAt", Message: "set by the service controller on a service's instances only"}
		}
		return ValidTemplate("spec.template", v.Spec.Template)
	case *AddressBlock:
		if !v.Prefix.IsValid() {
			return &FieldError{Field: "prefix", Message: "required (a CIDR such as 10.1.0.0/24)"}
		}
		if v.Prefix != v.Prefix.Masked() {
			return &FieldError{Field: "prefix", Message: fmt.Sprintf("%s has host bits set; did you mean %s?", v.Prefix, v.Prefix.Masked())}
		}
		if v.Node != "" {
			if err := ValidName(v.Node); err != nil {
				return &FieldError{Field: "node", Message: err.Error()}
			}
		}
	case *Event:
		if len(v.Message) > 4096 {
			return &FieldError{Field: "message", Message: "longer than 4096 bytes"}
		}
	}
	return nil
}

// ValidName checks that s is a DNS label: 1-63 of a-z, 0-9 and '-', not
// starting or ending with '-'.
func ValidName(s string) error {
	if s == "" {
		return fmt.Errorf("required")
	}
	if len(s) > 63 {
		return fmt.Errorf("%q is longer than 63 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i != 0 && i != len(s)-1
		if !ok {
			return fmt.Errorf("%q is not a DNS label (lower-case letters, digits and inner '-')", s)
		}
	}
	return nil
}

func validLabelKey(k string) string {
	if k == "" || len(k) > 63 {
		return "label key must be 1-63 characters"
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_./", c) >= 0) {
			return fmt.Sprintf("label key %q has character %q (allowed: letters, digits, - _ . /)", k, c)
		}
	}
	return ""
}

func validLabelValue(v string) string {
	if len(v) > 63 {
		return "label value longer than 63 characters"
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.", c) >= 0) {
			return fmt.Sprintf("label value %q has character %q (allowed: letters, digits, - _ .)", v, c)
		}
	}
	return ""
}

func validLabels(field string, l map[string]string) error {
	if len(l) > maxLabels {
		return &FieldError{Field: field, Message: fmt.Sprintf("more than %d labels", maxLabels)}
	}
	for k, v := range l {
		if msg := validLabelKey(k); msg != "" {
			return &FieldError{Field: field, Message: msg}
		}
		if msg := validLabelValue(v); msg != "" {
			return &FieldError{Field: field + "." + k, Message: msg}
		}
	}
	return nil
}

func validResources(field string, r Resources) error {
	if r.CPU < 0 {
		return &FieldError{Field: field + ".cpu", Message: fmt.Sprintf("negative CPU %d", r.CPU)}
	}
	if r.Memory < 0 {
		return &FieldError{Field: field + ".memory", Message: fmt.Sprintf("negative memory %d", r.Memory)}
	}
	return nil
}

func validNodeSpec(field string, s NodeSpec) error {
	if err := validResources(field+".capacity", s.Capacity); err != nil {
		return err
	}
	if s.Capacity.CPU == 0 || s.Capacity.Memory == 0 {
		return &FieldError{Field: field + ".capacity", Message: "a node must declare its CPU and memory"}
	}
	return nil
}

// ValidTemplate checks a container template.
func ValidTemplate(field string, t Template) error {
	if strings.TrimSpace(t.Image) == "" {
		return &FieldError{Field: field + ".image", Message: "required"}
	}
	if len(t.Image) > 512 || strings.ContainsAny(t.Image, " \t\n") {
		return &FieldError{Field: field + ".image", Message: fmt.Sprintf("%q is not an image reference", t.Image)}
	}
	if err := validResources(field+".resources", t.Resources); err != nil {
		return err
	}
	if len(t.Env) > maxEnv {
		return &FieldError{Field: field + ".env", Message: fmt.Sprintf("more than %d variables", maxEnv)}
	}
	for k := range t.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return &FieldError{Field: field + ".env", Message: fmt.Sprintf("bad variable name %q", k)}
		}
	}
	if len(t.Ports) > maxPorts {
		return &FieldError{Field: field + ".ports", Message: fmt.Sprintf("more than %d ports", maxPorts)}
	}
	hostPorts := map[string]bool{}
	for i, p := range t.Ports {
		f := fmt.Sprintf("%s.ports[%d]", field, i)
		if p.Port < 1 || p.Port > 65535 {
			return &FieldError{Field: f + ".port", Message: fmt.Sprintf("%d is not a port (1-65535)", p.Port)}
		}
		if p.HostPort < 0 || p.HostPort > 65535 {
			return &FieldError{Field: f + ".hostPort", Message: fmt.Sprintf("%d is not a port (1-65535)", p.HostPort)}
		}
		switch p.Protocol {
		case "", "tcp", "udp":
		default:
			return &FieldError{Field: f + ".protocol", Message: "must be tcp or udp"}
		}
		if p.HostPort != 0 {
			k := HostPortKey(p)
			if hostPorts[k] {
				return &FieldError{Field: f + ".hostPort", Message: "host port " + k + " listed twice"}
			}
			hostPorts[k] = true
		}
	}
	if h := t.Health; h != nil {
		if len(h.Command) == 0 && h.HTTPPath == "" && h.Port == 0 {
			return &FieldError{Field: field + ".health", Message: "needs a command, an httpPath with a port, or a port alone (TCP connect)"}
		}
		if len(h.Command) > 0 && (h.HTTPPath != "" || h.Port != 0) {
			return &FieldError{Field: field + ".health", Message: "a command check takes no httpPath or port"}
		}
		if h.Port < 0 || h.Port > 65535 {
			return &FieldError{Field: field + ".health.port", Message: fmt.Sprintf("%d is not a port (1-65535)", h.Port)}
		}
		if h.HTTPPath != "" && (h.Port < 1 || h.Port > 65535) {
			return &FieldError{Field: field + ".health.port", Message: "an HTTP check needs a port (1-65535)"}
		}
		if h.Interval < 0 || h.Timeout < 0 || h.Retries < 0 {
			return &FieldError{Field: field + ".health", Message: "interval, timeout and retries must not be negative"}
		}
	}
	switch t.Restart {
	case "", RestartAlways, RestartOnFailure, RestartNever:
	default:
		return &FieldError{Field: field + ".restart", Message: fmt.Sprintf("unknown restart policy %q (always, on-failure, never)", t.Restart)}
	}
	if err := validLabels(field+".labels", t.Labels); err != nil {
		return err
	}
	if t.PidsLimit < 0 {
		return &FieldError{Field: field + ".pidsLimit", Message: "must not be negative"}
	}
	if g := t.StopGracePeriod; g != nil && (*g < 0 || time.Duration(*g) > MaxStopGracePeriod) {
		return &FieldError{Field: field + ".stopGracePeriod", Message: fmt.Sprintf("%v is not between 0s and %v", time.Duration(*g), MaxStopGracePeriod)}
	}
	switch t.Network {
	case "", "none":
	default:
		return &FieldError{Field: field + ".network", Message: fmt.Sprintf("unknown network %q (none, or empty for the node's)", t.Network)}
	}
	if t.Workdir != "" && !strings.HasPrefix(t.Workdir, "/") {
		return &FieldError{Field: field + ".workdir", Message: fmt.Sprintf("%q is not an absolute path", t.Workdir)}
	}
	targets := map[string]bool{}
	for i, m := range t.Mounts {
		f := fmt.Sprintf("%s.mounts[%d]", field, i)
		switch m.Type {
		case MountVolume:
			if err := ValidName(m.Source); err != nil {
				return &FieldError{Field: f + ".source", Message: "volume name: " + err.Error()}
			}
		case MountBind:
			if !strings.HasPrefix(m.Source, "/") {
				return &FieldError{Field: f + ".source", Message: fmt.Sprintf("%q is not an absolute host path", m.Source)}
			}
		default:
			return &FieldError{Field: f + ".type", Message: fmt.Sprintf("unknown mount type %q (volume, bind)", m.Type)}
		}
		if !strings.HasPrefix(m.Target, "/") || m.Target == "/" {
			return &FieldError{Field: f + ".target", Message: fmt.Sprintf("%q is not an absolute path below /", m.Target)}
		}
		if targets[m.Target] {
			return &FieldError{Field: f + ".target", Message: m.Target + " mounted twice"}
		}
		targets[m.Target] = true
	}
	return validConstraints(field+".constraints", t.Constraints)
}

// HasBindMount reports whether t mounts a host path, which only admins may ask for:
// a host path reaches outside every tenant's boundary.
func (t Template) HasBindMount() bool {
	for _, m := range t.Mounts {
		if m.Type == MountBind {
			return true
		}
	}
	return false
}

// HostPortKey names a host port reservation: "8080/tcp".
func HostPortKey(p Port) string {
	proto := p.Protocol
	if proto == "" {
		proto = "tcp"
	}
	return fmt.Sprintf("%d/%s", p.HostPort, proto)
}

// validConstraints rejects malformed constraints and sets no node can ever
// satisfy (key==a with key==b, or key==a with key!=a).
func validConstraints(field string, cs []Constraint) error {
	eq := map[string]string{}
	for i, c := range cs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if msg := validLabelKey(c.Key); msg != "" {
			return &FieldError{Field: f + ".key", Message: msg}
		}
		switch c.Op {
		case OpEqual, OpNotEqual:
			if msg := validLabelValue(c.Value); msg != "" {
				return &FieldError{Field: f + ".value", Message: msg}
			}
		case OpExists:
			if c.Value != "" {
				return &FieldError{Field: f + ".value", Message: "exists takes no value"}
			}
		default:
			return &FieldError{Field: f + ".op", Message: fmt.Sprintf("unknown op %q (==, !=, exists)", c.Op)}
		}
		if c.Op == OpEqual {
			if prev, ok := eq[c.Key]; ok && prev != c.Value {
				return &FieldError{Field: f, Message: fmt.Sprintf("impossible: %s=%s and %s=%s", c.Key, prev, c.Key, c.Value)}
			}
			eq[c.Key] = c.Value
		}
	}
	for i, c := range cs {
		if c.Op == OpNotEqual {
			if v, ok := eq[c.Key]; ok && v == c.Value {
				return &FieldError{Field: fmt.Sprintf("%s[%d]", field, i), Message: fmt.Sprintf("impossible: %s both required and excluded", c)}
			}
		}
	}
	return nil
}
