package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// proxyTerminal connects this process's terminal to the container's pty
// master for `run -t` and `exec -t` without a console socket, and returns
// the function that restores the terminal.
func proxyTerminal(master *os.File) func() {
	restore := func() {}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		if st, err := term.MakeRaw(int(os.Stdin.Fd())); err == nil {
			restore = func() { _ = term.Restore(int(os.Stdin.Fd()), st) }
		}
		if ws, err := unix.IoctlGetWinsize(int(os.Stdin.Fd()), unix.TIOCGWINSZ); err == nil {
			_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, ws)
		}
	}
	go func() { _, _ = io.Copy(master, os.Stdin) }()
	done := make(chan struct{})
	go func() { _, _ = io.Copy(os.Stdout, master); close(done) }()
	return func() {
		<-done
		restore()
		master.Close()
	}
}
