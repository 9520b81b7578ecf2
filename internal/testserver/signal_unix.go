//go:build unix

package testserver

import (
	"os"
	"syscall"
)

// sigStop and sigCont freeze and thaw a server process.
var sigStop, sigCont os.Signal = syscall.SIGSTOP, syscall.SIGCONT
