//go:build linux && !dlock_portable

package fs

import (
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/dlocktest"
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

// harness plugs the backend into the conformance suite.
func harness() dlocktest.Harness[*Lease] {
	return dlocktest.Harness[*Lease]{
		New: func(t testing.TB, space string) any {
			b, err := New(space)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		},
		Lose:        loseLease,
		LossWithin:  3 * time.Second,
		FreedWithin: 100 * time.Millisecond,
		Fencing:     true,
	}
}

func TestConformance(t *testing.T) {
	dlocktest.Run(t, harness())
}

// loseLease makes l lose its lock from outside: it removes the lock file, so
// that the path no longer names the locked file. For a read lease that loses
// every reader of the name at once (they lock one file), which the suite
// allows.
func loseLease(t testing.TB, l *Lease) {
	t.Helper()
	if err := os.Remove(l.Path()); err != nil {
		t.Fatalf("lose: %v", err)
	}
}
