// Package nsenter joins, before the Go runtime starts, the namespaces a
// multithreaded process cannot join: user and mount. The runtime starts its
// child with _BERTH_SETNS="user:FD,mnt:FD"; a C constructor, which runs while
// the process still has one thread, calls setns(2) on each fd in order.
// Importing this package is what links the constructor into a binary.
package nsenter

/*
#cgo CFLAGS: -Wall -O2
void berth_nsenter(void);
__attribute__((constructor)) static void berth_nsenter_ctor(void) { berth_nsenter(); }
*/
import "C"
