package api

import (
	"net/url"
	"strconv"
	"time"
)

// Container operations on one instance. The control plane serves them at
// /v1/tenants/TENANT/instances/NAME/OP and proxies them to the agent of the
// instance's node, which serves them at /containers/ID/OP (ID being the
// agent's container name of the instance).
const (
	OpLogs    = "logs"    // GET: NDJSON of LogLine; query follow, tail, since, timestamps
	OpExec    = "exec"    // GET, websocket: a new process (query ExecOptions)
	OpAttach  = "attach"  // GET, websocket: the container's own stdio
	OpStats   = "stats"   // GET: one Stats
	OpTop     = "top"     // GET: Top
	OpArchive = "archive" // GET: a tar of query path; PUT: extract a tar body into query path
	OpKill    = "kill"    // POST: query signal (a name such as TERM or SIGKILL, or a number)
	// OpFollow is GET: NDJSON of FollowEvent, the container's output from
	// its first line and then how its run ended. An agent also takes
	// query await=1 (wait for the container to be made and started, for
	// a client that asks as soon as the instance is placed) and created
	// (the instance's creation time, RFC 3339, that the container must be
	// of).
	OpFollow = "follow"
)

// FollowEvent is one line of a follow stream (OpFollow, or a create of an
// instance with ?follow=1): exactly one field is set. A create's stream
// starts with the instance as created and ends with Exit or Error; for an
// instance with AutoRemove, once it is deleted.
type FollowEvent struct {
	Instance *Instance   `json:"instance,omitempty"`
	Log      *LogLine    `json:"log,omitempty"`
	Exit     *ExitStatus `json:"exit,omitempty"`
	Error    *Error      `json:"error,omitempty"`
}

// ExitStatus is how a container's run ended.
type ExitStatus struct {
	// Code is the exit code: 128+N for signal N; 125 when it could not be
	// started (Error says why).
	Code      int    `json:"code"`
	OOMKilled bool   `json:"oomKilled,omitempty"`
	Error     string `json:"error,omitempty"`
}

// ContainerName is the agent's name for the container of an instance:
// unique per tenant and instance on a node, and readable in the agent's lists.
func ContainerName(tenant, instance string) string { return tenant + "_" + instance }

// LogLine is one line of a container's output.
type LogLine struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // stdout or stderr
	Log    string    `json:"log"`    // without the newline
}

// LogQuery selects log lines.
type LogQuery struct {
	Follow bool
	// Tail is the number of last lines; negative for all.
	Tail  int
	Since time.Time
}

// Values encodes q as query parameters.
func (q LogQuery) Values() url.Values {
	v := url.Values{}
	if q.Follow {
		v.Set("follow", "1")
	}
	if q.Tail >= 0 {
		v.Set("tail", strconv.Itoa(q.Tail))
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.Format(time.RFC3339Nano))
	}
	return v
}

// ParseLogQuery reads q from query parameters.
func ParseLogQuery(v url.Values) (LogQuery, error) {
	q := LogQuery{Follow: v.Get("follow") == "1" || v.Get("follow") == "true", Tail: -1}
	if s := v.Get("tail"); s != "" && s != "all" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, &FieldError{Field: "tail", Message: "must be a number of lines or all"}
		}
		q.Tail = n
	}
	if s := v.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return q, &FieldError{Field: "since", Message: "must be an RFC 3339 time"}
		}
		q.Since = t
	}
	return q, nil
}

// ExecOptions describe a process run in a running container.
type ExecOptions struct {
	Cmd     []string
	Env     []string
	User    string
	Workdir string
	TTY     bool
	// Stdin connects the client's input; without it the process reads EOF.
	Stdin bool
}

// Values encodes o as query parameters.
func (o ExecOptions) Values() url.Values {
	v := url.Values{"cmd": o.Cmd}
	if len(o.Env) > 0 {
		v["env"] = o.Env
	}
	if o.User != "" {
		v.Set("user", o.User)
	}
	if o.Workdir != "" {
		v.Set("workdir", o.Workdir)
	}
	if o.TTY {
		v.Set("tty", "1")
	}
	if o.Stdin {
		v.Set("stdin", "1")
	}
	return v
}

// ParseExecOptions reads o from query parameters.
func ParseExecOptions(v url.Values) (ExecOptions, error) {
	o := ExecOptions{Cmd: v["cmd"], Env: v["env"], User: v.Get("user"), Workdir: v.Get("workdir"),
		TTY: v.Get("tty") == "1", Stdin: v.Get("stdin") == "1"}
	if len(o.Cmd) == 0 {
		return o, &FieldError{Field: "cmd", Message: "required"}
	}
	return o, nil
}

// Exec and attach streams are websocket connections. A binary message
// carries stdio: its first byte is the channel, the rest the data. A text
// message carries one StreamControl as JSON. The server ends with a
// StreamControl holding Exit (or Error), then closes.
const (
	ChannelStdin  byte = 0 // client → server
	ChannelStdout byte = 1 // server → client; a TTY's output is all here
	ChannelStderr byte = 2 // server → client
)

// StreamControl is an out-of-band message on an exec or attach stream.
type StreamControl struct {
	// Resize sets the terminal's size (client → server).
	Resize *TermSize `json:"resize,omitempty"`
	// CloseStdin ends the process's input (client → server).
	CloseStdin bool `json:"closeStdin,omitempty"`
	// Exit is the process's exit code (server → client, last). An attach
	// that ends because the client detached carries none.
	Exit *int `json:"exit,omitempty"`
	// Error says why the stream could not start or broke (server → client).
	Error string `json:"error,omitempty"`
}

// TermSize is a terminal's size in characters.
type TermSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Stats are a container's resource use, read from its cgroup.
type Stats struct {
	Time        time.Time `json:"time"`
	CPUNanos    uint64    `json:"cpuNanos"`
	MemoryBytes uint64    `json:"memoryBytes"`
	MemoryLimit uint64    `json:"memoryLimit,omitempty"`
	Pids        uint64    `json:"pids"`
	PidsLimit   uint64    `json:"pidsLimit,omitempty"`
	OOMKills    uint64    `json:"oomKills,omitempty"`
	RxBytes     uint64    `json:"rxBytes"`
	TxBytes     uint64    `json:"txBytes"`
}

// Top lists a container's processes as ps would.
type Top struct {
	Titles    []string   `json:"titles"`
	Processes [][]string `json:"processes"`
}
