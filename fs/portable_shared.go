//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

// DEDUPE: this file holds copies of pure helpers of the Linux
// implementation (file_linux.go, locks_linux.go) so that both build on
// Linux under their exclusive tags; they belong in one tag-neutral file.

const (
	whatMutex = "mutex"
	whatRead  = "read lock"
	whatWrite = "write lock"
	whatSem   = "semaphore"
)

// parseCounter parses a counter: exactly 20 decimal digits and a newline.
func parseCounter(b []byte) (uint64, bool) {
	if len(b) != counterLen || b[counterLen-1] != '\n' {
		return 0, false
	}
	var v uint64
	for _, c := range b[:counterLen-1] {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false // overflows
		}
		v = v*10 + d
	}
	return v, true
}

// formatCounter appends v as a counter: 20 decimal digits, zero-padded,
// and a newline.
func formatCounter(dst []byte, v uint64) []byte {
	var d [counterLen]byte
	for i := counterLen - 2; i >= 0; i-- {
		d[i] = byte('0' + v%10)
		v /= 10
	}
	d[counterLen-1] = '\n'
	return append(dst, d[:]...)
}
