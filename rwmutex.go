package dlock

import (
	"context"

	"github.com/dlock-go/dlock/backend"
)

// RWMutex is a distributed reader-writer mutex: any number of readers of a
// name together, or one writer alone. Once a writer waits for a name, new
// readers of it wait too, so readers cannot starve writers.
type RWMutex[L backend.Lease] struct {
	read, write, upgradeable *Guard[L]
}

// NewRWMutex returns a reader-writer mutex over b. It waits with b's native
// wait when b implements backend.RWWaiter (which is how a backend gives
// writers preference), else it polls with backoff.
func NewRWMutex[L backend.Lease](b backend.RWLocker[L], opts ...Option) *RWMutex[L] {
	if b == nil {
		return &RWMutex[L]{read: brokenGuard[L]("rwmutex read", opts), write: brokenGuard[L]("rwmutex write", opts),
			upgradeable: brokenGuard[L](upgradeableKind, opts)}
	}
	var rwait, wwait func(context.Context, string) (L, error)
	if w, ok := b.(backend.RWWaiter[L]); ok {
		rwait, wwait = w.RLock, w.WLock
	}
	rw := &RWMutex[L]{
		read:        newGuard(b, "rwmutex read", b.TryRLock, rwait, opts),
		write:       newGuard(b, "rwmutex write", b.TryWLock, wwait, opts),
		upgradeable: newUpgradeable(b, opts),
	}
	if m, ok := b.(backend.MultiRWLocker[L]); ok {
		rw.read.tryAll, rw.write.tryAll = m.TryRLockAll, m.TryWLockAll
	}
	if d, ok := b.(backend.RWDescriber); ok {
		rw.read.describe, rw.write.describe, rw.upgradeable.describe = d.DescribeRW, d.DescribeRW, d.DescribeRW
	}
	return rw
}

// Read returns the read side: its holders share a name with each other.
func (rw *RWMutex[L]) Read() *Guard[L] { return rw.read }

// Write returns the write side: its holder has a name to itself.
func (rw *RWMutex[L]) Write() *Guard[L] { return rw.write }
