package valkey_test

import (
	"strings"
	"testing"

	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/internal/golden"
)

// The package's Examples need servers, so they carry no "// Output:" and go
// test only compiles them; here they run when the servers are there (and
// fail the test under DLOCK_REQUIRE_SERVERS=1 when they are not), and each
// must print only nil errors and the leader's token.
func TestExamplesRun(t *testing.T) {
	dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES")
	for name, ex := range map[string]func(){
		"Example": Example, "ExampleNewRedLock": ExampleNewRedLock, "ExampleBackend_WLock": ExampleBackend_WLock,
	} {
		out := golden.Stdout(t, ex)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line != "" && line != "<nil>" && !strings.HasPrefix(line, "leader with fencing token") {
				t.Errorf("%s printed %q, want only nil errors", name, line)
			}
		}
	}
}
