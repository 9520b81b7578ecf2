//go:build linux && !dlock_portable

package fs

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
)

// Backend keeps locks as files in one directory. It implements
// backend.Locker, backend.RWLocker and backend.Semaphore with their native
// waits (backend.LockWaiter, backend.RWWaiter, backend.SemaphoreWaiter),
// the upgradeable read lock (backend.UpgradeableLocker,
// UpgradeableWaiter), and tells who holds a lock (backend.LockDescriber,
// RWDescriber, SemaphoreDescriber); its leases implement backend.Fencer
// and backend.Upgrader. It is safe for concurrent use. Call Close when
// done with it.
type Backend struct {
	dir    string // absolute, clean
	prefix string // dir + "/"
	cfg    config
	trust  trust // whose lock files are accepted

	stopc chan struct{} // closed by Close
	wg    sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	done    atomic.Bool // closed, read without mu (see describeBegin)
	leases  map[*Lease]struct{}
	waiters map[string]map[*waiter]struct{} // by file name or slot key
	nwait   int
	mon     *monitor // nil when no monitor runs

	// Lock files this backend let go of, to remove once idle (see
	// afterRelease), by base name.
	idle idleFiles
}

// idleFile says how to remove a lock file (see lockFile.remove).
type idleFile struct{ queue, counter bool }

// New returns a backend keeping its lock files in dir, which it creates
// (mode 0700 unless WithDirMode; missing parents likewise, never group- or
// world-writable) if needed. It refuses a dir that is a symbolic link or not
// a directory, that is owned by another user, group-writable (unless
// WithSharedGroup) or world-writable (others could plant or replace lock
// files), or that lives on a network file system (NFS,
// SMB/CIFS), where flock locks are emulated with per-process locks and
// inotify sees no remote change. It also refuses a dir that another user
// could replace: every directory on its path, up to "/", must be owned by
// root or by this process's effective uid and must not be group- or
// world-writable unless it has the sticky bit (as /tmp has) or lies below
// a directory of this uid that nobody else may search. A symbolic
// link on the path (not dir itself) is followed only if it is owned by root
// or by this uid; the backend then uses the resolved path (see Dir).
func New(dir string, opts ...Option) (*Backend, error) {
	abs, cfg, err := prepare(dir, opts)
	if err != nil {
		return nil, err
	}
	path, fd, err := openDir(abs, cfg.dirMode)
	if err != nil {
		return nil, err
	}
	tr, err := checkDirFD(fd, path, cfg.sharedGroup)
	unix.Close(fd)
	if err != nil {
		return nil, err
	}
	if err := claimDir(path, false); err != nil {
		return nil, err
	}
	tr.mode = uint32(cfg.fileMode.Perm())
	abs = path
	b := &Backend{
		dir:     abs,
		prefix:  abs + "/",
		cfg:     cfg,
		trust:   tr,
		stopc:   make(chan struct{}),
		leases:  make(map[*Lease]struct{}),
		waiters: make(map[string]map[*waiter]struct{}),
	}
	if abs == "/" {
		b.prefix = "/"
	}
	return b, nil
}

// checkDirFD verifies that dir, open as fd, is a safe lock directory (see
// checkDir), not on a network file system, and returns whose lock files it
// may hold.
func checkDirFD(fd int, dir string, shared bool) (trust, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return trust{}, fmt.Errorf("fs: stat lock directory %q: %w", dir, err)
	}
	tr, err := checkDir(dir, &st, shared)
	if err != nil {
		return trust{}, err
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return trust{}, fmt.Errorf("fs: statfs lock directory %q: %w", dir, err)
	}
	if net := networkType(sfs.Type); net != "" {
		return trust{}, fmt.Errorf("fs: lock directory %q is on a network file system (%s): flock there is not per open file description: refused", dir, net)
	}
	return tr, nil
}

// stopMonitorLocked is Close's, under b.mu: it forgets the monitor and
// returns the close of its inotify instance, which wakes its pending Read
// (for the caller to run without b.mu).
func (b *Backend) stopMonitorLocked() func() {
	if b.mon == nil || b.mon.f == nil {
		b.mon = nil
		return nil
	}
	f := b.mon.f
	b.mon = nil
	return func() { f.Close() }
}

// noteFreed is Close's end of a lease it freed: its files are noted for
// the sweep that follows (removed at once past maxIdle).
func (b *Backend) noteFreed(l *Lease) {
	c := ""
	if l.what == whatSem {
		c = fileName(kindSemCounter, l.name)
	}
	b.mu.Lock()
	noted := b.idle.note(l.file, idleFile{l.queue, l.counter})
	cnoted := c == "" || b.idle.note(c, idleFile{false, true})
	b.mu.Unlock()
	if !noted {
		removeIdle(l.path, &b.trust, l.queue, l.counter)
	}
	if !cnoted {
		removeIdle(b.prefix+c, &b.trust, false, true)
	}
}

// removeNoted removes the noted lock file file (a base name) if it is idle
// (see removeIdle).
func (b *Backend) removeNoted(file string, k idleFile) {
	removeIdle(b.prefix+file, &b.trust, k.queue, k.counter)
}

// waiter is one wait in progress. c receives a value when a file it waits for
// is closed by anyone (a holder's release, a holder process's death).
type waiter struct {
	key string
	c   chan struct{}
	// ticket is the waiter's place in the queue of a mutex or an RW lock
	// (0 for other waits, and before it joins), under b.mu, and reader
	// says it is a reader's: a close wakes only the waiters with a ticket
	// that can be next (see appendNext).
	ticket int64
	reader bool
}

func (w *waiter) signal() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// addWaiter arms a waiter for the file key (a file name, or the slot key
// of the slots of a semaphore). When it returns, every later close of that
// file signals the waiter: arm it before the attempt whose failure makes
// you wait, and no release can slip between the two.
func (b *Backend) addWaiter(key string) (*waiter, error) {
	w := &waiter{key: key, c: make(chan struct{}, 1)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	m := b.waiters[key]
	if m == nil {
		m = make(map[*waiter]struct{})
		b.waiters[key] = m
	}
	m[w] = struct{}{}
	b.nwait++
	b.ensureMonitorLocked(true)
	return w, nil
}

// wakeNext wakes the waiters of the file key (see addWaiter) that may take
// the lock now (see appendNext).
func (b *Backend) wakeNext(key string) {
	var buf [4]*waiter
	b.mu.Lock()
	wake := appendNext(buf[:0], b.waiters[key])
	b.mu.Unlock()
	for _, w := range wake {
		w.signal()
	}
}

func (b *Backend) removeWaiter(w *waiter) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if m := b.waiters[w.key]; m != nil {
		delete(m, w)
		if len(m) == 0 {
			delete(b.waiters, w.key)
		}
	}
	b.nwait--
}

// waitLoop runs try until it succeeds, fails, or ctx ends, sleeping between
// attempts until the file key (see addWaiter) is closed. The first attempt is made before
// any waiter is armed (the uncontended path costs nothing extra); if it
// fails, the waiter is armed and then joins the waiters' queue (join), so
// that no release between the two is missed and every later attempt keeps
// its place.
//
// lost, if not nil, ends the wait with backend.ErrLockLost when it is
// closed (an upgrade's lease lost meanwhile).
func (b *Backend) waitLoop(ctx context.Context, try func() (bool, error), join func() (ticket int64, reader bool, err error), lost <-chan struct{}, key string) error {
	ok, err := try()
	if ok || err != nil {
		return err
	}
	w, err := b.addWaiter(key)
	if err != nil {
		return err
	}
	defer b.removeWaiter(w)
	ticket, reader, err := join()
	if err != nil {
		return err
	}
	if ticket != 0 {
		b.mu.Lock()
		w.ticket, w.reader = ticket, reader
		b.mu.Unlock()
	}
	const shortest = 2 * time.Millisecond
	longest := b.cfg.waitFallback
	// Until a close is announced, wait the whole fallback; after one, the
	// pauses start again from shortest (see below) and grow back, jittered
	// (never beyond the fallback).
	pauses := pace.New(min(shortest, longest), longest)
	woken := false
	timeout := longest
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		ok, err := try()
		if ok || err != nil {
			return err
		}
		t.Reset(timeout)
		select {
		case <-w.c:
			// Someone closed a lock file we wait for. If our attempt still
			// fails, retry soon anyway: a dying process's close is announced
			// a moment before the kernel drops its locks.
			pauses.Reset()
			woken = true
			timeout = min(pauses.Next(), longest)
		case <-t.C:
			if woken {
				timeout = min(pauses.Next(), longest)
			}
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
		case <-b.stopc:
			return ErrClosed
		case <-lost:
			return backend.ErrLockLost
		}
	}
}
