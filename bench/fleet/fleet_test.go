// Package fleet_bench measures a fleet of Berth hosts built on this
// machine (network namespaces joined by a bridge, one berth agent each,
// berth server on its own host; see internal/fleettest):
//
//	sudo BERTH_BIN_DIR=$PWD/bin go test -run '^$' -bench . -benchtime 3x -timeout 30m ./bench/fleet
//
// BenchmarkHostLoss cuts a host holding a web instance off the fabric and
// times until the replacement runs and answers by its IP elsewhere; the
// floor is the node lease (3 s), reported as the ratio x-lease.
// BenchmarkDrain100 drains a host running 100 instances, every one started
// elsewhere before its old copy stops, against scaling a service from 0 to
// 100 on the other hosts in the same run (the floor for starting that
// many), reported as x-scale-up.
// BenchmarkCrossHost sends TCP for 3 s from a container on one host to a
// container on another, by their IPs, against the same program between
// the two hosts themselves (the bare fabric link): x-bare.
package fleet_bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/internal/fleettest"
	"github.com/berth-dev/berth/internal/testdir"
	"github.com/berth-dev/berth/internal/uptest"
)

const leaseTTL = 3 * time.Second

func BenchmarkHostLoss(b *testing.B) {
	f := fleettest.New(b, fleettest.Config{Nodes: 3})
	ctx := context.Background()
	health := &api.HealthCheck{HTTPPath: "/", Port: 8080, Interval: api.Duration(300 * time.Millisecond), Retries: 1}
	svc := &api.Service{Meta: api.Meta{Name: "web", Tenant: api.DefaultTenant}, Spec: api.ServiceSpec{Replicas: 3,
		Template: api.Template{Image: "web", Health: health}}}
	if err := f.Admin.Create(ctx, svc); err != nil {
		b.Fatal(err)
	}
	fleettest.Poll(b, "3 web instances serving", 90*time.Second, func() error { _, err := f.Serving("web", 3); return err })
	var total time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// A host with an instance on it.
		victim := f.Host(f.Instances("web")[i%3].Spec.Node)
		b.StartTimer()
		start := time.Now()
		f.Hub.Run(b, "ip", "link", "set", victim.Port, "down")
		fleettest.Poll(b, "replacement of "+victim.Name+"'s instances", 60*time.Second, func() error {
			_, err := f.Serving("web", 3, victim.Name)
			return err
		})
		total += time.Since(start)
		b.StopTimer()
		f.Hub.Run(b, "ip", "link", "set", victim.Port, "up")
		f.WaitNodes(3)
		fleettest.Poll(b, victim.Name+" to hand over", 60*time.Second, fleettest.Empty(victim))
		b.StartTimer()
	}
	b.StopTimer()
	per := total / time.Duration(b.N)
	b.ReportMetric(float64(per.Milliseconds()), "ms/replace")
	b.ReportMetric(per.Seconds()/leaseTTL.Seconds(), "x-lease")
}

func BenchmarkDrain100(b *testing.B) {
	const n = 100
	f := fleettest.New(b, fleettest.Config{Nodes: 3})
	ctx := context.Background()
	setSchedulable := func(name string, ok bool) {
		b.Helper()
		fleettest.Poll(b, "mark "+name, 10*time.Second, func() error {
			no := &api.Node{}
			if err := f.Admin.Get(ctx, "", name, no); err != nil {
				return err
			}
			no.Spec.Unschedulable, no.Spec.Drain = !ok, false
			return f.Admin.Update(ctx, no)
		})
	}
	sleeper := api.Template{Image: "busybox", Command: []string{"sleep", "1000000"}}
	running := func(svc string, exclude ...string) func() error {
		return func() error {
			l, err := api.ListOf[*api.Instance](ctx, f.Admin, api.DefaultTenant, "")
			if err != nil {
				return err
			}
			ok := 0
			for _, in := range l.Items {
				if in.Spec.Service != svc {
					continue
				}
				good := in.Status.Phase == api.PhaseRunning && in.Status.ObservedNode == in.Spec.Node
				for _, x := range exclude {
					good = good && in.Spec.Node != x
				}
				if good {
					ok++
				}
			}
			if ok != n {
				return fmt.Errorf("%d of %d running", ok, n)
			}
			return nil
		}
	}
	var drain, scale time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// n instances on n1 alone.
		setSchedulable("n2", false)
		setSchedulable("n3", false)
		name := fmt.Sprintf("drain%d", i)
		if err := f.Admin.Create(ctx, &api.Service{Meta: api.Meta{Name: name, Tenant: api.DefaultTenant},
			Spec: api.ServiceSpec{Replicas: n, Template: sleeper}}); err != nil {
			b.Fatal(err)
		}
		fleettest.Poll(b, "100 instances on n1", 5*time.Minute, running(name))
		setSchedulable("n2", true)
		setSchedulable("n3", true)

		// The floor: 100 new instances on n2 and n3.
		setSchedulable("n1", false)
		base := fmt.Sprintf("scale%d", i)
		b.StartTimer()
		start := time.Now()
		if err := f.Admin.Create(ctx, &api.Service{Meta: api.Meta{Name: base, Tenant: api.DefaultTenant},
			Spec: api.ServiceSpec{Replicas: n, Template: sleeper}}); err != nil {
			b.Fatal(err)
		}
		fleettest.Poll(b, "100 new instances", 5*time.Minute, running(base, "n1"))
		scale += time.Since(start)
		b.StopTimer()
		if err := f.Admin.Delete(ctx, api.KindService, api.DefaultTenant, base, 0); err != nil {
			b.Fatal(err)
		}
		setSchedulable("n1", true)
		fleettest.Poll(b, "the scaled service gone", 2*time.Minute, fleettest.Empty(f.Hosts[1:]...))

		b.StartTimer()
		start = time.Now()
		if out, err := f.CLI("node", "drain", "n1"); err != nil {
			b.Fatalf("drain: %v: %s", err, out)
		}
		fleettest.Poll(b, "n1 drained", 5*time.Minute, func() error {
			if err := running(name, "n1")(); err != nil {
				return err
			}
			return fleettest.Empty(f.Host("n1"))()
		})
		drain += time.Since(start)
		b.StopTimer()
		if err := f.Admin.Delete(ctx, api.KindService, api.DefaultTenant, name, 0); err != nil {
			b.Fatal(err)
		}
		setSchedulable("n1", true)
		fleettest.Poll(b, "the drained service gone", 2*time.Minute, fleettest.Empty(f.Hosts...))
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64((drain / time.Duration(b.N)).Milliseconds()), "ms/drain")
	b.ReportMetric(float64((scale / time.Duration(b.N)).Milliseconds()), "ms/scale-up")
	b.ReportMetric(drain.Seconds()/scale.Seconds(), "x-scale-up")
}

// tput is the throughput tool: "tput server" accepts on :5201 and counts
// what it reads; "tput client ADDR SECONDS" writes to ADDR for SECONDS and
// prints the bytes per second the server acknowledged; "tput sleep" idles.
const tput = `package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	switch os.Args[1] {
	case "server":
		l, err := net.Listen("tcp", ":5201")
		if err != nil {
			panic(err)
		}
		for {
			c, err := l.Accept()
			if err != nil {
				panic(err)
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				binary.Write(c, binary.BigEndian, n)
				c.Close()
			}()
		}
	case "client":
		secs, _ := strconv.Atoi(os.Args[3])
		c, err := net.Dial("tcp", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		buf := make([]byte, 128<<10)
		start := time.Now()
		for time.Since(start) < time.Duration(secs)*time.Second {
			if _, err := c.Write(buf); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		var n int64
		if err := binary.Read(c, binary.BigEndian, &n); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(float64(n) / time.Since(start).Seconds())
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	}
}
`

func BenchmarkCrossHost(b *testing.B) {
	goBin, err := uptest.GoTool()
	if err != nil {
		b.Skip(err)
	}
	dir := testdir.World(b)
	tarPath := filepath.Join(dir, "tput.tar")
	if err := os.WriteFile(tarPath, uptest.GoImageTar(b, goBin, dir, "tput", tput), 0o600); err != nil {
		b.Fatal(err)
	}
	f := fleettest.New(b, fleettest.Config{Nodes: 2, Images: []fleettest.Image{{Tar: tarPath, Name: "tput:latest", Config: []string{`ENTRYPOINT ["/tput"]`}}}})
	exe := filepath.Join(dir, "tput")
	for _, c := range [][]string{
		{"run", "-d", "--name", "tsrv", "--node", "n2", "tput", "server"},
		{"run", "-d", "--name", "tcli", "--node", "n1", "tput", "sleep"},
	} {
		if out, err := f.CLI(c...); err != nil {
			b.Fatalf("berth %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	ctx := context.Background()
	var srvIP string
	fleettest.Poll(b, "tsrv and tcli running", 60*time.Second, func() error {
		for _, name := range []string{"tsrv", "tcli"} {
			in := &api.Instance{}
			if err := f.Admin.Get(ctx, api.DefaultTenant, name, in); err != nil {
				return err
			}
			if in.Status.Phase != api.PhaseRunning || !in.Status.IP.IsValid() {
				return fmt.Errorf("%s: %s", name, in.Status.Phase)
			}
			if name == "tsrv" {
				srvIP = in.Status.IP.String()
			}
		}
		return nil
	})
	bare := exec.Command("nsenter", "--net="+f.Host("n2").NS.Path, "--", exe, "server")
	if err := bare.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bare.Process.Kill(); bare.Wait() })
	parse := func(out []byte, err error) float64 {
		b.Helper()
		if err != nil {
			b.Fatalf("tput client: %v: %s", err, out)
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			b.Fatalf("tput client printed %q", out)
		}
		return v
	}
	var cont, link float64
	b.ResetTimer()
	for range b.N {
		var out string
		fleettest.Poll(b, "container to container", 30*time.Second, func() (err error) {
			out, err = f.CLI("exec", "tcli", "/tput", "client", srvIP+":5201", "3")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		cont += parse([]byte(out), nil)
		link += parse(exec.Command("nsenter", "--net="+f.Host("n1").NS.Path, "--", exe, "client", f.Host("n2").Addr.String()+":5201", "3").CombinedOutput())
	}
	b.StopTimer()
	b.ReportMetric(cont/float64(b.N)*8/1e9, "Gbit/s-container")
	b.ReportMetric(link/float64(b.N)*8/1e9, "Gbit/s-bare")
	b.ReportMetric(cont/link, "x-bare")
}
