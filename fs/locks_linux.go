//go:build linux && !dlock_portable

package fs

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
)

func wrapErr(what, name string, err error) error {
	return classify(err)
}

// TryLock makes one attempt to take the mutex name: an exclusive flock of
// its lock file. It never waits, and it fails while anyone waits for name
// in Lock (it does not jump the queue).
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, false, err
	}
	l := b.leaseFile(b.prefix, kindPrefix[kindMutex], encode(name))
	f := &l.f
	ok, err := f.tryFlock(unix.LOCK_EX, b.mode(), true)
	if err != nil || !ok {
		f.close()
		if err != nil {
			err = wrapErr(whatMutex, name, err)
		}
		return nil, false, err
	}
	if _, err := b.newLease(l, whatMutex, name, f, "", true, backend.OwnerFromContext(ctx)); err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// Lock waits until it takes the mutex name or ctx is done. Waiters of all
// processes are served in the order they began to wait (see the package
// documentation). It learns of a release at once through inotify; it does
// not poll.
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, err
	}
	l := b.leaseFile(b.prefix, kindPrefix[kindMutex], encode(name))
	f := &l.f
	err := b.waitLoop(ctx,
		func() (bool, error) { return f.waitAttempt(unix.LOCK_EX, b.mode()) },
		func() (int64, bool, error) { err := f.join(unix.F_WRLCK); return f.ticket, false, err },
		nil, f.path[len(b.prefix):])
	if err != nil {
		f.close()
		return nil, wrapErr(whatMutex, name, err)
	}
	return b.newLease(l, whatMutex, name, f, "", true, backend.OwnerFromContext(ctx))
}

// rwLease returns a new lease (see leaseFile) of the lock file of the RW
// lock name (which also keeps its fencing counter and its waiters' queue),
// for what.
func (b *Backend) rwLease(what, name string) *Lease {
	l := b.leaseFile(b.prefix, kindPrefix[kindRW], encode(name))
	l.f.withUpgrade = what != whatRead
	return l
}

// TryRLock makes one attempt to take name for reading: a shared flock of
// its lock file. It fails while a writer holds name and while anyone waits
// for it (it does not jump the queue; once a writer waits, new readers wait
// too).
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.tryRW(ctx, whatRead, name, unix.LOCK_SH)
}

// TryWLock makes one attempt to take name for writing: an exclusive flock
// of its lock file. It fails while anyone holds name or waits for it.
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.tryRW(ctx, whatWrite, name, unix.LOCK_EX)
}

func (b *Backend) tryRW(ctx context.Context, what, name string, how int) (*Lease, bool, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, false, err
	}
	l := b.rwLease(what, name)
	rw := &l.f
	ok, err := rw.tryFlock(how, b.mode(), true)
	if err != nil || !ok {
		rw.close()
		if err != nil {
			err = wrapErr(what, name, err)
		}
		return nil, false, err
	}
	if _, err := b.newLease(l, what, name, rw, "", true, backend.OwnerFromContext(ctx)); err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// RLock waits until it takes name for reading or ctx is done. It waits
// while a writer holds name or a writer that began to wait before it still
// waits; readers waiting together go in together.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	return b.waitRW(ctx, whatRead, name, unix.LOCK_SH, unix.F_RDLCK)
}

// WLock waits until it takes name for writing or ctx is done. Writers are
// preferred: while a writer waits, readers that come after it wait too.
// Writers, and readers that began to wait before a writer, are served in
// the order they began to wait.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	return b.waitRW(ctx, whatWrite, name, unix.LOCK_EX, unix.F_WRLCK)
}

func (b *Backend) waitRW(ctx context.Context, what, name string, how int, ticket int16) (*Lease, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, err
	}
	l := b.rwLease(what, name)
	rw := &l.f
	err := b.waitLoop(ctx,
		func() (bool, error) { return rw.waitAttempt(how, b.mode()) },
		func() (int64, bool, error) { err := rw.join(ticket); return rw.ticket, ticket == unix.F_RDLCK, err },
		nil, rw.path[len(b.prefix):])
	if err != nil {
		rw.close()
		return nil, wrapErr(what, name, err)
	}
	return b.newLease(l, what, name, rw, "", true, backend.OwnerFromContext(ctx))
}

// trySlots attempts slots 0..limit-1 of a semaphore in order, growing slots
// as needed; it returns the index of the slot taken, or -1. Slot 0 keeps
// the waiters' queue: nothing is attempted while the queue says to let
// others go first. With keep, the files of busy slots stay open for the
// next attempt.
func (b *Backend) trySlots(slots *[]lockFile, prefix string, limit int, keep bool) (int, error) {
	for i := 0; i < limit; i++ {
		if i == len(*slots) {
			*slots = append(*slots, newLockFile(&b.trust, b.prefix, slotName(prefix, i)))
		}
		s := &(*slots)[i]
		if keep {
			s.dropIfOrphan(false) // a waiter's slot file removed by its holder
		}
		ok, err := s.tryFlock(unix.LOCK_EX, b.mode(), i == 0)
		if err != nil {
			return -1, err
		}
		if ok {
			return i, nil
		}
		if !keep {
			s.close()
		}
		if i == 0 && s.behind {
			return -1, nil
		}
	}
	return -1, nil
}

// semLease turns slot won of slots into a lease and closes the other slots.
// A waiter leaves the queue (kept on slot 0) first; if others still wait
// and tickets may be left, it wakes the next (through inotify those of
// other Backends, directly its own Backend's): a close wakes only the
// oldest waiter of a Backend, and a slot may still be free.
func (b *Backend) semLease(ctx context.Context, name string, slots []lockFile, won, limit int) (*Lease, error) {
	if q := &slots[0]; q.ticket != 0 {
		q.leave()
		if limit > 1 {
			if busy, err := q.queueBusy(); busy || err != nil {
				q.wake()
				b.wakeNext(fileName(kindSemSlot, name))
			}
		}
	}
	for i := range slots {
		if i != won {
			slots[i].close()
		}
	}
	return b.newLease(nil, whatSem, name, &slots[won], b.prefix+fileName(kindSemCounter, name), won == 0, backend.OwnerFromContext(ctx))
}

// TryAcquire makes one attempt to take one of the limit tickets of the
// semaphore name: an exclusive flock of the first free slot file among
// slots 0..limit-1. It fails while anyone waits for a ticket in Acquire (it
// does not jump the queue).
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	if err := b.semBegin(ctx, name, limit); err != nil {
		return nil, false, err
	}
	var slots []lockFile
	won, err := b.trySlots(&slots, fileName(kindSemSlot, name), limit, false)
	if err != nil || won < 0 {
		for i := range slots {
			slots[i].close()
		}
		if err != nil {
			err = wrapErr(whatSem, name, err)
		}
		return nil, false, err
	}
	l, err := b.semLease(ctx, name, slots, won, limit)
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// Acquire waits until it takes a ticket of the semaphore name or ctx is
// done. Waiters of all processes are served in the order they began to
// wait. While it waits it keeps every slot file open (limit descriptors).
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	if err := b.semBegin(ctx, name, limit); err != nil {
		return nil, err
	}
	prefix := fileName(kindSemSlot, name)
	var slots []lockFile
	won := -1
	try := func() (bool, error) {
		var err error
		won, err = b.trySlots(&slots, prefix, limit, true)
		return won >= 0, err
	}
	join := func() (int64, bool, error) { err := slots[0].join(unix.F_WRLCK); return slots[0].ticket, false, err }
	if err := b.waitLoop(ctx, try, join, nil, prefix); err != nil {
		for i := range slots {
			slots[i].close()
		}
		return nil, wrapErr(whatSem, name, err)
	}
	return b.semLease(ctx, name, slots, won, limit)
}
