package api

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	okTpl := Template{Image: "busybox"}
	cases := []struct {
		name  string
		obj   Object
		field string
	}{
		{"good service", &Service{Meta: Meta{Name: "web", Tenant: "t"}, Spec: ServiceSpec{Replicas: 2, Template: okTpl}}, ""},
		{"name with capitals", &Service{Meta: Meta{Name: "Web", Tenant: "t"}, Spec: ServiceSpec{Template: okTpl}}, "name"},
		{"name ending in dash", &Tenant{Meta: Meta{Name: "a-"}}, "name"},
		{"name too long", &Tenant{Meta: Meta{Name: strings.Repeat("a", 64)}}, "name"},
		{"missing tenant", &Service{Meta: Meta{Name: "web"}, Spec: ServiceSpec{Template: okTpl}}, "tenant"},
		{"tenant on a cluster object", &Node{Meta: Meta{Name: "n", Tenant: "t"}}, "tenant"},
		{"no image", &Service{Meta: Meta{Name: "web", Tenant: "t"}}, "spec.template.image"},
		{"negative cpu", &Service{Meta: Meta{Name: "web", Tenant: "t"}, Spec: ServiceSpec{Template: Template{Image: "x", Resources: Resources{CPU: -1}}}}, "spec.template.resources.cpu"},
		{"bad port", &Instance{Meta: Meta{Name: "i", Tenant: "t"}, Spec: InstanceSpec{Template: Template{Image: "x", Ports: []Port{{Port: 70000}}}}}, "spec.template.ports[0].port"},
		{"duplicate host port", &Instance{Meta: Meta{Name: "i", Tenant: "t"}, Spec: InstanceSpec{Template: Template{Image: "x", Ports: []Port{{Port: 80, HostPort: 80}, {Port: 81, HostPort: 80}}}}}, "spec.template.ports[1].hostPort"},
		{"required and excluded", &Instance{Meta: Meta{Name: "i", Tenant: "t"}, Spec: InstanceSpec{Template: Template{Image: "x", Constraints: []Constraint{{Key: "zone", Op: "==", Value: "a"}, {Key: "zone", Op: "!=", Value: "a"}}}}}, "spec.template.constraints[1]"},
		{"unknown op", &Instance{Meta: Meta{Name: "i", Tenant: "t"}, Spec: InstanceSpec{Template: Template{Image: "x", Constraints: []Constraint{{Key: "zone", Op: "~"}}}}}, "spec.template.constraints[0].op"},
		{"bad restart policy", &Instance{Meta: Meta{Name: "i", Tenant: "t"}, Spec: InstanceSpec{Template: Template{Image: "x", Restart: "sometimes"}}}, "spec.template.restart"},
		{"bad label", &Tenant{Meta: Meta{Name: "t", Labels: map[string]string{"a b": "c"}}}, "labels"},
		{"admin token outside system", &Token{Meta: Meta{Name: "x", Tenant: "t"}, Role: RoleAdmin}, "role"},
		{"unknown role", &Token{Meta: Meta{Name: "x", Tenant: "t"}, Role: "root"}, "role"},
		{"node without capacity", &Node{Meta: Meta{Name: "n"}}, "spec.capacity"},
		{"block without prefix", &AddressBlock{Meta: Meta{Name: "b"}}, "prefix"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.obj)
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			e := AsError(err)
			if err == nil || e.Code != http.StatusBadRequest || e.Field != tc.field {
				t.Fatalf("got %v (field %q), want field %q", err, e.Field, tc.field)
			}
		})
	}
}

func TestDecodeNamesTheProblem(t *testing.T) {
	cases := []struct{ body, field, msg string }{
		{`{"name":"a","x":1}`, "x", "unknown field"},
		{`{"name":1}`, "name", "expected string"},
		{`{"name":"a"} {}`, "", "trailing data"},
		{`{"name":`, "", "unexpected end"},
		{`{"name" "a"}`, "", "malformed JSON at byte"},
		{``, "", "empty body"},
	}
	for _, tc := range cases {
		err := DecodeBytes([]byte(tc.body), &Tenant{})
		e := AsError(err)
		if err == nil || e.Field != tc.field || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("%s: got %v (field %q), want field %q message containing %q", tc.body, err, e.Field, tc.field, tc.msg)
		}
	}
	err := Decode(bytes.NewReader(bytes.Repeat([]byte(" "), 100)), 10, &Tenant{})
	if Code(err) != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized: got %v", err)
	}
}

func TestSelector(t *testing.T) {
	sel, err := ParseSelector("app=web, tier!=db,canary")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"app": "web", "canary": "1"}, true},
		{map[string]string{"app": "web", "tier": "db", "canary": "1"}, false},
		{map[string]string{"app": "web"}, false},
	} {
		if got := sel.Matches(tc.labels); got != tc.want {
			t.Errorf("%v: got %v", tc.labels, got)
		}
	}
	if _, err := ParseSelector("a b=c"); !IsInvalid(err) && AsError(err).Code != 400 {
		t.Fatalf("bad selector: %v", err)
	}
}

// The decoders must never panic, and whatever they accept must validate or
// be refused with a field error, never anything else.
func FuzzDecodeService(f *testing.F) {
	f.Add([]byte(`{"name":"web","tenant":"t","spec":{"replicas":3,"template":{"image":"busybox","resources":{"cpu":100,"memory":1048576},"ports":[{"port":80,"hostPort":8080}],"constraints":[{"key":"zone","op":"==","value":"a"}],"health":{"command":["true"],"interval":"5s"}}}}`))
	f.Add([]byte(`{"name":"x","spec":{"replicas":-1}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := &Service{}
		if err := DecodeBytes(b, s); err != nil {
			if AsError(err).Code != http.StatusBadRequest {
				t.Fatalf("decode error is not a 400: %v", err)
			}
			return
		}
		if err := Validate(s); err != nil && AsError(err).Code != http.StatusBadRequest {
			t.Fatalf("validate error is not a 400: %v", err)
		}
		_ = s.Spec.Template.Hash()
	})
}

func FuzzDecodeInstanceStatus(f *testing.F) {
	f.Add([]byte(`{"phase":"running","exitCode":0,"restarts":2,"ip":"10.0.0.2","health":"healthy","startedAt":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"ip":"not-an-ip"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var st InstanceStatus
		if err := DecodeBytes(b, &st); err != nil && AsError(err).Code != http.StatusBadRequest {
			t.Fatalf("decode error is not a 400: %v", err)
		}
	})
}

func FuzzParseSelector(f *testing.F) {
	f.Add("app=web,tier!=db,canary")
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		_ = sel.Matches(map[string]string{"app": "web"})
	})
}

// Every kind's body goes through the same strict decoder and validator:
// whatever the bytes, the answer is a value or a 400, never a panic.
func FuzzDecodeObject(f *testing.F) {
	f.Add(uint8(1), []byte(`{"name":"n1","labels":{"zone":"a"},"spec":{"capacity":{"cpu":4000,"memory":8589934592},"address":"10.0.0.1"}}`))
	f.Add(uint8(2), []byte(`{"name":"b0","prefix":"10.1.0.0/26","node":"n1"}`))
	f.Add(uint8(5), []byte(`{"name":"i","tenant":"t","spec":{"pin":"n1","template":{"image":"x","restart":"on-failure","health":{"httpPath":"/","port":80,"timeout":"1s"}}}}`))
	f.Add(uint8(3), []byte(`{"name":"tok","tenant":"system","role":"node","node":"n1"}`))
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		kinds := Kinds()
		o := New(kinds[int(kind)%len(kinds)])
		if err := DecodeBytes(b, o); err != nil {
			if AsError(err).Code != http.StatusBadRequest {
				t.Fatalf("decode error is not a 400: %v", err)
			}
			return
		}
		if err := Validate(o); err != nil && AsError(err).Code != http.StatusBadRequest {
			t.Fatalf("validate error is not a 400: %v", err)
		}
	})
}

func TestHealthCheckKinds(t *testing.T) {
	for _, tc := range []struct {
		h  HealthCheck
		ok bool
	}{
		{HealthCheck{Command: []string{"true"}}, true},
		{HealthCheck{HTTPPath: "/healthz", Port: 8080}, true},
		{HealthCheck{Port: 5432}, true},
		{HealthCheck{}, false},
		{HealthCheck{HTTPPath: "/healthz"}, false},
		{HealthCheck{Command: []string{"true"}, Port: 80}, false},
		{HealthCheck{Port: 70000}, false},
	} {
		err := ValidTemplate("t", Template{Image: "busybox", Health: &tc.h})
		if (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.h, err)
		}
	}
}

func TestTemplateMountsAndNetwork(t *testing.T) {
	for _, tc := range []struct {
		t  Template
		ok bool
	}{
		{Template{Image: "b", Mounts: []Mount{{Type: MountVolume, Source: "data", Target: "/data"}}}, true},
		{Template{Image: "b", Mounts: []Mount{{Type: MountBind, Source: "/srv", Target: "/srv", ReadOnly: true}}}, true},
		{Template{Image: "b", Mounts: []Mount{{Type: MountVolume, Source: "Bad_Name", Target: "/data"}}}, false},
		{Template{Image: "b", Mounts: []Mount{{Type: MountBind, Source: "srv", Target: "/srv"}}}, false},
		{Template{Image: "b", Mounts: []Mount{{Type: "tmpfs", Target: "/t"}}}, false},
		{Template{Image: "b", Mounts: []Mount{{Type: MountVolume, Source: "a", Target: "/"}}}, false},
		{Template{Image: "b", Mounts: []Mount{{Type: MountVolume, Source: "a", Target: "/d"}, {Type: MountVolume, Source: "b", Target: "/d"}}}, false},
		{Template{Image: "b", Network: "none"}, true},
		{Template{Image: "b", Network: "bridge"}, false},
		{Template{Image: "b", Workdir: "rel"}, false},
		{Template{Image: "b", PidsLimit: -1}, false},
	} {
		err := ValidTemplate("t", tc.t)
		if (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.t, err)
		}
	}
}

// A join token pins the CA by 64 lower-case hex digits; anything else is
// refused.
func TestParseJoinTokenWantsALowerHexFingerprint(t *testing.T) {
	fp := strings.Repeat("0f", 32)
	if got, secret, err := ParseJoinToken(FormatJoinToken(fp, "s3cret")); err != nil || got != fp || secret != "s3cret" {
		t.Fatalf("ParseJoinToken of a good token: %q %q %v", got, secret, err)
	}
	for _, bad := range []string{strings.Repeat("0F", 32), strings.Repeat("g0", 32), fp[:63] + " "} {
		if _, _, err := ParseJoinToken(FormatJoinToken(bad, "s3cret")); err == nil {
			t.Errorf("fingerprint %q accepted", bad)
		}
	}
}
