package cgroups

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// parseUint parses a cgroup file's single number; "max" and v1's
// page-rounded LONG_MAX are Unlimited.
func parseUint(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return Unlimited, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		if i, ierr := strconv.ParseInt(s, 10, 64); ierr == nil && i < 0 {
			return Unlimited, nil
		}
		return 0, fmt.Errorf("parse %q: %w", s, err)
	}
	if v >= 1<<62 {
		return Unlimited, nil
	}
	return v, nil
}

// parseKV parses "key value" lines (memory.stat, cpu.stat, cgroup.events).
func parseKV(s string) map[string]uint64 {
	m := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			m[k] = n
		}
	}
	return m
}

// parseBlkioV1 parses blkio.throttle.io_service_bytes / io_serviced:
// "8:0 Read 4096" lines, plus a "Total" line that is skipped.
func parseBlkioV1(bytes, ios string) []DeviceIO {
	var order []string
	devs := map[string]*DeviceIO{}
	get := func(dev string) *DeviceIO {
		d := devs[dev]
		if d == nil {
			d = &DeviceIO{}
			maj, min, _ := strings.Cut(dev, ":")
			a, _ := strconv.ParseUint(maj, 10, 32)
			b, _ := strconv.ParseUint(min, 10, 32)
			d.Major, d.Minor = uint32(a), uint32(b)
			devs[dev] = d
			order = append(order, dev)
		}
		return d
	}
	for i, text := range []string{bytes, ios} {
		for _, line := range strings.Split(text, "\n") {
			f := strings.Fields(line)
			if len(f) != 3 || !strings.Contains(f[0], ":") {
				continue
			}
			n, err := strconv.ParseUint(f[2], 10, 64)
			if err != nil {
				continue
			}
			d := get(f[0])
			switch {
			case i == 0 && f[1] == "Read":
				d.ReadBytes = n
			case i == 0 && f[1] == "Write":
				d.WriteBytes = n
			case i == 1 && f[1] == "Read":
				d.ReadIOs = n
			case i == 1 && f[1] == "Write":
				d.WriteIOs = n
			}
		}
	}
	out := make([]DeviceIO, 0, len(order))
	for _, dev := range order {
		out = append(out, *devs[dev])
	}
	return out
}

// parseIOStatV2 parses io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 ...".
func parseIOStatV2(s string) []DeviceIO {
	var out []DeviceIO
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		maj, min, ok := strings.Cut(f[0], ":")
		if !ok {
			continue
		}
		a, _ := strconv.ParseUint(maj, 10, 32)
		b, _ := strconv.ParseUint(min, 10, 32)
		d := DeviceIO{Major: uint32(a), Minor: uint32(b)}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "rbytes":
				d.ReadBytes = n
			case "wbytes":
				d.WriteBytes = n
			case "rios":
				d.ReadIOs = n
			case "wios":
				d.WriteIOs = n
			}
		}
		out = append(out, d)
	}
	return out
}

// parsePids parses cgroup.procs.
func parsePids(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Fields(s) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse pid %q: %w", f, err)
		}
		out = append(out, p)
	}
	return out, nil
}
