//go:build linux

package fs

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/dlock-go/dlock/backend"

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
	lost     chan struct{}

	mu       sync.Mutex
	f        lockFile // closed (fd -1) once released or dropped
	state    uint8
	lossCtx  context.Context    // made by AfterLost; cancelled when lost closes
	lossStop context.CancelFunc // its cancel
}

const (
	leaseHeld uint8 = iota
	leaseLost
	leaseReleased
)

// newLease wraps a locked file into a registered lease. counter is the path
// of the fencing counter file, or "" to keep the counter in the lock file
// itself (a mutex, a reader-writer lock). On error the file is closed (its
// lock dropped).
func (b *Backend) newLease(what, name string, f *lockFile, counter string) (*Lease, error) {
	l := &Lease{
		b:    b,
		what: what,
		name: name,
		path: f.path,
		file: f.path[len(b.prefix):],
		dev:  f.dev,
		ino:  f.ino,
		lost: make(chan struct{}),
	}
	if b.cfg.fencing {
		var err error
		if counter == "" {
			l.token, err = bumpOwnCounter(f, what == whatRead, b.cfg.sync)
		} else {
			l.token, err = b.bumpCounterFile(counter)
		}
		if err != nil {
			f.close()
			return nil, classify(err)
		}
	}
	l.f = *f
	f.fd, f.held = -1, heldNone // the lease owns the descriptor now
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
func bumpOwnCounter(f *lockFile, shared, sync bool) (uint64, error) {
	if !shared {
		return bumpCounter(f.fd, f.path, sync)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Len: counterLen}
	if err := fcntlRetry(f.fd, unix.F_OFD_SETLKW, &lk); err != nil {
		return 0, fmt.Errorf("lock fencing counter %s: %w", f.path, err)
	}
	token, err := bumpCounter(f.fd, f.path, sync)
	lk.Type = unix.F_UNLCK
	if uerr := fcntlRetry(f.fd, unix.F_OFD_SETLK, &lk); uerr != nil && err == nil {
		err = fmt.Errorf("unlock fencing counter %s: %w", f.path, uerr)
	}
	return token, err
}

// bumpCounterFile takes the next token from a counter file, under a brief
// exclusive flock of that file.
func (b *Backend) bumpCounterFile(path string) (uint64, error) {
	c := newLockFile(path, &b.trust)
	defer c.close()
	if err := c.lockFlock(uint32(b.cfg.fileMode)); err != nil {
		return 0, err
	}
	return bumpCounter(c.fd, path, b.cfg.sync)
}

// Release gives the lock up: it drops the lock and closes the lock file (the
// file itself stays). It returns nil only if the lease held its lock until
// then; for a lease that was lost (its file removed or replaced, or the
// backend closed) it returns an error wrapping backend.ErrLockLost, and for a
// second Release one wrapping backend.ErrNotHeld. It frees the lease's
// descriptor in every case and never touches the lock of another holder.
// It runs even when ctx is already cancelled; it is local and never blocks
// (a stat, an unlock, a close), so it ends well within any release timeout
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
	same, err := l.f.named()
	l.f.close()
	l.closeLostLocked()
	l.b.unregister(l)
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
	if l.lossCtx == nil {
		l.lossCtx, l.lossStop = context.WithCancel(context.Background())
		if l.state != leaseHeld {
			l.lossStop()
		}
	}
	ctx := l.lossCtx
	l.mu.Unlock()
	return context.AfterFunc(ctx, f)
}

// closeLostLocked closes Lost and starts AfterLost's functions; l.mu is
// held.
func (l *Lease) closeLostLocked() {
	close(l.lost)
	if l.lossStop != nil {
		l.lossStop()
	}
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
