package dlocktest

import (
	"context"
	"testing"

	"github.com/dlock-go/dlock"
)

// TestHeldTellsALapse: held skips, and does not fail, when the lock it
// finds free is one whose holder says it lost it (its lease lapsed while
// the machine stalled); a holder that still says it holds fails it (see
// TestSuiteCatchesBrokenBackends).
func TestHeldTellsALapse(t *testing.T) {
	m := NewMemory()
	g := dlock.NewMutex(m)
	lk, err := g.TryAcquire(context.Background(), "lapsed")
	if err != nil {
		t.Fatal(err)
	}
	m.Lose(lk.Lease())
	skipped := false
	t.Run("lapsed", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		held(t, g, "lapsed", lk)
	})
	if !skipped {
		t.Fatal("held did not skip when the holder said its lock was lost")
	}
}
