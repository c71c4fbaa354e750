package agent

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
)

// Top lists the processes in the container's cgroup as docker top does:
// host pids, users as the container names them.
func (a *Agent) Top(ctx context.Context, ref string) (api.Top, error) {
	c, err := a.get(ref)
	if err != nil {
		return api.Top{}, err
	}
	c.mu.Lock()
	id, ids, running := c.meta.ID, c.meta.IDs, c.exited != nil
	c.mu.Unlock()
	if !running {
		return api.Top{}, fmt.Errorf("container %s: %w", id, ErrNotRunning)
	}
	pids, err := a.cfg.Runtime.Pids(ctx, id)
	if err != nil {
		return api.Top{}, fmt.Errorf("top of %s: %w", id, err)
	}
	slices.Sort(pids)
	boot, err := bootTime()
	if err != nil {
		return api.Top{}, err
	}
	var procs []procInfo
	for _, pid := range pids {
		p, err := readProc(pid, boot, ids)
		if err != nil {
			continue // gone in between
		}
		procs = append(procs, p)
	}
	names := a.userNames(id)
	return FormatTop(procs, time.Now(), func(uid uint32) string { return names[uid] }), nil
}

func readProc(pid int, boot time.Time, ids IDRange) (procInfo, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	p, start, err := parseProcStat(string(b))
	if err != nil {
		return p, err
	}
	p.Start = boot.Add(time.Duration(start) * (time.Second / clockTicks))
	if b, err := os.ReadFile(dir + "/cmdline"); err == nil {
		p.Args = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(p.Args) == 1 && p.Args[0] == "" {
			p.Args = nil
		}
	}
	p.UID = 65534 // the overflow id, for a uid outside the container's range
	if b, err := os.ReadFile(dir + "/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Uid:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					if u, err := strconv.ParseUint(f[0], 10, 32); err == nil && u >= uint64(ids.Base) && u < uint64(ids.Base)+uint64(ids.Size) {
						p.UID = uint32(u - uint64(ids.Base))
					}
				}
			}
		}
	}
	return p, nil
}

func bootTime() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("/proc/stat btime: %w", err)
			}
			return time.Unix(s, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("/proc/stat: no btime")
}

// userNames reads the container's /etc/passwd (inside its root only); a
// missing or unreadable one leaves uids as numbers.
func (a *Agent) userNames(id string) map[uint32]string {
	names := map[uint32]string{}
	root, err := os.OpenRoot(a.rootfs(id))
	if err != nil {
		return names
	}
	defer root.Close()
	f, err := root.Open("etc/passwd")
	if err != nil {
		return names
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) < 3 {
			continue
		}
		if u, err := strconv.ParseUint(fs[2], 10, 32); err == nil {
			if _, dup := names[uint32(u)]; !dup {
				names[uint32(u)] = fs[0]
			}
		}
	}
	return names
}
