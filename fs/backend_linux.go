//go:build linux && !dlock_portable

package fs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
)

// Backend keeps locks as files in one directory. It implements
// backend.Locker, backend.RWLocker and backend.Semaphore with their native
// waits (backend.LockWaiter, backend.RWWaiter, backend.SemaphoreWaiter); its
// leases implement backend.Fencer. It is safe for concurrent use. Call Close
// when done with it.
type Backend struct {
	dir    string // absolute, clean
	prefix string // dir + "/"
	cfg    config
	trust  trust // whose lock files are accepted

	stopc chan struct{} // closed by Close
	wg    sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	leases  map[*Lease]struct{}
	waiters map[string]map[*waiter]struct{} // by file name or slot key
	nwait   int
	mon     *monitor // nil when no monitor runs

	// Lock files this backend let go of, to remove once idle (see
	// noteIdle), by base name.
	idle idleFiles[idleFile]
}

// idleFile says how to remove a lock file (see lockFile.remove).
type idleFile struct{ queue, counter bool }

var (
	_ backend.Locker[*Lease]          = (*Backend)(nil)
	_ backend.LockWaiter[*Lease]      = (*Backend)(nil)
	_ backend.RWLocker[*Lease]        = (*Backend)(nil)
	_ backend.RWWaiter[*Lease]        = (*Backend)(nil)
	_ backend.Semaphore[*Lease]       = (*Backend)(nil)
	_ backend.SemaphoreWaiter[*Lease] = (*Backend)(nil)
	_ backend.Fencer                  = (*Lease)(nil)
	_ backend.LossNotifier            = (*Lease)(nil)
)

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
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if cfg.sharedGroup && !cfg.fileModeSet {
		cfg.fileMode = 0o660
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("fs: empty directory name")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fs: directory %q: %w", dir, err)
	}
	path, fd, err := openDir(abs, cfg.dirMode)
	if err != nil {
		return nil, err
	}
	tr, err := checkDir(fd, path, cfg.sharedGroup)
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

// checkDir verifies that dir, open as fd, is a safe lock directory, and
// returns whose lock files it may hold (see WithSharedGroup).
func checkDir(fd int, dir string, shared bool) (trust, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return trust{}, fmt.Errorf("fs: stat lock directory %q: %w", dir, err)
	}
	euid := uint32(os.Geteuid())
	tr := trust{euid: euid}
	if st.Mode&0o002 != 0 {
		return trust{}, fmt.Errorf("fs: lock directory %q is world-writable (mode %#o): refused", dir, st.Mode&0o7777)
	}
	if shared {
		member, err := inGroup(st.Gid)
		if err != nil {
			return trust{}, fmt.Errorf("fs: lock directory %q: %w", dir, err)
		}
		if st.Uid != euid && !member {
			return trust{}, fmt.Errorf("fs: lock directory %q is owned by uid %d and group %d; this process (uid %d) is in neither: refused", dir, st.Uid, st.Gid, euid)
		}
		tr.shared, tr.gid = true, st.Gid
	} else {
		if st.Uid != euid {
			return trust{}, fmt.Errorf("fs: lock directory %q is owned by uid %d, not by this process's uid %d: refused (see WithSharedGroup)", dir, st.Uid, euid)
		}
		if st.Mode&0o020 != 0 {
			return trust{}, fmt.Errorf("fs: lock directory %q is group-writable (mode %#o): any member of group %d could remove or replace its lock files: refused unless WithSharedGroup", dir, st.Mode&0o7777, st.Gid)
		}
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return trust{}, fmt.Errorf("fs: statfs lock directory %q: %w", dir, err)
	}
	switch uint32(sfs.Type) {
	case unix.NFS_SUPER_MAGIC, unix.SMB_SUPER_MAGIC, unix.SMB2_SUPER_MAGIC, unix.CIFS_SUPER_MAGIC:
		return trust{}, fmt.Errorf("fs: lock directory %q is on a network file system (type %#x): flock there is not per open file description: refused", dir, sfs.Type)
	}
	return tr, nil
}

// inGroup reports whether gid is this process's effective or a
// supplementary group.
func inGroup(gid uint32) (bool, error) {
	if uint32(os.Getegid()) == gid {
		return true, nil
	}
	groups, err := os.Getgroups()
	if err != nil {
		return false, fmt.Errorf("getgroups: %w", err)
	}
	for _, g := range groups {
		if uint32(g) == gid {
			return true, nil
		}
	}
	return false, nil
}

// Dir returns the absolute path of the lock directory, with every symbolic
// link resolved: the path New checked, which the backend uses.
func (b *Backend) Dir() string { return b.dir }

// Close stops the backend's background work and frees every lease still
// held: each one's lock is dropped and its Lost channel closed (a callback
// running under it sees its ctx cancelled with cause backend.ErrLockLost; its
// Release returns an error wrapping backend.ErrLockLost). Waits in progress
// return ErrClosed, and so does every later call. Close then removes the
// lock files the backend let go of and had not removed yet, those that are
// idle (see the package documentation, Lock-file lifecycle). Close is
// idempotent.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.stopc)
	var f *os.File
	if b.mon != nil {
		f = b.mon.f
		b.mon = nil
	}
	held := make([]*Lease, 0, len(b.leases))
	for l := range b.leases {
		held = append(held, l)
	}
	clear(b.leases)
	b.mu.Unlock()
	if f != nil {
		f.Close() // wakes the monitor's pending Read
	}
	b.wg.Wait()
	for _, l := range held {
		l.drop()
		if !b.idle.note(l.file, idleFile{l.queue, l.counter}) {
			removeIdle(l.path, &b.trust, l.queue, l.counter)
		}
		if l.what == whatSem {
			if c := fileName(kindSemCounter, l.name); !b.idle.note(c, idleFile{false, true}) {
				removeIdle(b.prefix+c, &b.trust, false, true)
			}
		}
	}
	b.sweepIdle()
	return nil
}

// noteIdle notes that this backend let go of the lock file file (a base
// name): the monitor removes it after its next tick, if nobody holds it or
// waits for it then (see removeIdle), and so does Close. Removing it now
// would make the next acquisition of the name create the file anew: on
// ext4 a create and an unlink cost several times a whole acquisition, so
// a name locked again within a tick keeps its file.
func (b *Backend) noteIdle(file string, queue, counter bool) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	if b.idle.note(file, idleFile{queue, counter}) {
		b.ensureMonitorLocked(false)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	removeIdle(b.prefix+file, &b.trust, queue, counter)
}

// sweepIdle removes every noted lock file that is idle now.
func (b *Backend) sweepIdle() {
	b.mu.Lock()
	files := b.idle.takeAll()
	b.mu.Unlock()
	for _, m := range files {
		for file, k := range m {
			removeIdle(b.prefix+file, &b.trust, k.queue, k.counter)
		}
	}
}

// rotateIdleLocked runs at each monitor tick: it starts a sweep of the
// files noted before the previous tick, and ages those noted since. b.mu
// is held.
func (b *Backend) rotateIdleLocked() {
	if old := b.idle.rotate(); old != nil {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for file, k := range old {
				removeIdle(b.prefix+file, &b.trust, k.queue, k.counter)
			}
			b.mu.Lock()
			b.idle.swept()
			b.mu.Unlock()
		}()
	}
}

// begin checks the arguments common to every acquisition.
func (b *Backend) begin(ctx context.Context, what, name string) error {
	if name == "" {
		return backend.Permanent(fmt.Errorf("%w: empty name", backend.ErrInvalidName))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", backend.ErrNotAcquired, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return backend.Permanent(ErrClosed)
	}
	return nil
}

// register records a new lease so that the monitor checks it. It fails (and
// the caller must free the lease's file) once the backend is closed.
func (b *Backend) register(l *Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.leases[l] = struct{}{}
	b.ensureMonitorLocked(false)
	return nil
}

// unregister forgets a lease.
func (b *Backend) unregister(l *Lease) {
	b.mu.Lock()
	delete(b.leases, l)
	b.mu.Unlock()
}

// waiter is one wait in progress. c receives a value when a file it waits for
// is closed by anyone (a holder's release, a holder process's death).
type waiter struct {
	keys []string
	c    chan struct{}
	// ticket is the waiter's place in the queue of a mutex (0 for other
	// kinds, and before it joins), under b.mu: of a mutex's waiters with a
	// ticket, a close wakes only the oldest, the only one that can be next.
	ticket int64
}

func (w *waiter) signal() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// addWaiter arms a waiter for the files keys (file names, or slot keys for
// the slots of a semaphore). When it returns, every later close of one of
// those files signals the waiter: arm it before the attempt whose failure
// makes you wait, and no release can slip between the two.
func (b *Backend) addWaiter(keys ...string) (*waiter, error) {
	w := &waiter{keys: keys, c: make(chan struct{}, 1)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	for _, k := range keys {
		m := b.waiters[k]
		if m == nil {
			m = make(map[*waiter]struct{})
			b.waiters[k] = m
		}
		m[w] = struct{}{}
	}
	b.nwait++
	b.ensureMonitorLocked(true)
	return w, nil
}

func (b *Backend) removeWaiter(w *waiter) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range w.keys {
		if m := b.waiters[k]; m != nil {
			delete(m, w)
			if len(m) == 0 {
				delete(b.waiters, k)
			}
		}
	}
	b.nwait--
}

// waitLoop runs try until it succeeds, fails, or ctx ends, sleeping between
// attempts until a file in keys is closed. The first attempt is made before
// any waiter is armed (the uncontended path costs nothing extra); if it
// fails, the waiter is armed and then joins the waiters' queue (join), so
// that no release between the two is missed and every later attempt keeps
// its place.
func (b *Backend) waitLoop(ctx context.Context, try func() (bool, error), join func() (int64, error), keys ...string) error {
	ok, err := try()
	if ok || err != nil {
		return err
	}
	w, err := b.addWaiter(keys...)
	if err != nil {
		return err
	}
	defer b.removeWaiter(w)
	ticket, err := join()
	if err != nil {
		return err
	}
	if ticket != 0 {
		b.mu.Lock()
		w.ticket = ticket
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
		}
	}
}
