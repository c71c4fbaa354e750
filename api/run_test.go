package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRunStreamsOutputAndTheExit(t *testing.T) {
	var gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = r.URL.RawQuery
		var in Instance
		if r.Method != http.MethodPost || r.URL.Path != "/v1/tenants/shop/instances" || json.NewDecoder(r.Body).Decode(&in) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		enc := json.NewEncoder(w)
		in.ResourceVersion = 7
		_ = enc.Encode(FollowEvent{Instance: &in})
		switch in.Name {
		case "ok":
			_ = enc.Encode(FollowEvent{Log: &LogLine{Stream: "stdout", Log: "hello"}})
			_ = enc.Encode(FollowEvent{Log: &LogLine{Stream: "stderr", Log: "oops"}})
			_ = enc.Encode(FollowEvent{Exit: &ExitStatus{Code: 3}})
		case "failed":
			_ = enc.Encode(FollowEvent{Error: &Error{Code: http.StatusGone, Message: "instance failed was deleted"}})
		case "cut":
			// the server goes away before the end
		}
	}))
	defer srv.Close()
	c := NewClient(srv.URL, "", nil)

	in := &Instance{Meta: Meta{Name: "ok", Tenant: "shop"}}
	var lines []string
	exit, err := c.Run(ctxT(t), in, func(l LogLine) error {
		lines = append(lines, l.Stream+":"+l.Log)
		return nil
	})
	if err != nil || exit.Code != 3 || strings.Join(lines, ",") != "stdout:hello,stderr:oops" {
		t.Fatalf("Run = %+v, %v; lines %q", exit, err, lines)
	}
	if in.ResourceVersion != 7 || gotQuery != "follow=1" {
		t.Fatalf("instance version %d (want the server's 7), query %q", in.ResourceVersion, gotQuery)
	}
	if _, err := c.Run(ctxT(t), &Instance{Meta: Meta{Name: "failed", Tenant: "shop"}}, func(LogLine) error { return nil }); Code(err) != http.StatusGone {
		t.Fatalf("a run ending in an error: %v", err)
	}
	if _, err := c.Run(ctxT(t), &Instance{Meta: Meta{Name: "cut", Tenant: "shop"}}, func(LogLine) error { return nil }); err == nil || !strings.Contains(err.Error(), "before the run did") {
		t.Fatalf("a stream cut short: %v", err)
	}
	if _, err := c.Run(ctxT(t), &Instance{Meta: Meta{Name: "x", Tenant: "nosuch/"}}, func(LogLine) error { return nil }); Code(err) == 0 {
		t.Fatalf("a refused create: %v", err)
	}
}
