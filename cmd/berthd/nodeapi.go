package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// serveNodeAPI serves the agent's container operations on a unix socket
// only root can reach, for the control plane on the same machine, and
// returns the agent URL to register. It serves until ctx ends.
func serveNodeAPI(ctx context.Context, sock string, h http.Handler) (string, <-chan error, error) {
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", nil, fmt.Errorf("agent socket: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return "", nil, fmt.Errorf("agent socket: %w", err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		return "", nil, fmt.Errorf("agent socket: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() {
		<-ctx.Done()
		// Open exec and attach sessions end with the process serving them.
		_ = srv.Close()
	}()
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	return "unix://" + sock, done, nil
}
