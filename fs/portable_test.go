//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/dlocktest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// harness plugs the portable implementation into the conformance suite.
// Its waits poll: arrival order is not promised (Unordered), but the
// suite still checks that nobody starves.
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
		Unordered:   true,
	}
}

func TestConformance(t *testing.T) {
	dlocktest.Run(t, harness())
}

// loseLease makes l lose its lock from outside: it removes the lock file.
func loseLease(t testing.TB, l *Lease) {
	t.Helper()
	if err := os.Remove(l.Path()); err != nil {
		t.Fatalf("lose: %v", err)
	}
}
