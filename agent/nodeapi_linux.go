package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/coder/websocket"
)

// NewNodeAPI serves the container operations of api/stream.go for a's
// containers at /containers/{id}/{op}, {id} being a container's name or
// id. It does no authentication: it is meant for a socket only the
// control plane reaches.
func NewNodeAPI(a *Agent, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &nodeAPI{a: a, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("/containers/{id}/{op}", h.serve)
	mux.HandleFunc("GET /volumes/{name}/archive", h.getVolume)
	mux.HandleFunc("PUT /volumes/{name}/archive", h.putVolume)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(http.StatusNotFound, "%s: no such endpoint", r.URL.Path))
	})
	return mux
}

type nodeAPI struct {
	a   *Agent
	log *slog.Logger
}

func (h *nodeAPI) serve(w http.ResponseWriter, r *http.Request) {
	id, op := r.PathValue("id"), r.PathValue("op")
	want := http.MethodGet
	switch op {
	case api.OpKill:
		want = http.MethodPost
	case api.OpArchive:
		if r.Method == http.MethodPut {
			want = http.MethodPut
		}
	case api.OpLogs, api.OpExec, api.OpAttach, api.OpStats, api.OpTop, api.OpFollow:
	default:
		writeError(w, api.Errorf(http.StatusNotFound, "operation %q: unknown", op))
		return
	}
	if r.Method != want {
		w.Header().Set("Allow", want)
		writeError(w, api.Errorf(http.StatusMethodNotAllowed, "%s %s: use %s", r.Method, op, want))
		return
	}
	var err error
	switch op {
	case api.OpLogs:
		err = h.logs(w, r, id)
	case api.OpFollow:
		err = h.follow(w, r, id)
	case api.OpExec:
		err = h.exec(w, r, id)
	case api.OpAttach:
		err = h.attach(w, r, id)
	case api.OpStats:
		err = h.stats(w, id)
	case api.OpTop:
		err = h.top(w, r, id)
	case api.OpArchive:
		if r.Method == http.MethodPut {
			err = h.putArchive(w, r, id)
		} else {
			err = h.getArchive(w, r, id)
		}
	case api.OpKill:
		err = h.kill(w, r, id)
	}
	if err != nil {
		writeError(w, err)
	}
}

// statusOf gives an agent error its status: 404 for an unknown container
// or path, 409 for one that is not running, 400 for bad input.
func statusOf(err error) *api.Error {
	var inv *InvalidError
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrNoSuchPath):
		return api.Errorf(http.StatusNotFound, "%s", err)
	case errors.Is(err, ErrNotRunning):
		return api.Errorf(http.StatusConflict, "%s", err)
	case errors.As(err, &inv):
		return api.Errorf(http.StatusBadRequest, "%s", err)
	}
	return api.AsError(err)
}

func writeError(w http.ResponseWriter, err error) {
	e := statusOf(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Code)
	_ = json.NewEncoder(w).Encode(e)
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

func (h *nodeAPI) logs(w http.ResponseWriter, r *http.Request, id string) error {
	q, err := api.ParseLogQuery(r.URL.Query())
	if err != nil {
		return err
	}
	if _, err := h.a.Inspect(id); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	if q.Follow {
		_ = rc.Flush() // the client knows the stream is up
	}
	err = h.a.LogEntries(r.Context(), id, LogOptions{Follow: q.Follow, Tail: q.Tail, Since: q.Since}, func(e LogEntry) error {
		if err := enc.Encode(api.LogLine{Time: e.Time, Stream: e.Stream, Log: string(e.Line)}); err != nil {
			return err
		}
		if q.Follow {
			return rc.Flush()
		}
		return nil
	})
	if err != nil && r.Context().Err() == nil {
		h.log.Warn("logs", "container", id, "err", err)
	}
	return nil
}

// follow streams a container's output from its first line, then how its
// run ended (api.OpFollow).
func (h *nodeAPI) follow(w http.ResponseWriter, r *http.Request, ref string) error {
	ctx := r.Context()
	q := r.URL.Query()
	var id string
	if q.Get("await") == "1" {
		var err error
		if id, err = h.a.AwaitStart(ctx, ref, q.Get("created")); err != nil {
			return err
		}
	} else {
		c, err := h.a.Inspect(ref)
		if err != nil {
			return err
		}
		id = c.ID
	}
	// The container, held from here: an auto-removed one may be removed
	// (the control plane hearing of its exit) while its end is sent.
	cont, err := h.a.get(id)
	if err != nil {
		return err
	}
	cont.mu.Lock()
	noInit := cont.meta.Spec.NoInit
	cont.followers++
	cont.mu.Unlock()
	defer func() {
		cont.mu.Lock()
		cont.followers--
		cont.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	_ = rc.Flush()
	send := func(ev api.FollowEvent) error {
		if err := enc.Encode(ev); err != nil {
			return err
		}
		return rc.Flush()
	}
	logs := func() error {
		return h.a.LogEntries(ctx, id, LogOptions{Follow: true, Tail: -1}, func(e LogEntry) error {
			return send(api.FollowEvent{Log: &api.LogLine{Time: e.Time, Stream: e.Stream, Log: string(e.Line)}})
		})
	}
	// Without berth-init the log is the workload's raw output, which is
	// not followed: it is sent once the run is over.
	if !noInit {
		if err := logs(); err != nil {
			if ctx.Err() == nil {
				h.log.Warn("follow", "container", id, "err", err)
				_ = send(api.FollowEvent{Error: statusOf(err)})
			}
			return nil
		}
	}
	// The exit is the end: the release of what the run held (a veth's
	// deletion takes tens of milliseconds) goes on after it.
	code, err := cont.waitExit(ctx)
	if err != nil {
		_ = send(api.FollowEvent{Error: statusOf(err)})
		return nil
	}
	if noInit {
		if err := logs(); err != nil {
			_ = send(api.FollowEvent{Error: statusOf(err)})
			return nil
		}
	}
	ex := &api.ExitStatus{Code: code}
	cont.mu.Lock()
	ex.OOMKilled, ex.Error = cont.meta.State.OOMKilled, cont.meta.State.Error
	cont.mu.Unlock()
	_ = send(api.FollowEvent{Exit: ex})
	return nil
}

func (h *nodeAPI) exec(w http.ResponseWriter, r *http.Request, id string) error {
	o, err := api.ParseExecOptions(r.URL.Query())
	if err != nil {
		return err
	}
	// Started before the upgrade, so that failing to start is an HTTP
	// error with its status.
	s, err := h.a.StartExec(context.Background(), id, ExecSpec{Args: o.Cmd, Env: o.Env, User: o.User, Workdir: o.Workdir},
		ExecOptions{TTY: o.TTY, Stdin: o.Stdin})
	if err != nil {
		return err
	}
	h.stream(w, r, id, s)
	return nil
}

func (h *nodeAPI) attach(w http.ResponseWriter, r *http.Request, id string) error {
	s, err := h.a.Attach(r.Context(), id)
	if err != nil {
		return err
	}
	h.stream(w, r, id, s)
	return nil
}

// stream joins a websocket and a session as api/stream.go describes: the
// client's input and control messages go in; output goes out as binary
// messages and, when the process ends, its exit code. A client that goes
// away detaches.
func (h *nodeAPI) stream(w http.ResponseWriter, r *http.Request, id string, s Session) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		s.Close()
		h.log.Warn("stream upgrade", "container", id, "err", err)
		return
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer cancel()
		for {
			typ, b, err := conn.Read(ctx)
			if err != nil {
				return
			}
			if err := applyClientMessage(s, typ, b); err != nil {
				h.log.Debug("stream input", "container", id, "err", err)
			}
		}
	}()
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	var ctl api.StreamControl
	for {
		ch, data, err := s.Read()
		if ctx.Err() != nil {
			return // detached
		}
		if err != nil && !errors.Is(err, io.EOF) {
			ctl.Error = err.Error()
			break
		}
		if err != nil {
			code, err := s.Wait(ctx)
			if err != nil {
				ctl.Error = err.Error()
			} else {
				ctl.Exit = &code
			}
			break
		}
		msg := make([]byte, 0, len(data)+1)
		if err := conn.Write(ctx, websocket.MessageBinary, append(append(msg, ch), data...)); err != nil {
			return // the client is gone: detached
		}
	}
	b, _ := json.Marshal(ctl)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := conn.Write(wctx, websocket.MessageText, b); err == nil {
		_ = conn.Close(websocket.StatusNormalClosure, "")
	}
}

// applyClientMessage hands one websocket message from the client to s.
func applyClientMessage(s Session, typ websocket.MessageType, b []byte) error {
	switch typ {
	case websocket.MessageBinary:
		ch, data, err := ParseStdioMessage(b)
		if err != nil {
			return err
		}
		if ch != api.ChannelStdin {
			return errors.New("stream: clients send on the stdin channel only")
		}
		_, err = s.Write(data)
		return err
	case websocket.MessageText:
		var c api.StreamControl
		if err := json.Unmarshal(b, &c); err != nil {
			return err
		}
		if c.Resize != nil {
			if err := s.Resize(*c.Resize); err != nil {
				return err
			}
		}
		if c.CloseStdin {
			return s.CloseStdin()
		}
	}
	return nil
}

// ParseStdioMessage splits a binary stream message into its channel and
// data.
func ParseStdioMessage(b []byte) (byte, []byte, error) {
	if len(b) == 0 {
		return 0, nil, errors.New("stream: empty message has no channel")
	}
	if b[0] > api.ChannelStderr {
		return 0, nil, errors.New("stream: unknown channel")
	}
	return b[0], b[1:], nil
}

func (h *nodeAPI) stats(w http.ResponseWriter, id string) error {
	st, err := h.a.Stats(id)
	if err != nil {
		return err
	}
	return writeJSON(w, api.Stats{Time: time.Now().UTC(), CPUNanos: st.CPUNanos, MemoryBytes: st.MemoryBytes,
		MemoryLimit: st.MemoryLimit, Pids: st.Pids, PidsLimit: st.PidsLimit, OOMKills: st.OOMKills,
		RxBytes: st.RxBytes, TxBytes: st.TxBytes})
}

func (h *nodeAPI) top(w http.ResponseWriter, r *http.Request, id string) error {
	t, err := h.a.Top(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, t)
}

// lazyWriter sends the status with the first byte, so an error found
// before then is still an error response.
type lazyWriter struct {
	w     http.ResponseWriter
	wrote bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.wrote {
		l.wrote = true
		l.w.Header().Set("Content-Type", "application/x-tar")
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}

func (h *nodeAPI) getArchive(w http.ResponseWriter, r *http.Request, id string) error {
	p := r.URL.Query().Get("path")
	if p == "" {
		return &api.FieldError{Field: "path", Message: "required"}
	}
	lw := &lazyWriter{w: w}
	err := h.a.CopyFrom(r.Context(), id, p, lw)
	if err != nil && lw.wrote {
		// Too late for a status: the client sees a truncated tar.
		h.log.Warn("archive", "container", id, "path", p, "err", err)
		return nil
	}
	if err == nil && !lw.wrote {
		lw.Write(nil)
	}
	return err
}

func (h *nodeAPI) putArchive(w http.ResponseWriter, r *http.Request, id string) error {
	p := r.URL.Query().Get("path")
	if p == "" {
		return &api.FieldError{Field: "path", Message: "required"}
	}
	if err := h.a.CopyTo(r.Context(), id, p, r.Body); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// getVolume streams a tar of a named volume (what a move copies).
func (h *nodeAPI) getVolume(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	lw := &lazyWriter{w: w}
	err := h.a.VolumeCopyFrom(r.Context(), name, lw)
	if err != nil && lw.wrote {
		h.log.Warn("volume archive", "volume", name, "err", err)
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	if !lw.wrote {
		lw.Write(nil)
	}
}

// putVolume extracts a tar into a named volume, made if needed.
func (h *nodeAPI) putVolume(w http.ResponseWriter, r *http.Request) {
	if err := h.a.VolumeCopyTo(r.Context(), r.PathValue("name"), r.Body); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *nodeAPI) kill(w http.ResponseWriter, r *http.Request, id string) error {
	name := r.URL.Query().Get("signal")
	if name == "" {
		name = "KILL"
	}
	sig, err := ParseSignal(name)
	if err != nil {
		return err
	}
	if err := h.a.Kill(r.Context(), id, sig); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
