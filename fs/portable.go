//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
)

// The portable implementation: whole-file locks (flock on Unix, LockFileEx
// on Windows), waits by polling, loss found on a timer, idle lock files
// removed a tick after their release and at Close. See the package
// documentation.

// Backend keeps locks as files in one directory. It implements
// backend.Locker, backend.RWLocker and backend.Semaphore with their waits
// (backend.LockWaiter, backend.RWWaiter, backend.SemaphoreWaiter) and
// tells who holds a lock (backend.LockDescriber, RWDescriber,
// SemaphoreDescriber) and offers upgradeable read locks
// (backend.UpgradeableLocker, UpgradeableWaiter); its leases implement
// backend.Fencer and backend.Upgrader. It is safe for concurrent use. Call
// Close when done with it.
type Backend struct {
	dir    string
	prefix string // dir + separator
	cfg    config
	trust  trust
	fold   bool // file names for a case-insensitive file system (encodeFold)

	stopc chan struct{} // closed by Close
	wg    sync.WaitGroup

	mu         sync.Mutex
	closed     bool
	done       atomic.Bool // closed, read without mu (see describeBegin)
	leases     map[*Lease]struct{}
	monitoring bool      // the monitor goroutine runs
	idle       idleFiles // files let go of, to remove once idle (see noteIdle)
	ticks      uint64    // the monitor's ticks so far (tests)
}

// New returns a backend keeping its lock files in dir, which it creates
// (mode 0700 unless WithDirMode) if needed. On Unix it refuses a dir that is
// a symbolic link or not a directory, that is owned by another user,
// group-writable (unless WithSharedGroup) or world-writable, that lives on
// a network file system, or that another user could replace (see the
// package documentation). On Windows it refuses a dir that is a symbolic
// link or junction; see the package documentation for what is not checked
// there.
func New(dir string, opts ...Option) (*Backend, error) {
	abs, cfg, err := prepare(dir, opts)
	if err != nil {
		return nil, err
	}
	path, tr, err := prepareDir(abs, &cfg)
	if err != nil {
		return nil, err
	}
	if err := claimDir(path, true); err != nil {
		return nil, err
	}
	tr.mode = uint32(cfg.fileMode.Perm())
	b := &Backend{
		dir:    path,
		prefix: path + pathSep,
		cfg:    cfg,
		trust:  tr,
		fold:   foldNames,
		stopc:  make(chan struct{}),
		leases: make(map[*Lease]struct{}),
	}
	if len(path) > 0 && path[len(path)-1:] == pathSep {
		b.prefix = path
	}
	return b, nil
}

// path is the path of the file of kind k for name (for kindSemSlot, the
// prefix of its slot files).
func (b *Backend) path(k kind, name string) string {
	return b.prefix + fileNameFold(k, name, b.fold)
}

// The waiters' file of a lock (mw-, rg-, sw-) is how waiting works without a
// queue: a waiter holds it shared while it waits (a writer, for an RW lock),
// and a new attempt (a try, or a reader's attempt) first checks that nobody
// holds it — so it does not jump ahead of waiters, and new readers stay out
// while a writer waits. Waiters themselves poll the lock at jittered
// intervals of a few milliseconds; whichever polls first after a release
// takes the lock, so no waiter is preferred and none starves, but arrival
// order is not kept.

// enterCheck takes the waiters' file at path exclusively if nobody waits.
// It returns busy if someone waits. Otherwise the caller holds g (when the
// file exists, or create is set), which keeps others from joining the
// waiters or passing the check until the caller is done (see leaveCheck).
func (b *Backend) enterCheck(path string, create bool) (g pfile, busy bool, err error) {
	g = newPFile(path, &b.trust)
	err = briefly(path, "the waiters' file stayed locked", func() (bool, error) {
		ok, err := g.lock(true, create, b.mode())
		if errors.Is(err, errNoFile) {
			return true, nil // nobody waits
		}
		if err != nil || ok {
			return ok, err
		}
		// Held: shared by waiters, or exclusively by someone passing the
		// check for a moment.
		if shared, err := lockHandle(g.h, false); err != nil || shared {
			busy = shared
			return shared, err
		}
		return false, nil
	})
	if err != nil || busy {
		g.close()
	}
	return g, busy, err
}

// leaveCheck lets others pass: it closes the waiters' file and, if it
// held it, notes it for removal once idle (see noteIdle).
func (b *Backend) leaveCheck(g *pfile) {
	held := g.held
	g.close()
	if held {
		b.noteIdle(g.path, idleFile{})
	}
}

// othersWait reports whether anyone waits on the waiters' file at path.
func (b *Backend) othersWait(path string) (bool, error) {
	g, busy, err := b.enterCheck(path, false)
	if err != nil || busy {
		return busy, err
	}
	b.leaveCheck(&g)
	return false, nil
}

// join makes the caller a waiter: it holds the waiters' file at path
// shared until leave.
func (b *Backend) join(ctx context.Context, path string) (pfile, error) {
	g := newPFile(path, &b.trust)
	pause := 50 * time.Microsecond
	for {
		ok, err := g.lock(false, true, b.mode())
		if err != nil || ok {
			if err != nil {
				g.close()
			}
			return g, err
		}
		// Someone passes the check exclusively for a moment.
		select {
		case <-time.After(pause):
		case <-ctx.Done():
			g.close()
			return g, fmt.Errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
		case <-b.stopc:
			g.close()
			return g, ErrClosed
		}
		pause = min(2*pause, time.Millisecond)
	}
}

// leave ends a wait: it closes the waiters' file and notes it for
// removal once idle (the sweep removes it when no waiter holds it).
func (b *Backend) leave(g *pfile) {
	if !g.isOpen() {
		return
	}
	g.close()
	b.noteIdle(g.path, idleFile{})
}

// pollPause bounds the pauses between a waiter's attempts: from pollMin,
// doubling (jittered) up to pollMax, never beyond the wait fallback.
const (
	pollMin = time.Millisecond
	pollMax = 4 * time.Millisecond
)

// wait runs try until it succeeds, fails, or ctx ends: first once, then as
// a waiter (holding the waiters' file at waiters shared) every few
// milliseconds; poll is the attempt a waiter makes (it does not check the
// waiters' file).
func (b *Backend) wait(ctx context.Context, waiters string, try, poll func() (bool, error)) error {
	ok, err := try()
	if ok || err != nil {
		return err
	}
	var g pfile
	if waiters != "" {
		g, err = b.join(ctx, waiters)
		if err != nil {
			return err
		}
		defer b.leave(&g)
	}
	// A waiter pauses before its first poll too: one that joins just after
	// its own release must not take the lock back ahead of those waiting.
	pauses := pace.New(pollMin, min(pollMax, b.cfg.waitFallback))
	t := time.NewTimer(pauses.Next())
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
		case <-b.stopc:
			return ErrClosed
		}
		ok, err := poll()
		if ok || err != nil {
			return err
		}
		t.Reset(pauses.Next())
	}
}

// TryLock makes one attempt to take the mutex name: an exclusive lock of
// its lock file. It never waits, and it fails while anyone waits for name
// in Lock.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, false, err
	}
	f := newPFile(b.path(kindMutex, name), &b.trust)
	ok, err := b.tryMutex(&f, b.path(kindMutexWait, name), true)
	if err != nil || !ok {
		f.close()
		return nil, false, classify(err)
	}
	l, err := b.newLease(whatMutex, name, &f, nil, backend.OwnerFromContext(ctx))
	return l, err == nil, err
}

// tryMutex makes one attempt at the mutex file f (exclusive), after
// checking the waiters' file if check is set.
func (b *Backend) tryMutex(f *pfile, waiters string, check bool) (bool, error) {
	if check {
		if busy, err := b.othersWait(waiters); busy || err != nil {
			return false, err
		}
	}
	return f.lock(true, true, b.mode())
}

// Lock waits until it takes the mutex name or ctx is done. It polls (see
// the package documentation): no waiter is preferred, none starves, and
// arrival order is not kept.
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, err
	}
	f := newPFile(b.path(kindMutex, name), &b.trust)
	waiters := b.path(kindMutexWait, name)
	err := b.wait(ctx, waiters,
		func() (bool, error) { return b.tryMutex(&f, waiters, true) },
		func() (bool, error) { return b.tryMutex(&f, waiters, false) })
	if err != nil {
		f.close()
		return nil, classify(err)
	}
	return b.newLease(whatMutex, name, &f, nil, backend.OwnerFromContext(ctx))
}

// TryRLock makes one attempt to take name for reading: a shared lock of
// its lock file. It fails while a writer holds name or waits for it.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, false, err
	}
	l, err := b.tryRead(name, backend.OwnerFromContext(ctx))
	if err != nil || l == nil {
		return nil, false, classify(err)
	}
	return l, true, nil
}

// tryRead is one reader's attempt: nobody may wait to write (the writers'
// gate rg-NAME is free; with fencing, it is held exclusively to bump the
// counter while other readers may be bumping too), then a shared lock of
// the lock file.
func (b *Backend) tryRead(name, owner string) (*Lease, error) {
	g, busy, err := b.enterCheck(b.path(kindRWGate, name), b.cfg.fencing)
	if err != nil || busy {
		return nil, err
	}
	defer b.leaveCheck(&g)
	f := newPFile(b.path(kindRW, name), &b.trust)
	ok, err := f.lock(false, true, b.mode())
	if err != nil || !ok {
		f.close()
		return nil, err
	}
	return b.newLease(whatRead, name, &f, nil, owner)
}

// RLock waits until it takes name for reading or ctx is done. It waits
// while a writer holds name or waits for it.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, err
	}
	var l *Lease
	try := func() (bool, error) {
		var err error
		l, err = b.tryRead(name, backend.OwnerFromContext(ctx))
		return l != nil, err
	}
	if err := b.wait(ctx, "", try, try); err != nil {
		return nil, classify(err)
	}
	return l, nil
}

// TryWLock makes one attempt to take name for writing: an exclusive lock
// of its lock file. It fails while anyone holds name or a writer waits for
// it.
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, false, err
	}
	f := newPFile(b.path(kindRW, name), &b.trust)
	ok, err := b.tryWrite(&f, b.path(kindRWGate, name), true)
	if err != nil || !ok {
		f.close()
		return nil, false, classify(err)
	}
	l, err := b.newLease(whatWrite, name, &f, nil, backend.OwnerFromContext(ctx))
	return l, err == nil, err
}

// WLock waits until it takes name for writing or ctx is done. While it
// waits, new readers wait too.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	if err := b.begin(ctx, name); err != nil {
		return nil, err
	}
	f := newPFile(b.path(kindRW, name), &b.trust)
	gate := b.path(kindRWGate, name)
	err := b.wait(ctx, gate,
		func() (bool, error) { return b.tryWrite(&f, gate, true) },
		func() (bool, error) { return b.tryWrite(&f, gate, false) })
	if err != nil {
		f.close()
		return nil, classify(err)
	}
	return b.newLease(whatWrite, name, &f, nil, backend.OwnerFromContext(ctx))
}

// trySlots attempts slots 0..limit-1 of a semaphore in order (after
// checking the waiters' file if check is set) and returns the slot taken,
// or nil.
func (b *Backend) trySlots(name string, limit int, check bool) (*pfile, error) {
	if check {
		if busy, err := b.othersWait(b.path(kindSemWait, name)); busy || err != nil {
			return nil, err
		}
	}
	prefix := b.path(kindSemSlot, name)
	for i := range limit {
		f := newPFile(slotName(prefix, i), &b.trust)
		ok, err := f.lock(true, true, b.mode())
		if err != nil || ok {
			if err != nil {
				f.close()
				return nil, err
			}
			return &f, nil
		}
		f.close()
	}
	return nil, nil
}

// TryAcquire makes one attempt to take one of the limit tickets of the
// semaphore name: an exclusive lock of the first free slot file among slots
// 0..limit-1. It fails while anyone waits for a ticket in Acquire.
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	if err := b.semBegin(ctx, name, limit); err != nil {
		return nil, false, err
	}
	f, err := b.trySlots(name, limit, true)
	if err != nil || f == nil {
		return nil, false, classify(err)
	}
	l, err := b.newLease(whatSem, name, f, b.semCounter(name), backend.OwnerFromContext(ctx))
	return l, err == nil, err
}

func (b *Backend) semCounter(name string) *pfile {
	c := newPFile(b.path(kindSemCounter, name), &b.trust)
	return &c
}

// Acquire waits until it takes a ticket of the semaphore name or ctx is
// done. It polls, as Lock does.
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	if err := b.semBegin(ctx, name, limit); err != nil {
		return nil, err
	}
	var f *pfile
	attempt := func(check bool) func() (bool, error) {
		return func() (bool, error) {
			var err error
			f, err = b.trySlots(name, limit, check)
			return f != nil, err
		}
	}
	if err := b.wait(ctx, b.path(kindSemWait, name), attempt(true), attempt(false)); err != nil {
		return nil, classify(err)
	}
	return b.newLease(whatSem, name, f, b.semCounter(name), backend.OwnerFromContext(ctx))
}
