package dlock

import (
	"context"
	"errors"
	"fmt"

	"github.com/dlock-go/dlock/backend"
)

// Upgradeable returns the upgradeable read side: its holder shares a name
// with readers but has it alone among upgradeable readers and writers, and
// can turn it into the write lock with Lock.Upgrade without letting go of
// its read access — for code that reads, decides, and sometimes writes
// (read a cache entry; refresh it only if stale) without the window in
// which a reader that let go to become a writer would see the entry change
// under it. Over a backend without upgradeable read locks
// (backend.UpgradeableLocker), every call of the returned Guard fails with
// an error matching errors.ErrUnsupported.
func (rw *RWMutex[L]) Upgradeable() *Guard[L] { return rw.upgradeable }

// upgradeableKind is the kind of the upgradeable side's Guard.
const upgradeableKind = "rwmutex upgradeable"

// newUpgradeable is the upgradeable side over b.
func newUpgradeable[L backend.Lease](b backend.RWLocker[L], opts []Option) *Guard[L] {
	const kind = upgradeableKind
	u, ok := b.(backend.UpgradeableLocker[L])
	if !ok {
		g := brokenGuard[L](kind, opts)
		g.err = fmt.Errorf("%w: the %s backend has no upgradeable read lock", errors.ErrUnsupported, backendName[L]())
		return g
	}
	var wait func(context.Context, string) (L, error)
	if w, ok := b.(backend.UpgradeableWaiter[L]); ok {
		wait = w.ULock
	}
	return newGuard(b, kind, u.TryULock, wait, opts)
}

// Upgrade turns an upgradeable read lock (taken through
// RWMutex.Upgradeable) into the write lock of its name, without letting go
// of its read access: it waits until the other readers have left — while
// it waits, new readers and writers wait too — or until ctx is done. When
// ctx ends first it returns an error matching ErrNotAcquired and
// ctx.Err(), and l still holds the upgradeable read lock, as it does
// after any other failure but a loss (ErrLockLost). Server errors are
// ridden out as a wait's are. After it returns nil, l holds the write lock
// until Release. Upgrade of a lock of another kind returns an error
// matching errors.ErrUnsupported.
func (l *Lock[L]) Upgrade(ctx context.Context) error { return l.upgrade(ctx, true) }

// TryUpgrade is Upgrade with a single attempt: while other readers hold
// the name it returns at once an error matching ErrNotAcquired, and l
// still holds the upgradeable read lock.
func (l *Lock[L]) TryUpgrade(ctx context.Context) error { return l.upgrade(ctx, false) }

func (l *Lock[L]) upgrade(ctx context.Context, wait bool) error {
	g := l.g
	u, ok := any(l.lease).(backend.Upgrader)
	if !ok || g.kind != upgradeableKind {
		return g.errorf(l.name, fmt.Errorf("upgrade: %w: not an upgradeable read lock (RWMutex.Upgradeable)", errors.ErrUnsupported))
	}
	if err := l.Err(); err != nil {
		return g.errorf(l.name, fmt.Errorf("upgrade: %w", err))
	}
	if ctx.Err() != nil {
		return g.notAcquired(ctx, l.name, nil)
	}
	var err, last error
	if wait {
		_, _, last, err = g.retry(ctx, func() (bool, error) {
			err := u.Upgrade(ctx)
			if errors.Is(err, ErrLockLost) || errors.Is(err, ErrNotHeld) || errors.Is(err, errors.ErrUnsupported) {
				err = backend.Permanent(err) // no point in trying again
			}
			return err == nil, err
		})
	} else {
		var ok bool
		ok, err = u.TryUpgrade(ctx)
		if err == nil && !ok {
			return g.errorf(l.name, fmt.Errorf("upgrade: %w", ErrNotAcquired))
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrLockLost):
		return g.errorf(l.name, fmt.Errorf("upgrade: %w", err))
	case ctx.Err() != nil:
		return g.notAcquired(ctx, l.name, last)
	}
	return g.errorf(l.name, fmt.Errorf("upgrade: %w", err))
}
