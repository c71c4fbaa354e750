package image

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// ProgressPrinter shows a pull for people: on a terminal one line per layer
// redrawn in place with bytes and rate; otherwise one plain line when a
// layer starts and one when it is done, so logs stay readable. Its Update
// method is a PullOptions.Progress callback.
type ProgressPrinter struct {
	w   io.Writer
	tty bool
	now func() time.Time

	// mu guards the fields below: Update may be called from several pulls.
	mu    sync.Mutex
	order []digest.Digest
	state map[digest.Digest]*layerProgress
	drawn int       // lines drawn last time (tty)
	last  time.Time // last redraw (tty)
}

type layerProgress struct {
	Progress
	start time.Time
}

// NewProgressPrinter writes to w, redrawing in place when tty is set; now
// is the clock, time.Now when nil.
func NewProgressPrinter(w io.Writer, tty bool, now func() time.Time) *ProgressPrinter {
	if now == nil {
		now = time.Now
	}
	return &ProgressPrinter{w: w, tty: tty, now: now, state: map[digest.Digest]*layerProgress{}}
}

// Update records one progress report and prints what changed.
func (p *ProgressPrinter) Update(ev Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.state[ev.Layer]
	if !ok {
		st = &layerProgress{start: p.now()}
		p.state[ev.Layer] = st
		p.order = append(p.order, ev.Layer)
		if !p.tty && !ev.Existing {
			fmt.Fprintf(p.w, "%s: downloading %s\n", shortDigest(ev.Layer), HumanSize(ev.Total))
		}
	}
	wasDone := st.Done
	st.Progress = ev
	if !p.tty {
		if ev.Done && !wasDone {
			fmt.Fprintln(p.w, progressLine(st, p.now()))
		}
		return
	}
	if now := p.now(); ev.Done || now.Sub(p.last) > 100*time.Millisecond {
		p.last = now
		p.redraw()
	}
}

func (p *ProgressPrinter) redraw() {
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	for _, d := range p.order {
		fmt.Fprintf(&b, "\x1b[2K%s\n", progressLine(p.state[d], p.now()))
	}
	p.drawn = len(p.order)
	io.WriteString(p.w, b.String())
}

// Finish draws the final state on a terminal.
func (p *ProgressPrinter) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && len(p.order) > 0 {
		p.redraw()
	}
}

// progressLine is one layer's status.
func progressLine(st *layerProgress, now time.Time) string {
	el := now.Sub(st.start)
	switch {
	case st.Existing:
		return fmt.Sprintf("%s: already present", shortDigest(st.Layer))
	case st.Done:
		return fmt.Sprintf("%s: done %s in %s (%s/s)", shortDigest(st.Layer), HumanSize(st.Total), el.Round(time.Millisecond), HumanSize(rate(st.Total, el)))
	}
	return fmt.Sprintf("%s: %s / %s (%s/s)", shortDigest(st.Layer), HumanSize(st.Current), HumanSize(st.Total), HumanSize(rate(st.Current, el)))
}

func rate(n int64, d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64(float64(n) / d.Seconds())
}

func shortDigest(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		e = e[:12]
	}
	return e
}

// HumanSize prints a byte count in SI units, as Docker does.
func HumanSize(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%cB", float64(n)/float64(div), "kMGTPE"[exp])
}
