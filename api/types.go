// Package api holds Berth's versioned wire types (/v1), their validation, the
// strict decoder the server uses for request bodies, and the Go client that
// the CLI, the node agent and every test speak.
package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"time"
)

// Version is the API version every path starts with.
const Version = "v1"

// Kind names a collection; it is also the path segment under /v1.
type Kind string

// The kinds of object the control plane stores.
const (
	KindTenant       Kind = "tenants"
	KindToken        Kind = "tokens"
	KindNode         Kind = "nodes"
	KindService      Kind = "services"
	KindInstance     Kind = "instances"
	KindAddressBlock Kind = "addressblocks"
	KindEvent        Kind = "events"
)

// Kinds lists every kind, cluster-scoped ones first.
func Kinds() []Kind {
	return []Kind{KindTenant, KindNode, KindAddressBlock, KindToken, KindService, KindInstance, KindEvent}
}

// TenantScoped reports whether objects of k live inside a tenant.
func (k Kind) TenantScoped() bool {
	switch k {
	case KindToken, KindService, KindInstance, KindEvent:
		return true
	}
	return false
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	for _, x := range Kinds() {
		if x == k {
			return true
		}
	}
	return false
}

// SystemTenant holds the cluster's own tokens (admins, nodes).
const SystemTenant = "system"

// DefaultTenant is made at bootstrap: where commands that name no tenant act.
const DefaultTenant = "default"

// Meta is common to every object.
type Meta struct {
	Name string `json:"name"`
	// Tenant is empty for cluster-scoped kinds (tenants, nodes, address blocks).
	Tenant string            `json:"tenant,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// ResourceVersion is the store revision of the object's last write. An
	// update or delete carrying it fails with 409 if the object changed since.
	ResourceVersion int64     `json:"resourceVersion,omitempty"`
	Created         time.Time `json:"created,omitzero"`
}

// Object is implemented by every stored type.
type Object interface {
	GetMeta() *Meta
	Kind() Kind
}

// GetMeta returns the object's metadata.
func (m *Meta) GetMeta() *Meta { return m }

// Tenant is an isolation boundary: its objects, tokens and networks.
type Tenant struct {
	Meta
	Description string `json:"description,omitempty"`
}

// Kind implements Object.
func (*Tenant) Kind() Kind { return KindTenant }

// Role is what a token may do.
type Role string

// Roles, from most to least powerful.
const (
	RoleAdmin       Role = "admin"        // everything, every tenant
	RoleTenantAdmin Role = "tenant-admin" // read and write its own tenant's objects
	RoleReadOnly    Role = "read-only"    // read its own tenant's objects
	RoleNode        Role = "node"         // one node agent: its node, its instances
)

// Token is a bearer credential. The secret is returned once, on create; the
// store keeps only its hash.
type Token struct {
	Meta
	Role Role `json:"role"`
	// Node binds a node token to the node it may act as.
	Node string `json:"node,omitempty"`
	// Secret is set only in the response to create: "tenant.name.random".
	Secret     string `json:"secret,omitempty"`
	SecretHash string `json:"secretHash,omitempty"`
	// Expires, when set, ends the token (join tokens always have it).
	Expires time.Time `json:"expires,omitzero"`
	// Certificate is the fingerprint of the node's current client
	// certificate: a node that joined authenticates with it rather than a
	// secret, and a renewal or the node's removal revokes the old one.
	Certificate string `json:"certificate,omitempty"`
	// PreviousCertificate stays good after a renewal, for the requests
	// already on their way with it; the next renewal drops it.
	PreviousCertificate string `json:"previousCertificate,omitempty"`
}

// Kind implements Object.
func (*Token) Kind() Kind { return KindToken }

// Resources are CPU in millicores and memory in bytes.
type Resources struct {
	CPU    int64 `json:"cpu,omitempty"`
	Memory int64 `json:"memory,omitempty"`
}

// Add returns r+o.
func (r Resources) Add(o Resources) Resources {
	return Resources{CPU: r.CPU + o.CPU, Memory: r.Memory + o.Memory}
}

// Sub returns r-o.
func (r Resources) Sub(o Resources) Resources {
	return Resources{CPU: r.CPU - o.CPU, Memory: r.Memory - o.Memory}
}

// Node is one host running the agent.
type Node struct {
	Meta
	Spec   NodeSpec   `json:"spec"`
	Status NodeStatus `json:"status,omitzero"`
}

// Kind implements Object.
func (*Node) Kind() Kind { return KindNode }

// NodeSpec is what a node declares at registration, plus the operator's marks.
type NodeSpec struct {
	Capacity Resources  `json:"capacity"`
	Address  netip.Addr `json:"address,omitzero"`
	// AgentURL is where the control plane reaches the node's agent for
	// logs, exec, attach, stats, top, copy and kill: "unix:///path" for an
	// agent on the server's machine.
	AgentURL string `json:"agentURL,omitempty"`
	// Unschedulable keeps new instances off the node.
	Unschedulable bool `json:"unschedulable,omitempty"`
	// Drain moves the node's instances elsewhere, then marks it unschedulable.
	Drain bool `json:"drain,omitempty"`
}

// Node phases.
const (
	NodeReady    = "ready"
	NodeNotReady = "not-ready"
	NodeDraining = "draining"
	NodeDrained  = "drained"
)

// NodeStatus is kept by the control plane.
type NodeStatus struct {
	Phase         string    `json:"phase,omitempty"`
	Lease         int64     `json:"lease,omitempty"`
	LeaseTTL      int64     `json:"leaseTTL,omitempty"` // seconds
	LastHeartbeat time.Time `json:"lastHeartbeat,omitzero"`
	Message       string    `json:"message,omitempty"`
}

// Port is a port a container listens on. HostPort, when set, is reserved on
// the node, so two instances needing the same one never share a node.
type Port struct {
	Port     int    `json:"port"`
	HostPort int    `json:"hostPort,omitempty"`
	Protocol string `json:"protocol,omitempty"` // tcp (default) or udp
}

// HealthCheck is run by the agent inside or against the container: a
// command in it, an HTTP GET of HTTPPath on Port, or (Port alone) a TCP
// connect.
type HealthCheck struct {
	Command  []string `json:"command,omitempty"`
	HTTPPath string   `json:"httpPath,omitempty"`
	Port     int      `json:"port,omitempty"`
	Interval Duration `json:"interval,omitempty"`
	Timeout  Duration `json:"timeout,omitempty"`
	Retries  int      `json:"retries,omitempty"`
}

// Restart policies.
const (
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// Constraint ops.
const (
	OpEqual    = "=="
	OpNotEqual = "!="
	OpExists   = "exists"
)

// Constraint restricts placement to nodes whose label Key matches.
type Constraint struct {
	Key   string `json:"key"`
	Op    string `json:"op"`
	Value string `json:"value,omitempty"`
}

func (c Constraint) String() string {
	if c.Op == OpExists {
		return c.Key
	}
	return c.Key + c.Op + c.Value
}

// Matches reports whether a node with these labels satisfies c.
func (c Constraint) Matches(labels map[string]string) bool {
	v, ok := labels[c.Key]
	switch c.Op {
	case OpEqual:
		return ok && v == c.Value
	case OpNotEqual:
		return !ok || v != c.Value
	case OpExists:
		return ok
	}
	return false
}

// Template is one container: what a service stamps out and what `berth run`
// submits on its own.
type Template struct {
	Image       string            `json:"image"`
	Command     []string          `json:"command,omitempty"`
	Env         map[string]string `json:"env,omitempty"`
	Resources   Resources         `json:"resources,omitzero"`
	Ports       []Port            `json:"ports,omitempty"`
	Health      *HealthCheck      `json:"health,omitempty"`
	Restart     string            `json:"restart,omitempty"`
	Constraints []Constraint      `json:"constraints,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`

	// Entrypoint, when set, replaces the image's (docker run --entrypoint);
	// Command then replaces its CMD.
	Entrypoint []string `json:"entrypoint,omitempty"`
	User       string   `json:"user,omitempty"`
	Workdir    string   `json:"workdir,omitempty"`
	ReadOnly   bool     `json:"readOnly,omitempty"`
	CapAdd     []string `json:"capAdd,omitempty"`
	CapDrop    []string `json:"capDrop,omitempty"`
	PidsLimit  int64    `json:"pidsLimit,omitempty"`
	Mounts     []Mount  `json:"mounts,omitempty"`
	// NoInit runs the workload itself as PID 1 instead of Berth's init.
	NoInit bool `json:"noInit,omitempty"`
	// TTY gives the workload a terminal; Stdin keeps its standard input
	// open for attach (docker run -t and -i).
	TTY   bool `json:"tty,omitempty"`
	Stdin bool `json:"stdin,omitempty"`
	// Network "none" gives the container loopback only, whatever its
	// node's network; "" attaches it to the node's network.
	Network string `json:"network,omitempty"`
	// StopGracePeriod is how long an instance stays up after leaving its
	// service's endpoints before it is signalled (DefaultStopGracePeriod
	// when unset; 0 signals at once). A pointer, so that unset and 0
	// differ and templates that never set it keep their hash.
	StopGracePeriod *Duration `json:"stopGracePeriod,omitempty"`
}

// Mount types.
const (
	MountVolume = "volume" // a named volume, kept on the node across replacement
	MountBind   = "bind"   // a host path; admin tokens only
)

// Mount is a volume or a host path in a container.
type Mount struct {
	Type     string `json:"type"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// Hash identifies a template's content; instances carry the hash they were
// made from, so a changed template is seen as a rollout.
func (t Template) Hash() string {
	b, _ := json.Marshal(t) // maps marshal sorted: stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Service is a template and how many instances of it should run.
type Service struct {
	Meta
	Spec   ServiceSpec   `json:"spec"`
	Status ServiceStatus `json:"status,omitzero"`
}

// Kind implements Object.
func (*Service) Kind() Kind { return KindService }

// ServiceSpec is what the user asks for.
type ServiceSpec struct {
	Replicas int      `json:"replicas"`
	Template Template `json:"template"`
	// Parallelism is how many instances a rolling update replaces at a time.
	Parallelism int `json:"parallelism,omitempty"`
}

// Rollout states.
const (
	RolloutComplete    = "complete"
	RolloutProgressing = "progressing"
	RolloutFailed      = "failed"
)

// ServiceStatus is kept by the service controller.
type ServiceStatus struct {
	Replicas     int    `json:"replicas"`
	Ready        int    `json:"ready"`
	Updated      int    `json:"updated"`
	TemplateHash string `json:"templateHash,omitempty"`
	Rollout      string `json:"rollout,omitempty"`
	Message      string `json:"message,omitempty"`
	// Stable is the last template fully rolled out: what rollback restores.
	Stable *Template `json:"stable,omitempty"`
	// Retiring counts instances out of the endpoints, waiting out their
	// grace period before they are stopped; Replicas does not count them.
	Retiring int `json:"retiring,omitempty"`
}

// Instance desired states.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
)

// Instance phases.
const (
	PhasePending = "pending" // waiting for a node
	PhasePlaced  = "placed"  // on a node, not yet reported running
	PhaseRunning = "running"
	PhaseExited  = "exited"
	PhaseFailed  = "failed" // the agent could not start it
	PhaseLost    = "lost"   // its node died
)

// Health values.
const (
	HealthUnknown   = ""
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Instance is one container, of a service or standalone.
type Instance struct {
	Meta
	Spec   InstanceSpec   `json:"spec"`
	Status InstanceStatus `json:"status,omitzero"`
}

// Kind implements Object.
func (*Instance) Kind() Kind { return KindInstance }

// InstanceSpec is desired state: written by users and controllers, read by
// the agent of Node.
type InstanceSpec struct {
	Service      string   `json:"service,omitempty"`
	Template     Template `json:"template"`
	TemplateHash string   `json:"templateHash,omitempty"`
	// Node is where the scheduler placed it; empty while pending.
	Node string `json:"node,omitempty"`
	// Pin restricts placement to one node (berth instance move).
	Pin     string `json:"pin,omitempty"`
	Desired string `json:"desired,omitempty"`
	// RestartGeneration is raised by the health manager, or by a user's
	// update (berth restart), to ask the agent to start the container
	// again; the agent reports it back as Status.Restarts.
	RestartGeneration int `json:"restartGeneration,omitempty"`
	// AutoRemove deletes the instance once it has exited and will not be
	// restarted (docker run --rm).
	AutoRemove bool `json:"autoRemove,omitempty"`
	// StopAt, set by the service controller, marks the instance retiring:
	// it left its service's endpoints when StopAt was set, and is deleted
	// (its container signalled) once StopAt has passed.
	StopAt time.Time `json:"stopAt,omitzero"`
}

// InstanceStatus is observed state: reported by the agent, annotated by the
// control plane.
type InstanceStatus struct {
	Phase      string     `json:"phase,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	ExitCode   int        `json:"exitCode,omitempty"`
	Restarts   int        `json:"restarts,omitempty"`
	IP         netip.Addr `json:"ip,omitzero"`
	Health     string     `json:"health,omitempty"`
	CrashLoop  bool       `json:"crashLoop,omitempty"`
	StartedAt  time.Time  `json:"startedAt,omitzero"`
	FinishedAt time.Time  `json:"finishedAt,omitzero"`
	// ObservedNode is the node that last reported this status.
	ObservedNode string `json:"observedNode,omitempty"`
}

// AddressBlock is a block of container addresses, claimed by one node at a
// time for its IPAM.
type AddressBlock struct {
	Meta
	Prefix netip.Prefix `json:"prefix"`
	// Node is the claimant; empty when free. Changed only through claim and
	// release, which are transactional.
	Node string `json:"node,omitempty"`
}

// Kind implements Object.
func (*AddressBlock) Kind() Kind { return KindAddressBlock }

// Event records something a controller did or saw, for people to read.
type Event struct {
	Meta
	Object  string    `json:"object"` // "services/web"
	Type    string    `json:"type"`   // Normal or Warning
	Reason  string    `json:"reason"`
	Message string    `json:"message"`
	Time    time.Time `json:"time"`
}

// Kind implements Object.
func (*Event) Kind() Kind { return KindEvent }

// New returns an empty object of kind k.
func New(k Kind) Object {
	switch k {
	case KindTenant:
		return &Tenant{}
	case KindToken:
		return &Token{}
	case KindNode:
		return &Node{}
	case KindService:
		return &Service{}
	case KindInstance:
		return &Instance{}
	case KindAddressBlock:
		return &AddressBlock{}
	case KindEvent:
		return &Event{}
	}
	return nil
}

// List is the body of a list response.
type List[T any] struct {
	// Revision is the store revision the list was read at; watch from it.
	Revision int64 `json:"revision"`
	Items    []T   `json:"items"`
}

// Watch event types.
const (
	Added    = "ADDED"
	Modified = "MODIFIED"
	Deleted  = "DELETED"
)

// WatchEvent is one line of a watch stream.
type WatchEvent struct {
	Type     string          `json:"type"`
	Revision int64           `json:"revision"`
	Object   json.RawMessage `json:"object"`
}

// Registration is what a node agent sends to join or rejoin.
type Registration struct {
	Spec   NodeSpec          `json:"spec"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Lease is the answer to registration and heartbeats.
type Lease struct {
	ID  int64 `json:"id"`
	TTL int64 `json:"ttl"` // seconds
}

// Claim asks for an address block on behalf of a node.
type Claim struct {
	Node string `json:"node"`
}

// Move asks for an instance to be moved to a named node.
type Move struct {
	Node string `json:"node"`
}

// Duration is a time.Duration written as a string ("5s") on the wire.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return &FieldError{Message: "duration must be a string like \"5s\""}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &FieldError{Message: "bad duration " + s}
	}
	*d = Duration(v)
	return nil
}
