//go:build !unix

package testserver

import "os"

// sigStop and sigCont are nil where a process cannot be frozen (Windows):
// the tests that freeze servers skip.
var sigStop, sigCont os.Signal
