package pg_test

import (
	"strings"
	"testing"

	"github.com/dlock-go/dlock/internal/golden"
)

// The package's Examples need a server, so they carry no "// Output:" and
// go test only compiles them; here they run when the server is there (and
// fail the test under DLOCK_REQUIRE_SERVERS=1 when it is not), and each
// must print only nil errors.
func TestExamplesRun(t *testing.T) {
	testURL(t)
	for name, ex := range map[string]func(){
		"Example": Example, "ExampleBackend_Keys": ExampleBackend_Keys,
		"ExampleLockTx": ExampleLockTx, "ExampleWithFencing": ExampleWithFencing,
	} {
		out := golden.Stdout(t, ex)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line != "" && line != "<nil>" && !strings.HasPrefix(line, "token") {
				t.Errorf("%s printed %q, want only nil errors", name, line)
			}
		}
	}
}
