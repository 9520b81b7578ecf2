//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/loss"
)

// Lease is one lock held by a Backend: an open lock file and the lock on it.
type Lease struct {
	b     *Backend
	what  string // "mutex", "read lock", "write lock", "semaphore"
	name  string
	path  string
	token uint64
	lost  chan struct{}

	mu    sync.Mutex
	f     pfile // closed once released or dropped
	state uint8
	loss  loss.Notifier
}

const (
	leaseHeld uint8 = iota
	leaseLost
	leaseReleased
)

// newLease wraps a locked file into a registered lease. counter is the
// fencing counter file (a semaphore's), or nil to keep the counter in the
// lock file itself (held exclusively, or for a reader serialized by the
// writers' gate, which the caller holds exclusively). On error the file is
// closed.
func (b *Backend) newLease(what, name string, f *pfile, counter *pfile) (*Lease, error) {
	l := &Lease{b: b, what: what, name: name, path: f.path, lost: make(chan struct{})}
	if b.cfg.fencing {
		var err error
		if counter == nil {
			l.token, err = f.bumpCounter(b.cfg.sync)
		} else {
			l.token, err = b.bumpCounterFile(counter)
		}
		if err != nil {
			f.close()
			return nil, classify(err)
		}
	}
	l.f = *f
	f.h, f.held = noHandle, false // the lease owns the handle now
	if err := b.register(l); err != nil {
		l.f.close()
		return nil, classify(err)
	}
	return l, nil
}

// bumpCounterFile takes the next token from a counter file, under a brief
// exclusive lock of that file, and deletes the file if the clock allows
// (see removable).
func (b *Backend) bumpCounterFile(c *pfile) (uint64, error) {
	err := briefly(c.path, func() (bool, error) { return c.lock(true, true, b.mode()) })
	if err != nil {
		c.close()
		return 0, err
	}
	token, err := c.bumpCounter(b.cfg.sync)
	if err == nil && removable(token) {
		c.remove()
	}
	c.close()
	return token, err
}

// register records a new lease so that the monitor checks it.
func (b *Backend) register(l *Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.leases[l] = struct{}{}
	if !b.monitoring {
		b.monitoring = true
		b.wg.Add(1)
		go b.monitor()
	}
	return nil
}

// unregister forgets a lease.
func (b *Backend) unregister(l *Lease) {
	b.mu.Lock()
	delete(b.leases, l)
	b.mu.Unlock()
}

// monitor checks every loss interval that each held lease's path still
// names its file, until Close, or until a check finds no lease held (so a
// hot loop of acquisitions and releases does not start a goroutine each).
func (b *Backend) monitor() {
	defer b.wg.Done()
	t := time.NewTicker(b.cfg.lossInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stopc:
			return
		case <-t.C:
		}
		b.mu.Lock()
		if len(b.leases) == 0 {
			b.monitoring = false
			b.mu.Unlock()
			return
		}
		held := make([]*Lease, 0, len(b.leases))
		for l := range b.leases {
			held = append(held, l)
		}
		b.mu.Unlock()
		for _, l := range held {
			l.check()
		}
	}
}

// check reports the loss of the lease if its path no longer names its file.
func (l *Lease) check() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.state != leaseHeld {
		return
	}
	if same, err := l.f.named(); err == nil && !same {
		l.state = leaseLost
		l.closeLostLocked()
	}
}

// Release gives the lock up. It returns nil only if the lease held its
// lock until then; for a lease that was lost (its file removed or
// replaced, or the backend closed) it returns an error wrapping
// backend.ErrLockLost, and for a second Release one wrapping
// backend.ErrNotHeld. A release that leaves nobody holding the lock deletes
// the lock file (see the package documentation). It frees the lease's
// handle in every case and never touches the lock of another holder.
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
	if err == nil && same {
		l.releaseDeleting()
	}
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

// releaseDeleting deletes the lock file if this release leaves nobody
// holding it, while holding it exclusively: a reader first trades its
// shared lock for an exclusive one, which it gets only if no other reader
// holds the file. A file whose fencing counter the clock has not passed
// yet stays (see removable).
func (l *Lease) releaseDeleting() {
	f := &l.f
	if l.what == whatRead {
		f.unlock()
		if ok, err := lockHandle(f.h, true); err != nil || !ok {
			return
		}
		f.held = true
		// Between the unlock and the exclusive lock, another last reader
		// may have deleted the file, and someone else may hold a new one
		// at the path: delete only if the path still names ours.
		if same, err := f.named(); err != nil || !same {
			return
		}
	}
	if l.what != whatSem {
		last := l.token
		if l.what == whatRead || last == 0 {
			var err error
			if last, err = f.readCounter(); err != nil {
				return
			}
		}
		if !removable(last) {
			return
		}
	}
	f.remove()
}

// AfterLost implements backend.LossNotifier: f runs, in its own
// goroutine, once Lost is closed, unless stop is called first.
func (l *Lease) AfterLost(f func()) (stop func() bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loss.Add(f, l.state != leaseHeld, &l.mu)
}

func (l *Lease) closeLostLocked() {
	close(l.lost)
	l.loss.Fire()
}

// Lost returns a channel closed when the lease can no longer guarantee its
// lock — its lock file was removed or replaced (noticed within the loss
// interval), or the backend was closed — and by Release.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Token returns the lease's fencing token (0 when fencing is off).
func (l *Lease) Token() uint64 { return l.token }

// Path returns the path of the lock file the lease holds (for a semaphore,
// its slot file).
func (l *Lease) Path() string { return l.path }

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
