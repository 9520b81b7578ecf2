package faults

import "golang.org/x/sys/unix"

// Now returns CLOCK_MONOTONIC in nanoseconds. On Linux the clock is
// system-wide, so readings taken in different processes of one machine
// compare; it keeps counting while a process is stopped (SIGSTOP).
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("faults: clock_gettime(CLOCK_MONOTONIC): " + err.Error()) // cannot happen on Linux
	}
	return ts.Nano()
}
