// Package fastinit links in the container init's fast path: a C
// constructor that, when the runtime starts its child with
// _BERTH_INIT=plan, runs the plan the parent computed (see
// runtime/plan_linux.go) and execs the container's process before the Go
// runtime starts. Importing this package is what links it into a binary.
package fastinit

/*
#cgo CFLAGS: -Wall -O2
void berth_fastinit(void);
__attribute__((constructor)) static void berth_fastinit_ctor(void) { berth_fastinit(); }
*/
import "C"
