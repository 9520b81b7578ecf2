// Package loss runs a lease's AfterLost functions (backend.LossNotifier)
// the way context.AfterFunc runs functions after a context ends: the one
// implementation the backends share. It allocates nothing until the first
// AfterLost, and two small objects per AfterLost.
package loss

import "sync"

// Notifier holds the functions to run once a lease is lost. Its zero value
// is ready. It has no lock of its own: the lease's lock, which guards the
// lease's state, guards it too, and is handed to Add for stop to take.
type Notifier struct {
	first *entry   // the common case: one function (Do's loss watch)
	more  []*entry // the others
	fired bool
}

// entry is one registered function.
type entry struct {
	n     *Notifier
	mu    sync.Locker // the lease's lock
	f     func()
	state uint8 // pending, started, stopped
}

const (
	pending uint8 = iota
	started
	stopped
)

// Add registers f to run, in its own goroutine, when Fire is called, or at
// once if done (the lease is already lost or released) or Fire was. mu is
// the lease's lock, which the caller holds; stop takes it. stop unregisters
// f: it returns true if that kept f from running, false if f has already
// been started or stop was called before.
func (n *Notifier) Add(f func(), done bool, mu sync.Locker) (stop func() bool) {
	e := &entry{n: n, mu: mu, f: f}
	if done || n.fired {
		e.state = started
		go f()
		return e.stop
	}
	if n.first == nil {
		n.first = e
	} else {
		n.more = append(n.more, e)
	}
	return e.stop
}

// Fire starts the functions: the lease's Lost has just closed. The lease's
// lock is held. Calling it again does nothing.
func (n *Notifier) Fire() {
	if n.fired {
		return
	}
	n.fired = true
	if n.first != nil {
		n.first.start()
	}
	for _, e := range n.more {
		e.start()
	}
	n.first, n.more = nil, nil
}

func (e *entry) start() {
	if e.state == pending {
		e.state = started
		go e.f()
	}
}

func (e *entry) stop() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != pending {
		return false
	}
	e.state = stopped
	n := e.n
	if n.first == e {
		n.first = nil
	} else {
		for i, m := range n.more {
			if m == e {
				n.more = append(n.more[:i], n.more[i+1:]...)
				break
			}
		}
	}
	return true
}
