package agent

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/berth-dev/berth/network/policy"
)

func TestParsePortMapping(t *testing.T) {
	cases := []struct {
		in      string
		want    PortMapping
		wantErr string
	}{
		{"8080:80", PortMapping{HostPort: 8080, ContainerPort: 80}, ""},
		{"53:5353/udp", PortMapping{HostPort: 53, ContainerPort: 5353, Proto: "udp"}, ""},
		{"443:8443/tcp", PortMapping{HostPort: 443, ContainerPort: 8443, Proto: "tcp"}, ""},
		{"80", PortMapping{}, "want hostPort:containerPort"},
		{"127.0.0.1:80:80", PortMapping{}, "want hostPort:containerPort"},
		{"0:80", PortMapping{}, `port "0"`},
		{"80:70000", PortMapping{}, `port "70000"`},
		{"80:http", PortMapping{}, `port "http"`},
		{"80:80/sctp", PortMapping{}, `protocol "sctp"`},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePortMapping(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.in) {
					t.Fatalf("error %v, want one naming %q and containing %q", err, tc.in, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestValidateNamesTheBadPort(t *testing.T) {
	cases := []struct {
		name    string
		spec    ContainerSpec
		wantErr string
	}{
		{"no network", ContainerSpec{Image: "x", Ports: []PortMapping{{HostPort: 80, ContainerPort: 80}}}, `needs a network, not "none"`},
		{"bad proto", ContainerSpec{Image: "x", Network: "n", Ports: []PortMapping{{HostPort: 80, ContainerPort: 80, Proto: "icmp"}}}, `ports[0]: protocol "icmp"`},
		{"port 0", ContainerSpec{Image: "x", Network: "n", Ports: []PortMapping{{HostPort: 80, ContainerPort: 1}, {ContainerPort: 80}}}, "ports[1] 0:80/tcp: port 0"},
		{"twice", ContainerSpec{Image: "x", Network: "n", Ports: []PortMapping{{HostPort: 80, ContainerPort: 80}, {HostPort: 80, ContainerPort: 81, Proto: "tcp"}}}, "host port 80/tcp published twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.spec.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
	ok := ContainerSpec{Image: "x", Network: "n", Ports: []PortMapping{{HostPort: 53, ContainerPort: 53}, {HostPort: 53, ContainerPort: 53, Proto: "udp"}}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("tcp and udp on one port: %v", err)
	}
}

func TestPortConflictNamesTheHolder(t *testing.T) {
	local := map[string]NetEndpoint{
		"a": {ID: "a", Ports: []PortMapping{{HostPort: 80, ContainerPort: 8080}}},
		"b": {ID: "b", Ports: []PortMapping{{HostPort: 53, ContainerPort: 53, Proto: "udp"}}},
	}
	if err := portConflict(local, NetEndpoint{ID: "c", Ports: []PortMapping{{HostPort: 80, ContainerPort: 80, Proto: "tcp"}}}); err == nil ||
		!strings.Contains(err.Error(), "host port 80/tcp: already published by container a") {
		t.Fatalf("conflict on 80/tcp: %v", err)
	}
	if err := portConflict(local, NetEndpoint{ID: "c", Ports: []PortMapping{{HostPort: 53, ContainerPort: 53}}}); err != nil {
		t.Fatalf("53/tcp against 53/udp: %v", err)
	}
	// Re-attaching a container (a restart) does not conflict with itself.
	if err := portConflict(local, local["a"]); err != nil {
		t.Fatalf("with itself: %v", err)
	}
}

func TestPolicyInputPublishesEveryAddressAndDropsStaleRemotes(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.88.0.5"), netip.MustParseAddr("fd00:88::5")
	local := map[string]NetEndpoint{
		"web": {ID: "web", Tenant: "acme", Labels: map[string]string{"app": "web"},
			Ports: []PortMapping{{HostPort: 8080, ContainerPort: 80}},
			Addrs: []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}},
		"anon": {ID: "anon", Addrs: []netip.Prefix{netip.MustParsePrefix("10.88.0.6/32")}},
	}
	remote := []policy.Endpoint{
		{ID: "zz", Tenant: "acme", Addrs: []netip.Addr{netip.MustParseAddr("10.88.1.1")}},
		{ID: "web", Tenant: "acme", Addrs: []netip.Addr{netip.MustParseAddr("10.88.1.9")}},
	}
	eps, ports := policyInput(local, remote)
	wantEps := []policy.Endpoint{
		{ID: "anon", Tenant: DefaultTenant, Addrs: []netip.Addr{netip.MustParseAddr("10.88.0.6")}},
		{ID: "web", Tenant: "acme", Labels: map[string]string{"app": "web"}, Addrs: []netip.Addr{v4, v6}},
		{ID: "zz", Tenant: "acme", Addrs: []netip.Addr{netip.MustParseAddr("10.88.1.1")}},
	}
	if !reflect.DeepEqual(eps, wantEps) {
		t.Fatalf("endpoints:\n got %+v\nwant %+v", eps, wantEps)
	}
	wantPorts := []policy.PortMap{
		{Proto: "tcp", HostPort: 8080, ContainerAddr: v4, ContainerPort: 80},
		{Proto: "tcp", HostPort: 8080, ContainerAddr: v6, ContainerPort: 80},
	}
	if !reflect.DeepEqual(ports, wantPorts) {
		t.Fatalf("ports:\n got %+v\nwant %+v", ports, wantPorts)
	}
	// What it makes compiles.
	if _, err := policy.Compile(eps, nil, ports); err != nil {
		t.Fatal(err)
	}
}
