package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func TestFailoverMovesToAServerThatAnswers(t *testing.T) {
	var got []string
	serve := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			got = append(got, name+":"+string(b))
			fmt.Fprint(w, name)
		}))
	}
	a, b := serve("a"), serve("b")
	defer b.Close()
	hostOf := func(s *httptest.Server) string { u, _ := url.Parse(s.URL); return u.Host }
	f := &failover{next: http.DefaultTransport, hosts: []string{hostOf(a), hostOf(b)}}
	c := &http.Client{Transport: f}
	post := func() string {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, a.URL+"/v1/x", strings.NewReader("body"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if s := post(); s != "a" {
		t.Fatalf("first answer from %q, want a", s)
	}
	a.Close()
	if s := post(); s != "b" {
		t.Fatalf("with a gone, answer from %q, want b", s)
	}
	// b stays current: no detour through the dead server.
	if s := post(); s != "b" {
		t.Fatalf("then %q, want b", s)
	}
	if want := []string{"a:body", "b:body", "b:body"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("requests %v, want %v (the body resent whole)", got, want)
	}
}

func TestParseServers(t *testing.T) {
	us, err := parseServers("https://10.0.0.1:7443, https://10.0.0.2:7443/")
	if err != nil || len(us) != 2 || us[1].Host != "10.0.0.2:7443" {
		t.Fatalf("%v %v", us, err)
	}
	for _, bad := range []string{"", "http://x:1", "https://", "https://a:1,https://b:1/p"} {
		if _, err := parseServers(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
