package agent_bench

import (
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkUpRunRmPaired times `berth run --rm --network none busybox
// true` through the CLI against Podman's and (where an engine can run)
// Docker's, one of each in turn: berth, podman, docker, berth, ... This
// machine's speed drifts by a tenth and more over minutes, which moves the
// ratios of BenchmarkUpRunRm, whose variants run one after another; here
// each ratio is taken within one round, and the median of the rounds'
// ratios is reported.
//
// berth is timed twice in each round: until the CLI exits (what the user
// waits for), and until the node has removed the container's mounts,
// cgroups and state ("removed", what podman and docker's own time holds).
// The next command starts only after the removal.
//
//	sudo go test -run '^$' -bench UpRunRmPaired -benchtime 50x ./bench/agent
func BenchmarkUpRunRmPaired(b *testing.B) {
	n := startUpNode(b)
	tarball := filepath.Join(n.dir, "busybox.tar")
	others := map[string]func() *exec.Cmd{}
	if runRm := podmanRunRm(b, tarball); runRm != nil {
		others["podman"] = runRm
	}
	if d, err := startDocker(b, tarball); err != nil {
		b.Logf("no docker engine: %v", err)
	} else {
		others["docker"] = func() *exec.Cmd { return d.cmd("run", "--rm", "--network", "none", "busybox", "true") }
	}
	names := slices.Sorted(maps.Keys(others))
	n.quiesce(b)
	// A sub-benchmark, so that the set-up above runs once, not again for
	// each b.N the harness tries.
	b.Run("cli-none", func(b *testing.B) { pairedRounds(b, n, names, others) })
}

func pairedRounds(b *testing.B, n *upNode, names []string, others map[string]func() *exec.Cmd) {
	run := func(cmd *exec.Cmd) time.Duration {
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v %s", strings.Join(cmd.Args, " "), err, out)
		}
		return time.Since(start)
	}
	var exited, removed []time.Duration
	times := map[string][]time.Duration{}
	for range b.N {
		start := time.Now()
		exited = append(exited, run(n.cli("run", "--rm", "--network", "none", "busybox", "true")))
		for n.containers(b) > 0 {
			time.Sleep(200 * time.Microsecond)
		}
		removed = append(removed, time.Since(start))
		for _, k := range names {
			times[k] = append(times[k], run(others[k]()))
		}
	}
	b.ReportMetric(median(exited).Seconds()*1e3, "berth-ms")
	b.ReportMetric(median(removed).Seconds()*1e3, "berth-removed-ms")
	for _, k := range names {
		b.ReportMetric(median(times[k]).Seconds()*1e3, k+"-ms")
		re, rr := ratios(exited, times[k]), ratios(removed, times[k])
		b.ReportMetric(re, "of-"+k)
		b.ReportMetric(rr, "removed-of-"+k)
		fmt.Printf("run --rm --network none busybox true, CLI, %d rounds: berth %v (removed %v), %s %v: median ratio %.3f of %s's time (%.3f to removed)\n",
			b.N, median(exited).Round(time.Microsecond), median(removed).Round(time.Microsecond),
			k, median(times[k]).Round(time.Microsecond), re, k, rr)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// ratios is the median of a[i]/b[i].
func ratios(a, b []time.Duration) float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = float64(a[i]) / float64(b[i])
	}
	slices.Sort(r)
	return r[len(r)/2]
}
