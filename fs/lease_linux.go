//go:build linux && !dlock_portable

package fs

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/dlock-go/dlock/internal/loss"

	"golang.org/x/sys/unix"
)

// Lease is one lock held by a Backend: an open lock file and the flock on it.
type Lease struct {
	b        *Backend
	what     string // "mutex", "read lock", "write lock", "semaphore"
	name     string
	path     string // the lock file
	file     string // its base name
	dev, ino uint64
	token    uint64
	slot     int           // the holder record's slot: 0 exclusive, > 0 a reader's, -1 none
	rec      []byte        // an upgradeable reader's record, for its upgrade
	upgraded bool          // an upgradeable reader that became the writer (under mu)
	counter  bool          // the lock file keeps the fencing counter (not a semaphore)
	queue    bool          // the lock file keeps the waiters' queue (not a semaphore's slot 1, 2, ...)
	lost     chan struct{} // made by the first Lost (see lostLocked)

	cbuf counterBuf // for reading the fencing counter without an allocation

	// pathBuf keeps the lock file's path and a NUL (see leaseFile), when
	// they fit.
	pathBuf [160]byte

	mu    sync.Mutex
	f     lockFile // closed (fd -1) once released or dropped
	state uint8
	loss  loss.Notifier // AfterLost's functions
}

// leaseFile returns a new lease, not yet held, whose lock file l.f (not
// open) has the path that is the concatenation of parts, kept in the
// lease's own buffer when it fits: an acquisition then allocates the
// lease and nothing else.
func (b *Backend) leaseFile(parts ...string) *Lease {
	l := &Lease{b: b}
	path, z := zpathIn(l.pathBuf[:0], parts...)
	l.f = lockFile{path: path, zpath: z, tr: &b.trust, fd: -1}
	return l
}

// newLease wraps a locked file into a registered lease; a waiter leaves the
// queue (see leave). l is the lease made for it (see leaseFile), with f
// its l.f, or nil (a semaphore's slot: a new lease takes f's descriptor
// over). counter is the path of the fencing counter file, or "" to keep
// the counter in the lock file itself (a mutex, a reader-writer lock);
// queue says whether the lock file keeps the waiters' queue. The holder's
// record (see holders.go), describing it as owner, goes into the lock
// file, with the counter's write where there is one. On error the file is
// closed (its lock dropped).
func (b *Backend) newLease(l *Lease, what, name string, f *lockFile, counter string, queue bool, owner string) (*Lease, error) {
	f.leave()
	if l == nil {
		l = &Lease{b: b}
	}
	l.what, l.name = what, name
	l.path, l.file = f.path, f.path[len(b.prefix):]
	l.dev, l.ino = f.dev, f.ino
	l.counter, l.queue = counter == "", queue
	var rb [recordBuf]byte
	rec := appendRecord(rb[:0], owner, time.Now())
	shared := what == whatRead || what == whatUpgradeable
	if what == whatUpgradeable {
		l.rec = slices.Clone(rec)
	}
	var err error
	if shared {
		l.slot, err = claimSlot(f.fd, f.path)
	}
	written := false
	if err == nil && b.cfg.fencing {
		if counter == "" {
			written = !shared
			l.token, err = bumpOwnCounter(f, shared, b.cfg.sync, &l.cbuf, rec)
		} else {
			l.token, err = b.bumpCounterFile(counter, &l.cbuf)
		}
	}
	if err == nil {
		err = record(f, l.slot, rec, written)
	}
	if err != nil {
		f.close()
		return nil, classify(err)
	}
	if f != &l.f {
		l.f = *f
		f.fd, f.held = -1, false // the lease owns the descriptor now
	}
	return b.adopt(l)
}

// bumpOwnCounter takes the next token from the counter kept in the locked
// file f itself. An exclusive holder (mutex, writer) is alone: a pread and a
// pwrite on its open file. Readers share their flock, so a reader bumps
// under a brief exclusive OFD lock of the counter's bytes, taken through the
// same descriptor (on Linux, OFD locks and flock locks do not interact);
// writers need none since no reader holds the file while they do.
//
// An exclusive holder writes its record rec (see newRecord) with the
// counter; a reader writes its own apart (see record).
func bumpOwnCounter(f *lockFile, shared, sync bool, buf *counterBuf, rec []byte) (uint64, error) {
	if !shared {
		return bumpCounter(f.fd, f.path, sync, buf, rec)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Len: counterLen}
	err := briefly(f.path, counterStuck, func() (bool, error) {
		lk.Type = unix.F_WRLCK
		err := fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			// Another reader's, or a lock that is none?
			probe := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Len: counterLen}
			if err := fcntlRetry(f.fd, unix.F_OFD_GETLK, &probe); err != nil {
				return false, fmt.Errorf("test fencing counter lock %s: %w", f.path, err)
			}
			if probe.Type != unix.F_UNLCK && (probe.Pid != -1 || probe.Start != 0 || probe.Len != counterLen) {
				return false, fmt.Errorf("fencing counter of %s: bytes %d.. are locked by a lock that is not a reader's of this backend (pid %d, length %d): refused", f.path, probe.Start, probe.Pid, probe.Len)
			}
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("lock fencing counter %s: %w", f.path, err)
		}
		return true, nil
	})
	if err != nil {
		return 0, err
	}
	token, err := bumpCounter(f.fd, f.path, sync, buf, nil)
	lk.Type = unix.F_UNLCK
	if uerr := fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk); uerr != nil && err == nil {
		err = fmt.Errorf("unlock fencing counter %s: %w", f.path, uerr)
	}
	return token, err
}

// bumpCounterFile takes the next token from a counter file, under a brief
// exclusive flock of that file.
func (b *Backend) bumpCounterFile(path string, buf *counterBuf) (uint64, error) {
	c := newLockFile(&b.trust, path)
	defer c.close()
	err := briefly(path, counterStuck, func() (bool, error) { return c.tryFlock(unix.LOCK_EX, uint32(b.cfg.fileMode), false) })
	if err != nil {
		return 0, err
	}
	return bumpCounter(c.fd, path, b.cfg.sync, buf, nil)
}

// afterRelease is Release's end, in one hold of b.mu (a hot path: 64
// goroutines releasing at once queue on it): it unregisters the lease,
// wakes this backend's waiters of the file and, if the file was still
// ours, notes it (and a semaphore's counter file) for removal once idle:
// the monitor removes it after its next tick, if nobody holds it or waits
// for it then (see removeIdle), and so does Close. Removing it now would
// make the next acquisition of the name create the file anew: on ext4 a
// create and an unlink cost several times a whole acquisition, so a name
// locked again within a tick keeps its file. The waiters are woken
// without waiting for inotify to announce the close (it will, and wakes
// them again: an extra attempt, no harm).
func (b *Backend) afterRelease(l *Lease, ours bool) {
	var buf [4]*waiter
	wake := buf[:0]
	var c string
	if ours && l.what == whatSem {
		c = fileName(kindSemCounter, l.name)
	}
	noted, cnoted := true, true
	b.mu.Lock()
	delete(b.leases, l)
	if len(b.waiters) > 0 {
		wake = b.afterCloseLocked(wake, l.file)
	}
	if ours && !b.closed {
		noted = b.idle.note(l.file, idleFile{l.queue, l.counter})
		cnoted = c == "" || b.idle.note(c, idleFile{false, true})
		if noted || cnoted {
			b.ensureMonitorLocked(false)
		}
	}
	b.mu.Unlock()
	for _, w := range wake {
		w.signal()
	}
	if len(wake) > 0 {
		// The woken waiter is the next holder: let it run now. Without
		// this it waits in this processor's run queue until the caller
		// blocks (in a hot loop, after the caller's next attempt has
		// queued it behind the waiter), and its hand-off takes that long.
		runtime.Gosched()
	}
	if !noted {
		removeIdle(l.path, &b.trust, l.queue, l.counter)
	}
	if !cnoted {
		removeIdle(b.prefix+c, &b.trust, false, true)
	}
}

// markLost reports the loss of a held lease. Its descriptor stays open until
// Release: the lock it holds is on a file no longer reachable by its name,
// so it keeps nobody out.
func (l *Lease) markLost() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.markLostLocked()
}
