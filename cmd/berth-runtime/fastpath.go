package main

// fastpath.c runs start and delete, in their common case, before the Go
// runtime starts: see the comment at its top. glibc passes argc and argv to
// constructors.

/*
#cgo CFLAGS: -Wall -O2
void berth_fastpath(int argc, char **argv);
__attribute__((constructor)) static void berth_fastpath_ctor(int argc, char **argv) { berth_fastpath(argc, argv); }
*/
import "C"
