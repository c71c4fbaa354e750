package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/spf13/cobra"
)

// statsRow is one container's line of berth stats.
type statsRow struct {
	Name        string  `json:"name"`
	CPUPercent  float64 `json:"cpuPercent"`
	MemoryBytes uint64  `json:"memoryBytes"`
	MemoryLimit uint64  `json:"memoryLimit,omitempty"`
	RxBytes     uint64  `json:"rxBytes"`
	TxBytes     uint64  `json:"txBytes"`
	Pids        uint64  `json:"pids"`
}

// statsRowOf computes a row from two samples of a container: CPU is the
// share of one CPU used between them, as docker stats shows it.
func statsRowOf(name string, prev, cur api.Stats) statsRow {
	r := statsRow{Name: name, MemoryBytes: cur.MemoryBytes, MemoryLimit: cur.MemoryLimit, RxBytes: cur.RxBytes, TxBytes: cur.TxBytes, Pids: cur.Pids}
	if dt := cur.Time.Sub(prev.Time); dt > 0 && cur.CPUNanos >= prev.CPUNanos {
		r.CPUPercent = float64(cur.CPUNanos-prev.CPUNanos) / float64(dt.Nanoseconds()) * 100
	}
	return r
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func newStatsCmd(af *apiFlags) *cobra.Command {
	var noStream bool
	var format string
	cmd := &cobra.Command{
		Use: "stats [NAME...]", Short: "Show containers' CPU, memory, network and process counts (all running ones by default)",
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c := af.client()
			names := args
			if len(names) == 0 {
				l, err := api.ListOf[*api.Instance](ctx, c, af.tenant, "")
				if err != nil {
					return err
				}
				for _, in := range l.Items {
					if isRunning(in) {
						names = append(names, in.Name)
					}
				}
			}
			prev, err := sample(ctx, c, af.tenant, names)
			// Named containers must be readable: an unknown or stopped
			// one is an error, as with docker stats.
			if err != nil && len(args) > 0 {
				return err
			}
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
				cur, _ := sample(ctx, c, af.tenant, names)
				var rows []statsRow
				for _, n := range names {
					p, ok1 := prev[n]
					s, ok2 := cur[n]
					if ok1 && ok2 {
						rows = append(rows, statsRowOf(n, p, s))
					}
				}
				if err := printStats(rows, format, !noStream); err != nil {
					return err
				}
				if noStream {
					return nil
				}
				prev = cur
			}
		},
	}
	cmd.Flags().BoolVar(&noStream, "no-stream", false, "print one sample and exit")
	cmd.Flags().StringVar(&format, "format", "", "table (default) or json")
	return cmd
}

// sample reads every named container's counters; those that cannot be
// read (stopped, gone) are left out, and the first such error returned.
func sample(ctx context.Context, c *api.Client, tenant string, names []string) (map[string]api.Stats, error) {
	out := map[string]api.Stats{}
	var first error
	for _, n := range names {
		s, err := c.Stats(ctx, tenant, n)
		if err != nil {
			if first == nil {
				first = fmt.Errorf("%s: %w", n, err)
			}
			continue
		}
		if s.Time.IsZero() {
			s.Time = time.Now()
		}
		out[n] = s
	}
	return out, first
}

func printStats(rows []statsRow, format string, clear bool) error {
	if format == "json" {
		for _, r := range rows {
			if err := printJSONLine(r); err != nil {
				return err
			}
		}
		return nil
	}
	if clear {
		fmt.Print("\033[2J\033[H")
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tCPU %\tMEM USAGE / LIMIT\tNET I/O\tPIDS")
	for _, r := range rows {
		limit := "-"
		if r.MemoryLimit > 0 && r.MemoryLimit < 1<<62 {
			limit = humanBytes(r.MemoryLimit)
		}
		fmt.Fprintf(tw, "%s\t%.2f%%\t%s / %s\t%s / %s\t%d\n", r.Name, r.CPUPercent, humanBytes(r.MemoryBytes), limit,
			humanBytes(r.RxBytes), humanBytes(r.TxBytes), r.Pids)
	}
	return tw.Flush()
}
