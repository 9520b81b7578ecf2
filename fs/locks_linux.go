//go:build linux

package fs

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
)

const (
	whatMutex = "mutex"
	whatRead  = "read lock"
	whatWrite = "write lock"
	whatSem   = "semaphore"
)

func wrapErr(what, name string, err error) error {
	return classify(err)
}

// transient are the errors of a local file system that may heal by
// themselves: out of descriptors (EMFILE, ENFILE), memory or kernel lock
// records (ENOMEM, ENOBUFS, ENOLCK), disk space or quota for a new lock
// file (ENOSPC, EDQUOT), an interrupted call.
var transient = []error{unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.ENOBUFS, unix.ENOLCK, unix.ENOSPC, unix.EDQUOT, unix.EINTR, unix.EAGAIN}

// classify marks err backend.Permanent unless it may heal by itself (see
// transient; a lock file that keeps being replaced) or is a wait's ctx
// ending: a local file system does not have outages, so a refused
// permission, a refused lock file (symbolic link, hard link, owner, not a
// regular file), a corrupt counter or a closed backend would fail every
// retry of a wait the same way.
func classify(err error) error {
	if err == nil || errors.Is(err, backend.ErrNotAcquired) || errors.Is(err, errReplaced) {
		return err
	}
	for _, t := range transient {
		if errors.Is(err, t) {
			return err
		}
	}
	return backend.Permanent(err)
}

func (b *Backend) mode() uint32 { return uint32(b.cfg.fileMode) }

// TryLock makes one attempt to take the mutex name: an exclusive flock of
// its lock file. It never waits.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, whatMutex, name); err != nil {
		return nil, false, err
	}
	f := newLockFile(b.prefix+kindPrefix[kindMutex]+encode(name), &b.trust)
	ok, err := f.tryFlock(unix.LOCK_EX, b.mode())
	if err != nil || !ok {
		f.close()
		if err != nil {
			err = wrapErr(whatMutex, name, err)
		}
		return nil, false, err
	}
	l, err := b.newLease(whatMutex, name, &f, "")
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// Lock waits until it takes the mutex name or ctx is done. It learns of a
// release at once through inotify; it does not poll.
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, whatMutex, name); err != nil {
		return nil, err
	}
	file := fileName(kindMutex, name)
	f := newLockFile(b.prefix+file, &b.trust)
	err := b.waitLoop(ctx, func() (bool, error) { return f.tryFlock(unix.LOCK_EX, b.mode()) }, file)
	if err != nil {
		f.close()
		return nil, wrapErr(whatMutex, name, err)
	}
	return b.newLease(whatMutex, name, &f, "")
}

// rwFiles returns the files of the RW lock name: its gate and the lock
// file itself (which keeps the fencing counter).
func (b *Backend) rwFiles(name string) (gate, rw lockFile) {
	e := encode(name)
	return newLockFile(b.prefix+kindPrefix[kindRWGate]+e, &b.trust),
		newLockFile(b.prefix+kindPrefix[kindRW]+e, &b.trust)
}

// tryRead is one attempt at a read lock: it fails while a writer holds or
// waits at the gate, and otherwise takes a shared flock of the lock file.
func (b *Backend) tryRead(gate, rw *lockFile) (bool, error) {
	free, err := gate.ofdFree(b.mode())
	if err != nil || !free {
		return false, err
	}
	return rw.tryFlock(unix.LOCK_SH, b.mode())
}

// TryRLock makes one attempt to take name for reading. It fails while a
// writer holds name or waits for it in WLock.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, whatRead, name); err != nil {
		return nil, false, err
	}
	gate, rw := b.rwFiles(name)
	defer gate.close()
	ok, err := b.tryRead(&gate, &rw)
	if err != nil || !ok {
		rw.close()
		if err != nil {
			err = wrapErr(whatRead, name, err)
		}
		return nil, false, err
	}
	l, err := b.newLease(whatRead, name, &rw, "")
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// RLock waits until it takes name for reading or ctx is done.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, whatRead, name); err != nil {
		return nil, err
	}
	gate, rw := b.rwFiles(name)
	defer gate.close()
	err := b.waitLoop(ctx, func() (bool, error) { return b.tryRead(&gate, &rw) },
		gate.path[len(b.prefix):], rw.path[len(b.prefix):])
	if err != nil {
		rw.close()
		return nil, wrapErr(whatRead, name, err)
	}
	return b.newLease(whatRead, name, &rw, "")
}

// TryWLock makes one attempt to take name for writing: an exclusive flock
// of its lock file. It fails while anyone holds name.
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, whatWrite, name); err != nil {
		return nil, false, err
	}
	_, rw := b.rwFiles(name)
	ok, err := rw.tryFlock(unix.LOCK_EX, b.mode())
	if err != nil || !ok {
		rw.close()
		if err != nil {
			err = wrapErr(whatWrite, name, err)
		}
		return nil, false, err
	}
	l, err := b.newLease(whatWrite, name, &rw, "")
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// WLock waits until it takes name for writing or ctx is done. While it
// waits it holds the gate of name (an exclusive OFD lock), so that new
// readers wait too; the gate is let go once the write lock is taken or the
// wait ends.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, whatWrite, name); err != nil {
		return nil, err
	}
	gate, rw := b.rwFiles(name)
	defer gate.close()
	haveGate := false
	try := func() (bool, error) {
		ok, err := rw.tryFlock(unix.LOCK_EX, b.mode())
		if ok || err != nil {
			return ok, err
		}
		if haveGate {
			// Still the gate readers see?
			same, err := gate.named()
			if err != nil {
				return false, err
			}
			if same {
				return false, nil
			}
			gate.close()
			haveGate = false
		}
		ok, err = gate.tryOFDWrite(b.mode())
		if !ok || err != nil {
			return false, err
		}
		haveGate = true
		return rw.tryFlock(unix.LOCK_EX, b.mode())
	}
	err := b.waitLoop(ctx, try, gate.path[len(b.prefix):], rw.path[len(b.prefix):])
	if err != nil {
		rw.close()
		return nil, wrapErr(whatWrite, name, err)
	}
	return b.newLease(whatWrite, name, &rw, "")
}

// trySlots attempts slots 0..limit-1 of a semaphore in order, growing slots
// as needed; it returns the index of the slot taken, or -1. With keep, the
// files of busy slots stay open for the next attempt.
func (b *Backend) trySlots(slots *[]lockFile, prefix string, limit int, keep bool) (int, error) {
	for i := 0; i < limit; i++ {
		if i == len(*slots) {
			*slots = append(*slots, newLockFile(b.prefix+slotName(prefix, i), &b.trust))
		}
		s := &(*slots)[i]
		ok, err := s.tryFlock(unix.LOCK_EX, b.mode())
		if err != nil {
			return -1, err
		}
		if ok {
			return i, nil
		}
		if !keep {
			s.close()
		}
	}
	return -1, nil
}

func (b *Backend) semBegin(ctx context.Context, name string, limit int) error {
	if err := b.begin(ctx, whatSem, name); err != nil {
		return err
	}
	if limit < 1 {
		return backend.Permanent(fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit))
	}
	return nil
}

// semLease turns slot won of slots into a lease and closes the other slots.
func (b *Backend) semLease(name string, slots []lockFile, won int) (*Lease, error) {
	for i := range slots {
		if i != won {
			slots[i].close()
		}
	}
	return b.newLease(whatSem, name, &slots[won], b.prefix+fileName(kindSemCounter, name))
}

// TryAcquire makes one attempt to take one of the limit tickets of the
// semaphore name: an exclusive flock of the first free slot file among
// slots 0..limit-1.
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
	l, err := b.semLease(name, slots, won)
	if err != nil {
		return nil, false, err
	}
	return l, true, nil
}

// Acquire waits until it takes a ticket of the semaphore name or ctx is
// done. While it waits it keeps every slot file open (limit descriptors).
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
	if err := b.waitLoop(ctx, try, prefix); err != nil {
		for i := range slots {
			slots[i].close()
		}
		return nil, wrapErr(whatSem, name, err)
	}
	return b.semLease(name, slots, won)
}

// quoteName renders a lock name for an error message: quoted, and cut to its
// first 64 bytes.
func quoteName(name string) string {
	const maxLen = 64
	if len(name) > maxLen {
		return strconv.Quote(name[:maxLen]) + "..."
	}
	return strconv.Quote(name)
}
