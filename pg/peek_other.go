//go:build !unix

package pg

import (
	"net"
	"syscall"
)

// rawConn returns nil: here the watcher reads the connection (see watch).
func rawConn(net.Conn) syscall.RawConn { return nil }

// readable is not used without rawConn.
func readable(uintptr) bool { return true }
