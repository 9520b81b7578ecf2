//go:build linux

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
// that the path no longer names the locked file. A read lock is the
// exception: every reader of a name locks the same file, so removing it
// loses all of them at once, and nothing outside the process can take the
// lock of one reader alone. For a read lease the loss is simulated: its
// descriptor is closed (dropping its shared lock) and the loss reported, as
// the monitor would.
func loseLease(t testing.TB, l *Lease) {
	t.Helper()
	if l.what == whatRead {
		l.mu.Lock()
		l.f.close()
		l.mu.Unlock()
		l.b.unregister(l)
		l.markLost()
		return
	}
	if err := os.Remove(l.Path()); err != nil {
		t.Fatalf("lose: %v", err)
	}
}
