//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"github.com/dlock-go/dlock/backend"
)

// The upgradeable read lock of the portable implementation. Its holder
// holds r-NAME shared, as a reader does, and u-NAME exclusively for as
// long as it holds the lease, which every writer (and the idle sweep of
// r-NAME) also tries, without waiting, once it holds r-NAME exclusively: a
// writer that finds u-NAME held lets r-NAME go and counts as not
// acquired. So at most one upgradeable reader holds a name, and no writer
// holds it together with one — also not in the moment of an upgrade
// attempt when r-NAME is neither shared nor exclusive (flock converts by
// letting go of the shared lock first; LockFileEx cannot convert at all).

// TryULock implements backend.UpgradeableLocker: one attempt to take name
// as its upgradeable reader (u-NAME exclusively, then r-NAME shared). It
// fails while a writer or another upgradeable reader holds name, and while
// a writer or an upgradeable reader waits for it.
func (b *Backend) TryULock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, false, err
	}
	l, err := b.tryUpgradeable(name, backend.OwnerFromContext(ctx), true)
	if err != nil || l == nil {
		return nil, false, classify(err)
	}
	return l, true, nil
}

// ULock implements backend.UpgradeableWaiter: it waits until it takes name
// as its upgradeable reader or ctx is done. It waits as a writer does
// (holding the writers' gate shared, so new readers wait behind it), and
// polls.
func (b *Backend) ULock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, err
	}
	var l *Lease
	owner := backend.OwnerFromContext(ctx)
	attempt := func(check bool) func() (bool, error) {
		return func() (bool, error) {
			var err error
			l, err = b.tryUpgradeable(name, owner, check)
			return l != nil, err
		}
	}
	if err := b.wait(ctx, b.path(kindRWGate, name), attempt(true), attempt(false)); err != nil {
		return nil, classify(err)
	}
	return l, nil
}

// tryUpgradeable is one attempt of an upgradeable reader: with check, the
// writers' gate must be free (and is held exclusively meanwhile, which
// keeps readers from drawing a fencing token at the same time); a waiter
// (check false) holds the gate shared itself, which keeps readers out of
// it as well. Then u-NAME exclusively, and r-NAME shared.
func (b *Backend) tryUpgradeable(name, owner string, check bool) (*Lease, error) {
	if check {
		g, busy, err := b.enterCheck(b.path(kindRWGate, name), b.cfg.fencing)
		if err != nil || busy {
			return nil, err
		}
		defer b.leaveCheck(&g)
	}
	u := newPFile(b.path(kindUpgrade, name), &b.trust)
	ok, err := u.lock(true, true, b.mode())
	if err != nil || !ok {
		u.close()
		return nil, err
	}
	f := newPFile(b.path(kindRW, name), &b.trust)
	ok, err = f.lock(false, true, b.mode())
	if err != nil || !ok {
		f.close()
		u.close()
		b.noteIdle(u.path, idleFile{})
		return nil, err
	}
	f.side = &u // closed with f, before it
	return b.newLease(whatUpgradeable, name, &f, nil, owner)
}

// tryWrite is one attempt of a writer at the RW lock file f: tryMutex,
// and then no upgradeable reader may hold u-NAME (see noUpgrader), or the
// writer lets f go (keeping it open) and counts as not acquired.
func (b *Backend) tryWrite(f *pfile, gate string, check bool) (bool, error) {
	ok, err := b.tryMutex(f, gate, check)
	if !ok || err != nil {
		return ok, err
	}
	if none, err := b.noUpgrader(f.path); !none || err != nil {
		f.unlock()
		return false, err
	}
	return true, nil
}

// noUpgrader reports whether u-NAME is free, given rw, the path of
// r-NAME: missing (one failed open, the usual case of a name nobody takes
// as an upgradeable reader), or locked exclusively and let go at once. The
// caller holds r-NAME exclusively, so no upgradeable reader can come in
// until it lets go. The path of u-NAME is rw with the kind's letter
// replaced ("r-" and "u-" have one length, and the encoded names are the
// same), made on the stack: a writer pays no allocation for it.
func (b *Backend) noUpgrader(rw string) (bool, error) {
	var buf [512]byte
	p := append(buf[:0], rw...)
	p[len(b.prefix)] = kindPrefix[kindUpgrade][0]
	h, err := openIfExists(unsafe.String(&p[0], len(p)))
	if err != nil {
		if busyOpen(err) {
			return false, nil // being removed (Windows): try again
		}
		return false, err
	}
	if h == noHandle {
		return true, nil
	}
	u := newPFile(string(p), &b.trust)
	u.h = h
	ok, err := u.lock(true, false, 0)
	if unlockOnClose {
		u.held = false // the close drops it: one system call less
	}
	u.close()
	if errors.Is(err, errNoFile) {
		return true, nil // removed and gone meanwhile
	}
	return ok, err
}

// TryUpgrade implements backend.Upgrader: one attempt to turn the lease,
// an upgradeable read lock, into the write lock; ok == false while other
// readers hold the name (the lease still holds its read lock).
func (l *Lease) TryUpgrade(ctx context.Context) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.convertLocked()
}

// Upgrade implements backend.Upgrader: it waits until the other readers
// have left and makes the lease the writer. While it waits it holds the
// writers' gate shared, as a waiting writer does, so new readers, writers
// and upgradeable readers wait; it polls as waiters do. A ctx that ends
// first, or any error but a loss, leaves the lease holding its
// upgradeable read lock.
func (l *Lease) Upgrade(ctx context.Context) error {
	b := l.b
	try := func() (bool, error) { return l.TryUpgrade(ctx) }
	err := b.wait(ctx, b.path(kindRWGate, l.name), try, try)
	if errors.Is(err, ErrClosed) && !errors.Is(err, backend.ErrLockLost) {
		return fmt.Errorf("upgrade of %s: %w: %w", l.path, backend.ErrLockLost, err)
	}
	return err
}

// convertLocked makes one attempt to turn the lease's shared lock of
// r-NAME into an exclusive one; l.mu is held. A failed attempt leaves the
// file unlocked (see convertHandle): the lease takes its shared lock back
// at once. Nobody else can become the writer in that moment (writers need
// u-NAME, which the lease keeps), and the idle sweep cannot remove the
// file (it needs u-NAME too); a writer's or a sweep's attempt that takes
// r-NAME in that moment lets go at once. A plain reader may get in, which
// the next attempt waits for as well.
func (l *Lease) convertLocked() (bool, error) {
	if done, err := l.upgradable(); done || err != nil {
		return done, err
	}
	ok, err := convertHandle(l.f.h)
	if ok && err == nil {
		l.becomeWriterLocked()
		return true, nil
	}
	back := briefly(l.path, "the read lock could not be taken back after an upgrade attempt", func() (bool, error) {
		return lockHandle(l.f.h, false)
	})
	if back != nil {
		l.markLostLocked()
		l.dropSidesLocked()
		return false, fmt.Errorf("upgrade of %s: %w: %w", l.path, backend.ErrLockLost, back)
	}
	if err != nil {
		return false, classify(fmt.Errorf("upgrade of %s: %w", l.path, err))
	}
	return false, nil
}

// becomeWriterLocked records the upgraded lease as the writer (see
// portable_holders.go): its record in slot 0 of r-NAME, which DescribeRW
// reads while r-NAME is held exclusively, and its reader's record file let
// go. The record is best effort: the lease holds the write lock whatever
// happens to it (a failure leaves it listed as a reader). l.mu is held.
func (l *Lease) becomeWriterLocked() {
	l.upgraded = true
	u := l.f.side
	if u == nil || u.side == nil || l.rec == nil {
		return
	}
	if writeRecord(l.f.h, l.path, 0, l.rec) != nil {
		return
	}
	rec := u.side
	u.side = nil
	rec.close()
	l.b.noteIdle(rec.path, idleFile{})
}

var (
	_ backend.UpgradeableLocker[*Lease] = (*Backend)(nil)
	_ backend.UpgradeableWaiter[*Lease] = (*Backend)(nil)
	_ backend.Upgrader                  = (*Lease)(nil)
)
