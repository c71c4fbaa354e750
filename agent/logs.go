package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// logFile is the current log file berth-init writes in a container's log
// directory; rotated files are logFile.1 (newest) to logFile.N-1.
const logFile = "container.log"

// LogEntry is one line of a container's output.
type LogEntry struct {
	Time   time.Time
	Stream string // "stdout" or "stderr"
	Line   []byte // without the newline
}

// LogOptions select what Logs returns.
type LogOptions struct {
	Follow     bool
	Tail       int // the last Tail lines; negative means all
	Since      time.Time
	Timestamps bool
}

// parseCRILine reads one record "<RFC3339Nano> <stream> <F|P> <text>".
func parseCRILine(b []byte) (t time.Time, stream string, partial bool, text []byte, err error) {
	f := bytes.SplitN(b, []byte(" "), 4)
	if len(f) < 3 {
		return t, "", false, nil, fmt.Errorf("log record %q: too few fields", b)
	}
	t, err = time.Parse(time.RFC3339Nano, string(f[0]))
	if err != nil {
		return t, "", false, nil, fmt.Errorf("log record time: %w", err)
	}
	if len(f) == 4 {
		text = f[3]
	}
	return t, string(f[1]), string(f[2]) == "P", text, nil
}

// logAssembler joins partial records into lines, per stream.
type logAssembler struct {
	partial map[string]*LogEntry
}

// add takes one record line and returns the entry it completes, if any.
func (a *logAssembler) add(rec []byte) (LogEntry, bool) {
	t, stream, partial, text, err := parseCRILine(rec)
	if err != nil {
		return LogEntry{}, false
	}
	if a.partial == nil {
		a.partial = map[string]*LogEntry{}
	}
	e := a.partial[stream]
	if e == nil {
		e = &LogEntry{Time: t, Stream: stream}
	}
	e.Line = append(e.Line, text...)
	if partial && len(e.Line) < 1<<20 {
		a.partial[stream] = e
		return LogEntry{}, false
	}
	delete(a.partial, stream)
	return *e, true
}

// SelectLogs applies since and tail to entries in time order.
func SelectLogs(entries []LogEntry, opt LogOptions) []LogEntry {
	if !opt.Since.IsZero() {
		i := 0
		for i < len(entries) && entries[i].Time.Before(opt.Since) {
			i++
		}
		entries = entries[i:]
	}
	if opt.Tail >= 0 && len(entries) > opt.Tail {
		entries = entries[len(entries)-opt.Tail:]
	}
	return entries
}

// FormatLog writes e as docker logs prints it.
func FormatLog(w io.Writer, e LogEntry, timestamps bool) error {
	var b []byte
	if timestamps {
		b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, ' ')
	}
	b = append(append(b, e.Line...), '\n')
	_, err := w.Write(b)
	return err
}

// readLogDir reads every complete entry of the rotated files and the
// current one, oldest first, and returns the current file open at its end
// for following (nil if it does not exist yet).
func readLogDir(dir string, files int, br *bufio.Reader, asm *logAssembler, fn func(LogEntry)) (*os.File, int64, error) {
	for i := files - 1; i >= 1; i-- {
		f, err := os.Open(filepath.Join(dir, logFile+"."+strconv.Itoa(i)))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		_, err = readRecords(br, f, asm, fn)
		f.Close()
		if err != nil {
			return nil, 0, err
		}
	}
	f, err := os.Open(filepath.Join(dir, logFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	n, err := readRecords(br, f, asm, fn)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, n, nil
}

// maxRecord is the longest log record kept; a longer one is skipped.
const maxRecord = 64 << 10

// newRecordReader returns a reader for readRecords. One serves all the
// reads of a log: a buffer of maxRecord made for each read was most of
// what a short run's follow allocated.
func newRecordReader() *bufio.Reader { return bufio.NewReaderSize(nil, maxRecord) }

// readRecords reads whole records from r through br and returns the bytes
// consumed; a record without its newline yet is left for the next read.
func readRecords(br *bufio.Reader, r io.Reader, asm *logAssembler, fn func(LogEntry)) (int64, error) {
	br.Reset(r)
	var n int64
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An overlong record: skip it whole.
			for errors.Is(err, bufio.ErrBufferFull) {
				n += int64(len(line))
				line, err = br.ReadSlice('\n')
			}
			n += int64(len(line))
			continue
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n += int64(len(line))
		if e, ok := asm.add(line[:len(line)-1]); ok {
			e.Line = append([]byte(nil), e.Line...)
			fn(e)
		}
	}
}

// followLog streams what is appended to the current log file, across
// rotations, until ctx ends or the container has exited (exited closed,
// or nil: gone already) and everything it wrote is read. The exit wakes
// it at once, so that a follower ends with the container rather than at
// its next poll.
func followLog(ctx context.Context, dir string, f *os.File, off int64, br *bufio.Reader, asm *logAssembler, fn func(LogEntry) error, exited <-chan struct{}) error {
	path := filepath.Join(dir, logFile)
	var ferr error
	emit := func(e LogEntry) {
		if ferr == nil {
			ferr = fn(e)
		}
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for {
		finished := exited == nil
		if !finished {
			select {
			case <-exited:
				finished = true
			default:
			}
		}
		if f != nil {
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				return err
			}
			n, err := readRecords(br, f, asm, emit)
			if err != nil {
				return err
			}
			off += n
		}
		if ferr != nil {
			return ferr
		}
		// Rotated (or created): the old file is read to its end above;
		// continue with the new one from its start.
		if st, err := os.Stat(path); err == nil {
			var same bool
			if f != nil {
				if cur, err := f.Stat(); err == nil {
					same = os.SameFile(st, cur)
				}
			}
			if !same {
				nf, err := os.Open(path)
				if err == nil {
					if f != nil {
						f.Close()
					}
					f, off = nf, 0
					continue
				}
			}
		}
		if finished {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-exited:
		}
	}
}
