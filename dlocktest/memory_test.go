package dlocktest_test

import (
	"testing"

	"github.com/dlock-go/dlock/dlocktest"
)

func TestMemory(t *testing.T) {
	mem := dlocktest.NewMemory()
	dlocktest.Run(t, dlocktest.Harness[*dlocktest.MemoryLease]{
		New:       func(testing.TB, string) any { return mem },
		Lose:      func(_ testing.TB, l *dlocktest.MemoryLease) { mem.Lose(l) },
		Fencing:   true,
		InProcess: true,
	})
}
