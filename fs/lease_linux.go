//go:build linux && !dlock_portable

package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"
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
	counter  bool // the lock file keeps the fencing counter (not a semaphore)
	queue    bool // the lock file keeps the waiters' queue (not a semaphore's slot 1, 2, ...)
	lost     chan struct{}

	cbuf counterBuf // for reading the fencing counter without an allocation

	mu    sync.Mutex
	f     lockFile // closed (fd -1) once released or dropped
	state uint8
	loss  loss.Notifier // AfterLost's functions
}

const (
	leaseHeld uint8 = iota
	leaseLost
	leaseReleased
)

// newLease wraps a locked file into a registered lease; a waiter leaves the
// queue (see leave). counter is the path of the fencing counter file, or ""
// to keep the counter in the lock file itself (a mutex, a reader-writer
// lock); queue says whether the lock file keeps the waiters' queue. On error
// the file is closed (its lock dropped).
func (b *Backend) newLease(what, name string, f *lockFile, counter string, queue bool) (*Lease, error) {
	f.leave()
	l := &Lease{
		b:    b,
		what: what,
		name: name,
		path: f.path,
		file: f.path[len(b.prefix):],
		dev:  f.dev,
		ino:  f.ino,
		lost: make(chan struct{}),

		counter: counter == "",
		queue:   queue,
	}
	if b.cfg.fencing {
		var err error
		if counter == "" {
			l.token, err = bumpOwnCounter(f, what == whatRead, b.cfg.sync, &l.cbuf)
		} else {
			l.token, err = b.bumpCounterFile(counter, &l.cbuf)
		}
		if err != nil {
			f.close()
			return nil, classify(err)
		}
	}
	l.f = *f
	f.fd, f.held = -1, false // the lease owns the descriptor now
	if err := b.register(l); err != nil {
		l.f.close()
		return nil, classify(err)
	}
	return l, nil
}

// bumpOwnCounter takes the next token from the counter kept in the locked
// file f itself. An exclusive holder (mutex, writer) is alone: a pread and a
// pwrite on its open file. Readers share their flock, so a reader bumps
// under a brief exclusive OFD lock of the counter's bytes, taken through the
// same descriptor (on Linux, OFD locks and flock locks do not interact);
// writers need none since no reader holds the file while they do.
func bumpOwnCounter(f *lockFile, shared, sync bool, buf *counterBuf) (uint64, error) {
	if !shared {
		return bumpCounter(f.fd, f.path, sync, buf)
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
	token, err := bumpCounter(f.fd, f.path, sync, buf)
	lk.Type = unix.F_UNLCK
	if uerr := fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk); uerr != nil && err == nil {
		err = fmt.Errorf("unlock fencing counter %s: %w", f.path, uerr)
	}
	return token, err
}

// counterPatience bounds how long a holder waits for a fencing counter
// that others hold only for a read and a write: past it, the counter is
// held by something else, and waiting on would hang.
const counterPatience = 10 * time.Second

// counterStuck is briefly's complaint about a fencing counter.
const counterStuck = "the fencing counter stayed locked"

// briefly runs try, which waits for something others do only for a moment
// (hold a lock, remove a file), until it succeeds or fails, pausing between
// attempts (50 µs growing to 1 ms), for at most counterPatience; then it
// fails with an error saying what stuck.
func briefly(path, stuck string, try func() (bool, error)) error {
	pause := 50 * time.Microsecond
	deadline := time.Now().Add(counterPatience)
	for {
		ok, err := try()
		if ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s for %v (a moment is the most any holder keeps it): refused", path, stuck, counterPatience)
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Millisecond)
	}
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
	return bumpCounter(c.fd, path, b.cfg.sync, buf)
}

// Release gives the lock up: it removes the lock file if nobody else holds
// or waits for it (see the package documentation, Lock-file lifecycle),
// drops the lock and closes the file. It returns nil only if the lease held
// its lock until then; for a lease that was lost (its file removed or
// replaced, or the backend closed) it returns an error wrapping
// backend.ErrLockLost, and for a second Release one wrapping
// backend.ErrNotHeld. It frees the lease's descriptor in every case and
// never touches the lock or the file of another holder. It runs even when
// ctx is already cancelled; it is local and never blocks (a stat, an
// unlink, an unlock, a close), so it ends well within any release timeout
// (ctx's deadline, set by dlock.WithReleaseTimeout) and needs no bound of
// its own.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch l.state {
	case leaseReleased:
		return backend.ErrNotHeld
	case leaseLost:
		l.state = leaseReleased
		l.f.close()
		l.b.unregister(l)
		return backend.ErrLockLost
	}
	l.state = leaseReleased
	l.b.unregister(l)
	same, err := l.f.named()
	l.f.close()
	l.closeLostLocked()
	l.b.wakeAfterRelease(l.file)
	if err == nil && same {
		// Only a file that was still ours: otherwise the name is someone
		// else's now.
		l.b.noteIdle(l.file, l.queue, l.counter)
		if l.what == whatSem {
			l.b.noteIdle(fileName(kindSemCounter, l.name), false, true)
		}
	}
	if err != nil {
		return fmt.Errorf("cannot verify ownership: %w: %w", backend.ErrLockLost, err)
	}
	if !same {
		return fmt.Errorf("lock file %s was removed or replaced: %w", l.path, backend.ErrLockLost)
	}
	return nil
}

// AfterLost implements backend.LossNotifier: f runs, in its own
// goroutine, once Lost is closed (on loss, Release or Close; at once if it
// already is), unless stop is called first.
func (l *Lease) AfterLost(f func()) (stop func() bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loss.Add(f, l.state != leaseHeld, &l.mu)
}

// closeLostLocked closes Lost and starts AfterLost's functions; l.mu is
// held.
func (l *Lease) closeLostLocked() {
	close(l.lost)
	l.loss.Fire()
}

// Lost returns a channel closed when the lease can no longer guarantee its
// lock — its lock file was removed or replaced (the path no longer names the
// locked file), or the backend was closed — and by Release.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Token returns the lease's fencing token (0 when fencing is off): for each
// name and kind of lock, tokens strictly increase across all acquisitions by
// all processes using the directory.
func (l *Lease) Token() uint64 { return l.token }

// Path returns the path of the lock file the lease holds (for a semaphore,
// its slot file).
func (l *Lease) Path() string { return l.path }

// markLost reports the loss of a held lease. Its descriptor stays open until
// Release: the lock it holds is on a file no longer reachable by its name,
// so it keeps nobody out.
func (l *Lease) markLost() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == leaseHeld {
		l.state = leaseLost
		l.closeLostLocked()
	}
}

// drop is Close's end of a lease: it reports the loss and frees the lock.
func (l *Lease) drop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state == leaseHeld {
		l.state = leaseLost
		l.closeLostLocked()
	}
	l.f.close()
}
