//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

// Command dlock is flock(1) for the network. It needs a Unix system (Linux,
// macOS, FreeBSD, NetBSD, OpenBSD, DragonFly BSD): it runs COMMAND in a
// process group of its own, led by a supervisor, with Unix signals and
// terminal job control. On other systems (Windows) it builds, so that
// `go build ./...` of the module works there, and says so when run.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "dlock: the dlock command needs a Unix system (Linux, macOS, the BSDs), not %s; the library (package dlock and its backends) can still be used from Go\n", runtime.GOOS)
	os.Exit(69) // EX_UNAVAILABLE
}
