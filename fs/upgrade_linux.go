//go:build linux && !dlock_portable

package fs

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
)

// The upgradeable read lock. Its holder holds the RW lock file's flock
// shared, as a reader does, and also an OFD write lock of one byte, the
// upgrade byte, which every writer takes too, right after its flock
// (lockFile.withUpgrade): so at most one upgradeable reader holds a name,
// and no writer holds it together with one — also not in the moment of an
// upgrade when the flock is neither shared nor exclusive (see convert).
// The byte is the first of the removal gate's range, so an idle-file sweep
// never removes the file of an upgradeable reader.
const upgradeByte = gateStart

// lockUpgradeByte write-locks the upgrade byte through fd, without
// waiting; it reports false when another holder has it (an upgradeable
// reader, or a writer or upgradeable reader letting go: the close that
// ends its release wakes the waiters).
func lockUpgradeByte(fd int) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: upgradeByte, Len: 1}
	err := fcntlRetry(fd, unix.F_OFD_SETLK, &lk)
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return false, nil
	}
	return err == nil, err
}

// TryULock implements backend.UpgradeableLocker: one attempt to take name
// as its upgradeable reader (a shared flock of its lock file and the
// upgrade byte). It fails while a writer or another upgradeable reader
// holds name, and while anyone waits for it (it does not jump the queue).
func (b *Backend) TryULock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.tryRW(ctx, whatUpgradeable, name, unix.LOCK_SH)
}

// ULock implements backend.UpgradeableWaiter: it waits until it takes name
// as its upgradeable reader or ctx is done. It waits in the queue as a
// writer does (after every waiter that came before it; readers that come
// after it wait behind it).
func (b *Backend) ULock(ctx context.Context, name string) (*Lease, error) {
	return b.waitRW(ctx, whatUpgradeable, name, unix.LOCK_SH, unix.F_WRLCK)
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
// have left and makes the lease the writer. While it waits it holds a
// writer's ticket in the queue, so new readers, writers and upgradeable
// readers wait behind it; readers that waited before it may still go in
// (it waits for them too). A ctx that ends first, or any error but a
// loss, leaves the lease holding its upgradeable read lock.
func (l *Lease) Upgrade(ctx context.Context) error {
	joined := false
	try := func() (bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.convertLocked()
	}
	join := func() (int64, bool, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.state != leaseHeld {
			return 0, false, nil // the next attempt says why
		}
		f := &l.f
		f.ticket, f.ticketType = monotonicNow(), unix.F_WRLCK
		if err := f.placeTicket(); err != nil {
			f.ticket = 0 // never errGated: the upgrade byte keeps the gate out
			return 0, false, err
		}
		joined = true
		return 0, false, nil // readers leave in any order: wake on every close
	}
	err := l.b.waitLoop(ctx, try, join, l.Lost(), l.file)
	l.mu.Lock()
	defer l.mu.Unlock()
	if joined {
		l.f.leave()
	}
	if l.state == leaseLost || errors.Is(err, ErrClosed) {
		return fmt.Errorf("upgrade of %s: %w", l.path, backend.ErrLockLost)
	}
	return err
}

// convertLocked makes one attempt to turn the lease's shared flock into an
// exclusive one; l.mu is held. Linux converts a flock by letting go of the
// shared lock first and, when the exclusive one is not free, leaves the
// file unlocked: the lease then takes its shared lock back. Nobody else
// can become the writer in that moment (writers need the upgrade byte,
// which the lease keeps), and nobody can remove the file (the upgrade byte
// keeps the removal gate out); a writer's or a sweep's attempt that takes
// the flock in that moment lets go at once.
func (l *Lease) convertLocked() (bool, error) {
	if done, err := l.upgradable(); done || err != nil {
		return done, err
	}
	fd := l.f.fd
	err := flockRetry(fd, unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		l.becomeWriterLocked()
		return true, nil
	}
	back := briefly(l.path, "the read lock could not be taken back after an upgrade attempt", func() (bool, error) {
		err := flockRetry(fd, unix.LOCK_SH|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, nil
		}
		return err == nil, err
	})
	if back != nil {
		l.markLostLocked()
		return false, fmt.Errorf("upgrade of %s: %w: %w", l.path, backend.ErrLockLost, back)
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false, nil
	}
	return false, classify(fmt.Errorf("upgrade of %s: flock: %w", l.path, err))
}

// becomeWriterLocked records the upgraded lease as the writer (see
// holders_linux.go): its record in slot 0, the writer's mark, and its
// reader's mark let go. The record is best effort: the lease holds the
// write lock whatever happens to it (a failure leaves it listed as a
// reader).
func (l *Lease) becomeWriterLocked() {
	l.upgraded = true
	if l.slot < 0 || l.rec == nil {
		return
	}
	if record(&l.f, 0, l.rec, false) != nil {
		return
	}
	_, _ = setMark(l.f.fd, l.slot, unix.F_UNLCK)
	l.slot = 0
}

var (
	_ backend.UpgradeableLocker[*Lease] = (*Backend)(nil)
	_ backend.UpgradeableWaiter[*Lease] = (*Backend)(nil)
	_ backend.Upgrader                  = (*Lease)(nil)
)
