package cgroups

import (
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// benchResources is what the runtime benchmark's container carries: memory,
// CPU and pids limits and the default device list.
func benchResources() *specs.LinuxResources {
	return &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: i64(256 << 20), Swap: i64(256 << 20)},
		CPU:     &specs.LinuxCPU{Shares: u64(1024), Quota: i64(100000), Period: u64(100000)},
		Pids:    &specs.LinuxPids{Limit: i64(1024)},
		Devices: defaultDevices(),
	}
}

// BenchmarkCreateAddDestroy times one container's cgroup life on this
// host: Create with limits, Add a live process, Destroy. Moving the
// process back out before Destroy is not timed (in the runtime it exits).
// "with-cpuset" joins the cpuset hierarchy too, as runc and crun always
// do; the ratio printed is what skipping it saves.
//
//	go test -run '^$' -bench CreateAddDestroy ./runtime/cgroups/
func BenchmarkCreateAddDestroy(b *testing.B) {
	requireRoot(b)
	h, err := Detect()
	if err != nil {
		b.Fatal(err)
	}
	sleeper := exec.Command("busybox", "sleep", "3600")
	if err := sleeper.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = sleeper.Process.Kill()
		_ = sleeper.Wait()
	}()
	pid := sleeper.Process.Pid

	type variant struct {
		name string
		h    Hierarchy
		r    func() *specs.LinuxResources
	}
	var variants []variant
	if !h.V2() {
		variants = append(variants,
			variant{"v1-default", h, benchResources},
			variant{"v1-with-cpuset", h, func() *specs.LinuxResources {
				r := benchResources()
				r.CPU.Cpus, r.CPU.Mems = "0-1", "0"
				return r
			}})
	}
	if h.Unified != "" {
		// On a hybrid host the unified mount has no controllers: only the
		// device filter applies there.
		v2r := func() *specs.LinuxResources { return &specs.LinuxResources{Devices: defaultDevices()} }
		if h.V2() {
			v2r = benchResources
		}
		variants = append(variants, variant{"v2-unified", Hierarchy{Unified: h.Unified}, v2r})
	}
	perOp := map[string]time.Duration{}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			// The parent exists already, as /berth does once a host has run
			// one container.
			top := fmt.Sprintf("/berth-bench-%d", pid)
			defer func() {
				for _, mnt := range mounts(v.h) {
					_ = removeTree(mnt + top)
				}
			}()
			for _, mnt := range mounts(v.h) {
				if _, err := mkdirAll(mnt, top); err != nil {
					b.Fatal(err)
				}
			}
			if cs, ok := v.h.V1["cpuset"]; ok {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					val, err := readFile(cs + "/cpuset.effective_" + f[len("cpuset."):])
					if err != nil {
						b.Fatal(err)
					}
					if err := writeFile(cs+top+"/"+f, val); err != nil {
						b.Fatal(err)
					}
				}
			}
			pidStr := strconv.Itoa(pid)
			for i := 0; i < b.N; i++ {
				m, err := New(fmt.Sprintf("%s/c%d", top, i), v.r(), Options{Hierarchy: &v.h})
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Create(); err != nil {
					b.Fatal(err)
				}
				if err := m.Add(pid); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				for _, mnt := range mounts(v.h) {
					_ = writeFile(mnt+"/cgroup.procs", pidStr)
				}
				b.StartTimer()
				if err := m.Destroy(); err != nil {
					b.Fatal(err)
				}
			}
			perOp[v.name] = b.Elapsed() / time.Duration(b.N)
		})
	}
	if d, c := perOp["v1-default"], perOp["v1-with-cpuset"]; d > 0 && c > 0 {
		fmt.Printf("v1 Create+Add+Destroy: %v default, %v with cpuset; ratio %.2f\n", d, c, float64(d)/float64(c))
	}
}
