//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"sync"
	"time"

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
	cbuf  counterBuf // for the fencing counter, without an allocation
	rec   []byte     // an upgradeable reader's holder record, for Upgrade

	upgraded bool // an upgradeable reader that became the writer (l.mu)

	mu    sync.Mutex
	f     pfile // closed once released or dropped
	state uint8
	loss  loss.Notifier
}

// newLease wraps a locked file into a registered lease. counter is the
// fencing counter file (a semaphore's), or nil to keep the counter in the
// lock file itself (held exclusively, or for a reader serialized by the
// writers' gate, which the caller holds exclusively). On error the file is
// closed.
//
// Its shape is the Linux newLease's, kept apart: the files differ (pfile,
// lockFile), and so does how a reader reaches the counter (here under the
// writers' gate, there under an OFD lock of the counter's bytes).
//
// The holder's record (see holders.go), describing it as owner, goes into
// slot 0 of the lock file of an exclusive holder (with the counter, in one
// write, where there is one), and into a record file of its own for a
// reader (see claimRecord).
func (b *Backend) newLease(what, name string, f *pfile, counter *pfile, owner string) (*Lease, error) {
	l := &Lease{b: b, what: what, name: name, path: f.path}
	if counter != nil {
		l.cpath = counter.path
	}
	var rb [recordBuf]byte
	rec := appendRecord(rb[:0], owner, time.Now())
	shared := what == whatRead || what == whatUpgradeable
	if what == whatUpgradeable {
		l.rec = append([]byte(nil), rec...)
	}
	written := false
	var err error
	if b.cfg.fencing {
		if counter == nil {
			written = !shared
			r := rec
			if shared {
				r = nil
			}
			l.token, err = bumpCounter(f.h, f.path, b.cfg.sync, &l.cbuf, r)
		} else {
			l.token, err = b.bumpCounterFile(counter, &l.cbuf)
		}
	}
	if err == nil && !written {
		if shared {
			err = b.claimRecord(f, name, rec)
		} else {
			err = writeRecord(f.h, f.path, 0, rec)
		}
	}
	if err != nil {
		f.close()
		return nil, classify(err)
	}
	l.f = *f
	f.h, f.held = noHandle, false // the lease owns the handle now
	return b.adopt(l)
}

// bumpCounterFile takes the next token from a counter file, under a brief
// exclusive lock of that file (noted for removal with the slot at
// Release).
func (b *Backend) bumpCounterFile(c *pfile, buf *counterBuf) (uint64, error) {
	err := briefly(c.path, counterStuck, func() (bool, error) { return c.lock(true, true, b.mode()) })
	if err != nil {
		c.close()
		return 0, err
	}
	token, err := bumpCounter(c.h, c.path, b.cfg.sync, buf, nil)
	c.close()
	return token, err
}

// ensureMonitorLocked starts the monitor if it does not run. b.mu is held.
// waiting is unused: waits poll here (the Linux monitor watches closes for
// waiters).
func (b *Backend) ensureMonitorLocked(waiting bool) {
	if !b.monitoring {
		b.monitoring = true
		b.wg.Add(1)
		go b.monitor()
	}
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
		b.rotateIdleLocked()
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

// idleFile says how to remove a noted lock file (see removeNoted).
type idleFile struct {
	counter bool   // the file keeps a fencing counter
	waits   bool   // waiters of the lock hold the waiters' file of kind wait and name
	wait    kind   // with waits
	name    string // with waits: the lock's name
	upgrade bool   // an RW lock's file: not while an upgradeable reader holds u-NAME
}

// noteIdle notes that this backend let go of the lock file path: the
// monitor removes it after its next tick, if nobody holds it or waits for
// it then (see removeNoted), and so does Close. Removing it now would make
// the next acquisition of the name create the file anew: on ext4 a create
// and an unlink cost several times a whole acquisition, so a name locked
// again within a tick keeps its file. Once the backend is closed (Close
// freeing its leases, a wait that Close ended leaving) the file is removed
// at once.
func (b *Backend) noteIdle(path string, k idleFile) {
	b.mu.Lock()
	if !b.closed && b.idle.note(path, k) {
		b.ensureMonitorLocked(false)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	b.removeNoted(path, k)
}

// stopMonitorLocked is Close's: the monitor ends by itself on b.stopc.
func (b *Backend) stopMonitorLocked() func() { return nil }

// noteFreed is Close's end of a lease it freed: its files go at once (see
// noteIdle).
func (b *Backend) noteFreed(l *Lease) { b.noteLease(l) }

// afterRelease is Release's end: if the file was still ours, it notes it
// (and a semaphore's counter file) for removal once idle.
func (b *Backend) afterRelease(l *Lease, ours bool) {
	b.unregister(l)
	if ours {
		b.noteLease(l)
	}
}

// noteLease notes the files of lease l, which its holder let go of (or
// Close freed).
func (b *Backend) noteLease(l *Lease) {
	b.noteIdle(l.path, l.idleFile())
	for s := l.f.side; s != nil; s = s.side {
		b.noteIdle(s.path, idleFile{})
	}
	if l.cpath != "" {
		b.noteIdle(l.cpath, idleFile{counter: true})
	}
}

// idleFile says how to remove the lease's lock file.
func (l *Lease) idleFile() idleFile {
	switch l.what {
	case whatMutex:
		return idleFile{counter: true, waits: true, wait: kindMutexWait, name: l.name}
	case whatRead, whatWrite, whatUpgradeable:
		return idleFile{counter: true, waits: true, wait: kindRWGate, name: l.name, upgrade: true}
	}
	return idleFile{waits: true, wait: kindSemWait, name: l.name}
}

// removeNoted removes the lock file path if nobody holds it or waits for
// it: it opens the file (never creating it), locks it exclusively without
// waiting, checks that the path still names it and that it is a lock file
// of this backend's (see trust.check) — all as pfile.lock does — and then
// removes it only
//
//   - while no waiter holds the lock's waiters' file (mw-, rg-, sw-), so a
//     waiter does not find the file it polls removed under it (which would
//     be safe: it would lock the new one, but make it anew);
//   - for an RW lock's file, while no upgradeable reader holds u-NAME
//     (one trying to upgrade lets go of its shared lock for a moment);
//   - if the file keeps a fencing counter, while the wall clock is past
//     it (see removable), so that the next token, floored on the clock and
//     taken from a new file, still exceeds every token given.
//
// Whoever has the old file open and locks it after the removal finds that
// the path no longer names it and locks the new file instead: removal
// never lets two holders in. While the sweep holds the lock (a few system
// calls), a try of the name fails as if another holder held it.
func (b *Backend) removeNoted(path string, k idleFile) bool {
	f := newPFile(path, &b.trust)
	defer f.close()
	if ok, err := f.lock(true, false, 0); !ok || err != nil {
		return false // gone already, held (its holder notes it again), or not ours
	}
	if k.counter {
		var buf counterBuf
		last, err := readCounter(f.h, f.path, &buf)
		if err != nil || !removable(last) {
			return false
		}
	}
	if k.waits {
		if busy, err := b.othersWait(b.path(k.wait, k.name)); busy || err != nil {
			return false // a waiter notes it again as it lets go
		}
	}
	if k.upgrade {
		if none, err := b.noUpgrader(path); !none || err != nil {
			return false // the upgradeable reader notes it again as it lets go
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
		l.markLostLocked()
		l.dropSidesLocked()
	}
}

// dropSidesLocked lets go of a lost lease's side files: an upgradeable
// reader's u-NAME, which would keep the name's next writers and
// upgradeable readers out, and a reader's record file, which would list
// it. Its lock file stays open until Release. l.mu is held.
func (l *Lease) dropSidesLocked() {
	side := l.f.side
	if side == nil {
		return
	}
	l.f.side = nil
	side.close() // and its own side files
	for s := side; s != nil; s = s.side {
		l.b.noteIdle(s.path, idleFile{})
	}
}
