//go:build unix

package pg

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawConn returns nc's socket when a watcher can wait on it without
// reading it (see watch): nc is a syscall.Conn (a TCP or Unix socket, or
// a wrapper that gives its socket); else nil.
func rawConn(nc net.Conn) syscall.RawConn {
	if c, ok := nc.(syscall.Conn); ok {
		if rc, err := c.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

// readable reports whether the socket fd has something to read (or an
// end or error to report) without reading it: false asks the runtime to
// wait until it does.
func readable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err != unix.EINTR {
			return err != unix.EAGAIN && err != unix.EWOULDBLOCK
		}
	}
}
