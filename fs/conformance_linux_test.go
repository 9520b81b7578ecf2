//go:build linux && !dlock_portable

package fs

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	if os.Getenv(stressEnv) != "" {
		os.Exit(runStress())
	}
	goleak.VerifyTestMain(m)
}

// unordered: waiters are served in arrival order here (see harness).
const unordered = false
