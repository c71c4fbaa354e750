package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
)

// procInfo is what top shows of one process, as read from /proc.
type procInfo struct {
	Pid, PPid int
	UID       uint32 // in the container's user namespace
	TTY       uint64 // tty_nr of /proc/PID/stat
	CPUTicks  uint64 // user + system time, in clock ticks
	Start     time.Time
	Comm      string
	Args      []string
}

// clockTicks is USER_HZ, which Linux fixes at 100 on every architecture
// it reports /proc times for.
const clockTicks = 100

// FormatTop lays out procs as ps -ef does, in the order given; user names
// a uid (empty: the number).
func FormatTop(procs []procInfo, now time.Time, user func(uint32) string) api.Top {
	// docker top's default columns (ps -ef).
	t := api.Top{Titles: []string{"UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"}, Processes: [][]string{}}
	for _, p := range procs {
		name := ""
		if user != nil {
			name = user(p.UID)
		}
		if name == "" {
			name = strconv.FormatUint(uint64(p.UID), 10)
		}
		cmd := strings.Join(p.Args, " ")
		if cmd == "" {
			cmd = "[" + p.Comm + "]"
		}
		t.Processes = append(t.Processes, []string{name, strconv.Itoa(p.Pid), strconv.Itoa(p.PPid),
			strconv.Itoa(cpuPercent(p.CPUTicks, now.Sub(p.Start))), startTime(p.Start, now), ttyName(p.TTY),
			cpuTime(p.CPUTicks), cmd})
	}
	return t
}

// cpuPercent is ps's C: CPU time over lifetime, in whole percent, at most 99.
func cpuPercent(ticks uint64, ran time.Duration) int {
	if ran <= 0 {
		return 0
	}
	pct := int(time.Duration(ticks) * (time.Second / clockTicks) * 100 / ran)
	return min(pct, 99)
}

// startTime is ps's STIME: the time today, the date this year, else the year.
func startTime(start, now time.Time) string {
	switch {
	case start.YearDay() == now.YearDay() && start.Year() == now.Year():
		return start.Format("15:04")
	case start.Year() == now.Year():
		return start.Format("Jan02")
	}
	return start.Format("2006")
}

// cpuTime is ps's TIME: [DD-]HH:MM:SS of CPU time.
func cpuTime(ticks uint64) string {
	s := ticks / clockTicks
	d, h, m := s/86400, s/3600%24, s/60%60
	if d > 0 {
		return fmt.Sprintf("%d-%02d:%02d:%02d", d, h, m, s%60)
	}
	return fmt.Sprintf("%02d:%02d:%02d", h, m, s%60)
}

// ttyName names a tty_nr as ps does: pts/N for pseudo-terminals, ? for none.
func ttyName(nr uint64) string {
	major := (nr >> 8) & 0xfff
	minor := (nr & 0xff) | ((nr >> 12) & 0xfff00)
	switch {
	case nr == 0:
		return "?"
	case major >= 136 && major <= 143:
		return "pts/" + strconv.FormatUint((major-136)*256+minor, 10)
	case major == 4 && minor < 64:
		return "tty" + strconv.FormatUint(minor, 10)
	case major == 4:
		return "ttyS" + strconv.FormatUint(minor-64, 10)
	case major == 5 && minor == 1:
		return "console"
	}
	return fmt.Sprintf("%d,%d", major, minor)
}

// parseProcStat reads pid, ppid, tty_nr, utime+stime and starttime (in
// ticks since boot) from /proc/PID/stat; comm may hold spaces and ')'.
func parseProcStat(s string) (p procInfo, startTicks uint64, err error) {
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return p, 0, fmt.Errorf("proc stat %q: no command", s)
	}
	if p.Pid, err = strconv.Atoi(strings.TrimSpace(s[:open])); err != nil {
		return p, 0, fmt.Errorf("proc stat: pid: %w", err)
	}
	p.Comm = s[open+1 : end]
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 20 {
		return p, 0, fmt.Errorf("proc stat of %d: %d fields", p.Pid, len(f)+2)
	}
	num := func(n int) uint64 {
		v, e := strconv.ParseInt(f[n-3], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("proc stat of %d: field %d %q: %w", p.Pid, n, f[n-3], e)
		}
		return uint64(v)
	}
	p.PPid = int(num(4))
	p.TTY = uint64(uint32(num(7)))
	p.CPUTicks = num(14) + num(15)
	startTicks = num(22)
	return p, startTicks, err
}
