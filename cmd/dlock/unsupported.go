//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

// Command dlock is flock(1) for the network. It needs a Unix system (Linux,
// macOS, FreeBSD, NetBSD, OpenBSD, DragonFly BSD): it runs COMMAND in a
// process group of its own, led by a supervisor, with Unix signals and
// terminal job control.
package main

// This line stops the build on other systems (Windows, Plan 9, js/wasm)
// with a message that says why: the name below is not defined anywhere.
var _ = dlock_command_needs_a_Unix_system_linux_darwin_freebsd_netbsd_openbsd_dragonfly
