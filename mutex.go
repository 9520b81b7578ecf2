package dlock

import (
	"context"

	"github.com/dlock-go/dlock/backend"
)

// NewMutex returns a distributed mutex over b: at most one holder of each
// name at a time, across goroutines, processes and machines that share b's
// lock space. It waits with b's native wait when b implements
// backend.LockWaiter, else it polls with backoff (see WithBackoff).
func NewMutex[L backend.Lease](b backend.Locker[L], opts ...Option) *Mutex[L] {
	if b == nil {
		return brokenGuard[L]("mutex", opts)
	}
	var wait func(context.Context, string) (L, error)
	if w, ok := b.(backend.LockWaiter[L]); ok {
		wait = w.Lock
	}
	g := newGuard(b, "mutex", b.TryLock, wait, opts)
	if m, ok := b.(backend.MultiLocker[L]); ok {
		g.tryAll = m.TryLockAll
	}
	if d, ok := b.(backend.LockDescriber); ok {
		g.describe = d.DescribeLock
	}
	return g
}
