package valkey

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// The upgradeable read lock of an RW lock: its keys and scripts are
// described in scripts_upgrade.go.

var (
	_ backend.UpgradeableLocker[*Lease] = (*Backend)(nil)
	_ backend.UpgradeableWaiter[*Lease] = (*Backend)(nil)
	_ backend.Upgrader                  = (*Lease)(nil)
)

// upgradeSuffixes are the suffixes of the keys the upgradeable reader's
// acquire script takes: the RW lock's first five (readers, writer, queue,
// deadlines, fence), rw:u (at upgradeKeyIndex), the holder records rw:h
// (at upgradeHoldersIndex), its channel last.
var upgradeSuffixes = []string{"rw:r", "rw:w", "rw:a", "rw:d", "rw:f", "rw:u", "rw:h", "rw:n"}

const (
	// upgradeKeyIndex is the index of rw:u among the keys of
	// upgradeSuffixes.
	upgradeKeyIndex = 5
	// upgradeHoldersIndex is the index of rw:h among the keys of
	// upgradeSuffixes (see holdersKey).
	upgradeHoldersIndex = 6
)

// upgradeLeaseKeys are the keys of an upgradeable reader's lease that its
// release, extension and downgrade scripts take: rw:u, the queue, the
// deadlines, the readers, the writer and the holder records.
func upgradeLeaseKeys(base string) []string {
	return []string{base + "rw:u", base + "rw:a", base + "rw:d", base + "rw:r", base + "rw:w", base + "rw:h"}
}

// upgradeAttemptKeys are the keys of upgradeScript: the readers, the
// writer, the queue, the deadlines and rw:u.
func upgradeAttemptKeys(base string) []string {
	return []string{base + "rw:r", base + "rw:w", base + "rw:a", base + "rw:d", base + "rw:u"}
}

func (b *Backend) upgradeable(name string) (*request, error) {
	return newRequestFor(b.c, kindUpgrade, name, acquireUpgradeable)
}

// TryULock implements backend.UpgradeableLocker: one attempt to take the
// RW lock name as its upgradeable reader. It fails while a writer or
// another upgradeable reader holds the lock, or while a writer or an
// upgradeable reader waits for it; plain readers do not stop it. The
// lease implements backend.Upgrader.
func (b *Backend) TryULock(ctx context.Context, name string) (*Lease, bool, error) {
	r, err := b.upgradeable(name)
	if err != nil {
		return nil, false, err
	}
	a, err := b.c.try(ctx, r, "")
	return a.lease, a.lease != nil, err
}

// ULock implements backend.UpgradeableWaiter. It queues with the lock's
// readers and writers and is served in arrival order among the writers
// and upgradeable readers (readers that come after it may go first while
// it waits for another upgradeable reader: they share the lock with it).
func (b *Backend) ULock(ctx context.Context, name string) (*Lease, error) {
	r, err := b.upgradeable(name)
	if err != nil {
		return nil, err
	}
	return b.c.wait(ctx, r)
}

// Upgrade implements backend.Upgrader: it makes the lease, an upgradeable
// reader (from TryULock or ULock), the writer of its lock once the plain
// readers have left. While it waits it is first in the lock's waiter
// queue, as a writer, so new readers and writers wait behind it; it is
// woken by the readers' releases. It ends with an error wrapping
// backend.ErrLockLost when the lease is lost meanwhile. When ctx ends
// first (or after any other error) the lease is still the upgradeable
// reader, and the queue holds nothing of the upgrade. Once it has
// returned nil, it returns nil at once (while the lease is held). While
// an upgrade of the lease is under way, another call of Upgrade or
// TryUpgrade on it fails (an error) rather than wait beside it. The
// fencing token stays the lease's: see the package documentation.
func (l *Lease) Upgrade(ctx context.Context) error {
	done, err := l.beginUpgrade()
	if done || err != nil {
		return err
	}
	ok := false
	defer func() { l.endUpgrade(ok) }()
	uctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// A loss (or a Release) ends the wait at once.
	stop := l.AfterLost(func() { cancel(backend.ErrLockLost) })
	defer stop()
	var unsure bool
	r := newRequest(kindWrite, l.name, l.base, nil) // waits and leaves the queue as a writer
	if _, err = l.c.waitWith(uctx, r, l.upgradeTry(upgradeAttemptKeys(l.base), &unsure)); err != nil {
		return l.upgradeFailed(ctx, err, unsure)
	}
	err = l.confirmUpgrade(ctx)
	ok = err == nil
	return err
}

// TryUpgrade implements backend.Upgrader: one attempt, which fails
// (false) while plain readers hold the lock; the lease is then still the
// upgradeable reader.
func (l *Lease) TryUpgrade(ctx context.Context) (bool, error) {
	done, err := l.beginUpgrade()
	if done || err != nil {
		return err == nil, err
	}
	ok := false
	defer func() { l.endUpgrade(ok) }()
	var unsure bool
	a, err := l.upgradeTry(upgradeAttemptKeys(l.base), &unsure)(ctx, nil, "", "")
	if err != nil {
		return false, l.upgradeFailed(ctx, err, unsure)
	}
	if a.lease == nil {
		return false, nil
	}
	if err := l.confirmUpgrade(ctx); err != nil {
		return false, err
	}
	ok = true
	return true, nil
}

// errUpgrading is the error of an upgrade begun while another upgrade
// of the same lease is under way.
var errUpgrading = errors.New("upgrade: another upgrade of this lock is under way")

// beginUpgrade starts an upgrade of l: done when l was upgraded before
// (nothing to do), or an error when l is not a held upgradeable reader
// or another upgrade of it is under way. Unless either, endUpgrade must
// follow.
func (l *Lease) beginUpgrade() (done bool, err error) {
	if l.kind != kindUpgrade {
		return false, backend.Permanent(fmt.Errorf("upgrade: %w: a %s, not an upgradeable read lock", errors.ErrUnsupported, l.kind))
	}
	if l.c.closed.Load() {
		return false, backend.Permanent(errClosed)
	}
	e := l.c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := l.stateErrLocked(); err != nil {
		return false, err
	}
	switch {
	case l.upgraded:
		return true, nil
	case l.upgrading:
		return false, errUpgrading
	}
	l.upgrading = true
	return false, nil
}

// endUpgrade ends an upgrade of l begun by beginUpgrade; ok says it
// succeeded.
func (l *Lease) endUpgrade(ok bool) {
	e := l.c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	l.upgrading = false
	l.upgraded = l.upgraded || ok
}

// stateErr returns backend.ErrLockLost or backend.ErrNotHeld (wrapped) if
// l was lost or released, else nil.
func (l *Lease) stateErr() error {
	e := l.c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	return l.stateErrLocked()
}

// stateErrLocked is stateErr with c.ext.mu held.
func (l *Lease) stateErrLocked() error {
	switch l.state {
	case lost:
		return fmt.Errorf("upgrade: %w", backend.ErrLockLost)
	case released:
		return fmt.Errorf("upgrade: %w", backend.ErrNotHeld)
	}
	return nil
}

// upgradeTry returns the attempts of an upgrade of l: the upgrade script
// with the waiter id the wait gives (the lease's own token stays its
// token). An attempt is not cut short when ctx ends (it is bounded by
// releaseTimeout): its answer says whether it upgraded the lease or
// queued it, and the wait's leaving the queue comes after it. unsure is
// set when the latest attempt's answer was not read (an error): it may
// have upgraded the lease.
func (l *Lease) upgradeTry(keys []string, unsure *bool) tryFunc {
	return func(ctx context.Context, _ *request, _, waiter string) (attempt, error) {
		c := l.c
		if c.closed.Load() {
			return attempt{}, backend.Permanent(errClosed)
		}
		if err := ctx.Err(); err != nil {
			*unsure = false
			return attempt{}, fmt.Errorf("%w: %w", backend.ErrNotAcquired, err)
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
		defer cancel()
		rep := c.evalOne(actx, upgradeScript, keys, []string{l.token, c.leaseMs, waiter, l.rargs[1]})
		*unsure = rep.err != nil
		switch {
		case rep.err != nil:
			if wrongType(rep.err) {
				return attempt{}, fmt.Errorf("node %s: a key of the lock has the wrong type (a value dlock did not write): %w", c.nodes[0].addr, rep.err)
			}
			return attempt{}, fmt.Errorf("node %s: %w", c.nodes[0].addr, rep.err)
		case rep.n == 1:
			return attempt{lease: l}, nil
		case rep.n == 0:
			e := c.ext
			e.mu.Lock()
			e.loseLocked(l, "the upgrade found its keys deleted or taken over")
			e.mu.Unlock()
			return attempt{}, backend.Permanent(fmt.Errorf("upgrade: %w (its keys had been deleted or taken over)", backend.ErrLockLost))
		}
		return attempt{hint: time.Duration(-1-rep.n) * time.Millisecond}, nil
	}
}

// confirmUpgrade settles an upgrade the server made: with WithReplicas the
// replicas must confirm it (else it is undone); the lease must not have
// been lost or released meanwhile.
func (l *Lease) confirmUpgrade(ctx context.Context) error {
	if l.c.cfg.replicas > 0 {
		if err := l.c.confirmOn(ctx, l.c.nodes[0], l); err != nil {
			l.downgrade(ctx)
			if cerr := ctx.Err(); cerr != nil {
				return fmt.Errorf("upgrade: %w: %w", backend.ErrNotAcquired, cerr)
			}
			return fmt.Errorf("upgrade: upgraded on the primary, but not confirmed by its replicas (undone): %w", err)
		}
	}
	return l.stateErr()
}

// upgradeFailed is the end of an upgrade that failed with err: it reports
// a loss (or a release) first; an upgrade whose last answer was not read
// (unsure) is undone, so that the lease is the upgradeable reader its
// caller believes it is.
func (l *Lease) upgradeFailed(ctx context.Context, err error, unsure bool) error {
	if serr := l.stateErr(); serr != nil {
		return serr
	}
	if errors.Is(err, backend.ErrLockLost) {
		return err
	}
	if unsure {
		l.downgrade(ctx)
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, backend.ErrNotAcquired) {
		// ctx ended during an attempt: as a wait does, say so.
		if errors.Is(err, cerr) {
			return fmt.Errorf("upgrade: %w: %w", backend.ErrNotAcquired, err)
		}
		return fmt.Errorf("upgrade: %w: %w (%w)", backend.ErrNotAcquired, cerr, err)
	}
	return err
}

// downgrade undoes an upgrade of l, if the server made it, detached from
// ctx and bounded by releaseTimeout; a failure is logged (the lease then
// holds the write lock until it is released or upgraded again, which
// finds it upgraded).
func (l *Lease) downgrade(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	rep := l.c.evalOne(dctx, downgradeScript, upgradeLeaseKeys(l.base), []string{l.token, l.rargs[1]})
	if rep.err != nil {
		l.c.cfg.logger.Warn("dlock/valkey: undoing an upgrade whose answer was lost failed; the lease may hold the write lock until released", "name", l.name, "err", rep.err)
	}
}
