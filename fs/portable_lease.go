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
	cpath string // a semaphore's counter file (sc-NAME)
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
	if counter != nil {
		l.cpath = counter.path
	}
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
// exclusive lock of that file (noted for removal with the slot at
// Release).
func (b *Backend) bumpCounterFile(c *pfile) (uint64, error) {
	err := briefly(c.path, func() (bool, error) { return c.lock(true, true, b.mode()) })
	if err != nil {
		c.close()
		return 0, err
	}
	token, err := c.bumpCounter(b.cfg.sync)
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
	b.ensureMonitorLocked()
	return nil
}

// ensureMonitorLocked starts the monitor if it does not run. b.mu is held.
func (b *Backend) ensureMonitorLocked() {
	if !b.monitoring {
		b.monitoring = true
		b.wg.Add(1)
		go b.monitor()
	}
}

// unregister forgets a lease.
func (b *Backend) unregister(l *Lease) {
	b.mu.Lock()
	delete(b.leases, l)
	b.mu.Unlock()
}

// monitor checks every loss interval that each held lease's path still
// names its file, and sweeps the lock files noted before its previous
// tick (see noteIdle), until Close, or until a tick finds neither a lease
// held nor a file to remove (so a hot loop of acquisitions and releases
// does not start a goroutine each).
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
		b.ticks++
		if len(b.leases) == 0 && !b.idle.pending() {
			b.monitoring = false
			b.mu.Unlock()
			return
		}
		if old := b.idle.rotate(); old != nil {
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				for path, k := range old {
					b.removeIdle(path, k)
				}
				b.mu.Lock()
				b.idle.swept()
				b.mu.Unlock()
			}()
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

// idleFile says how to remove a noted lock file (see removeIdle).
type idleFile struct {
	counter bool   // the file keeps a fencing counter
	waits   bool   // waiters of the lock hold the waiters' file of kind wait and name
	wait    kind   // with waits
	name    string // with waits: the lock's name
}

// noteIdle notes that this backend let go of the lock file path: the
// monitor removes it after its next tick, if nobody holds it or waits for
// it then (see removeIdle), and so does Close. Removing it now would make
// the next acquisition of the name create the file anew: on ext4 a create
// and an unlink cost several times a whole acquisition, so a name locked
// again within a tick keeps its file. Once the backend is closed (Close
// freeing its leases, a wait that Close ended leaving) the file is removed
// at once.
func (b *Backend) noteIdle(path string, k idleFile) {
	b.mu.Lock()
	if !b.closed && b.idle.note(path, k) {
		b.ensureMonitorLocked()
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.removeIdle(path, k)
}

// noteLease notes the files of lease l, which its holder let go of (or
// Close freed).
func (b *Backend) noteLease(l *Lease) {
	b.noteIdle(l.path, l.idleFile())
	if l.cpath != "" {
		b.noteIdle(l.cpath, idleFile{counter: true})
	}
}

// idleFile says how to remove the lease's lock file.
func (l *Lease) idleFile() idleFile {
	switch l.what {
	case whatMutex:
		return idleFile{counter: true, waits: true, wait: kindMutexWait, name: l.name}
	case whatRead, whatWrite:
		return idleFile{counter: true, waits: true, wait: kindRWGate, name: l.name}
	}
	return idleFile{waits: true, wait: kindSemWait, name: l.name}
}

// sweepIdle removes every noted lock file that is idle now.
func (b *Backend) sweepIdle() {
	b.mu.Lock()
	all := b.idle.takeAll()
	b.mu.Unlock()
	for _, m := range all {
		for path, k := range m {
			b.removeIdle(path, k)
		}
	}
}

// removeIdle removes the lock file path if nobody holds it or waits for
// it: it opens the file (never creating it), locks it exclusively without
// waiting, checks that the path still names it and that it is a lock file
// of this backend's (see trust.check) — all as pfile.lock does — and then
// removes it only
//
//   - while no waiter holds the lock's waiters' file (mw-, rg-, sw-), so a
//     waiter does not find the file it polls removed under it (which would
//     be safe: it would lock the new one, but make it anew);
//   - if the file keeps a fencing counter, while the wall clock is past
//     it (see removable), so that the next token, floored on the clock and
//     taken from a new file, still exceeds every token given.
//
// Whoever has the old file open and locks it after the removal finds that
// the path no longer names it and locks the new file instead: removal
// never lets two holders in. While the sweep holds the lock (a few system
// calls), a try of the name fails as if another holder held it.
func (b *Backend) removeIdle(path string, k idleFile) bool {
	f := newPFile(path, &b.trust)
	defer f.close()
	if ok, err := f.lock(true, false, 0); !ok || err != nil {
		return false // gone already, held (its holder notes it again), or not ours
	}
	if k.counter {
		last, err := f.readCounter()
		if err != nil || !removable(last) {
			return false
		}
	}
	if k.waits {
		if busy, err := b.othersWait(b.path(k.wait, k.name)); busy || err != nil {
			return false // a waiter notes it again as it lets go
		}
	}
	f.remove()
	return true
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
// backend.ErrNotHeld. The lock file stays, noted for removal once idle
// (see noteIdle). It frees the lease's handle in every case and never
// touches the lock of another holder.
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
	if err == nil && same {
		// Only a file that was still ours: otherwise the name is someone
		// else's now.
		l.b.noteLease(l)
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
