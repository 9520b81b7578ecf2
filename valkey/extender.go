package valkey

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// extender keeps the leases of one Backend or RedLock alive: a single
// goroutine, running only while leases are held (and for extenderLinger
// after the last is released, so that a lock taken and released in a loop
// does not start a goroutine each time), that sends the extensions
// of every lease due in one pipelined batch per node, and declares a lease
// lost when its validity deadline passes without a confirmed extension.
//
// A lease's deadline is t + lease - drift, t being the moment (monotonic
// clock) just before the request that acquired or last extended it was
// sent: the server's expiry is at least lease after the request arrived, so
// the holder's deadline comes first.
type extender struct {
	c    *core
	mu   sync.Mutex
	h    leaseHeap
	busy int // batches in flight
	run  bool
	// armed is when the loop's timer fires next (zero: unknown, the loop
	// is between waits): a lease due after it needs no wake-up, the loop
	// looks at the heap then.
	armed time.Time
	shut  bool
	wake  chan struct{}
	stop  chan struct{}
	wg    sync.WaitGroup
}

// extenderLinger is how long the extender's goroutine outlives the last
// lease.
const extenderLinger = time.Second

func newExtender(c *core) *extender {
	return &extender{c: c, wake: make(chan struct{}, 1), stop: make(chan struct{})}
}

// add starts extending a newly acquired lease.
func (e *extender) add(l *Lease) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.shut {
		return errClosed
	}
	// Due extendEvery after the validity began (a lock granted from
	// before the waiter's last attempt began before it was acquired).
	l.due = l.deadline.Add(e.c.cfg.extendEvery - (e.c.cfg.lease - e.c.cfg.drift))
	heap.Push(&e.h, l)
	if !e.run {
		e.run = true
		e.wg.Add(1)
		go e.loop()
	} else if l.idx == 0 && (e.armed.IsZero() || l.due.Before(e.armed)) {
		// (Not when the loop wakes before it is due: an uncontended lock
		// taken and released again and again wakes no goroutine.)
		e.poke()
	}
	return nil
}

func (e *extender) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// finish ends the extension of l for a release: it reports whether l had
// been lost (declared lost, or past its validity deadline unconfirmed), or
// an error if it was released before, and the moment it looked (zero when
// it did not: a release sent after it may use it as its own start).
func (e *extender) finish(l *Lease) (wasLost bool, at time.Time, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch l.state {
	case released:
		return false, at, backend.ErrNotHeld
	case lost:
		l.state = released
		return true, at, nil
	}
	// A lease past its validity deadline is lost even if the extender has
	// not run since (the process was paused, say): its key may have expired
	// and been taken, so its release must say so whatever the script finds.
	at = time.Now()
	wasLost = !at.Before(l.deadline)
	l.state = released
	if l.idx >= 0 {
		heap.Remove(&e.h, l.idx)
	}
	l.closeLostLocked()
	return wasLost, at, nil
}

// expireLocked declares l lost if it is held and now is past its validity
// deadline; e.mu is held.
func (e *extender) expireLocked(l *Lease, now time.Time) {
	if l.state == held && !now.Before(l.deadline) {
		e.loseLocked(l, "no extension confirmed before the validity deadline")
	}
}

// loseLocked declares l lost; e.mu is held.
func (e *extender) loseLocked(l *Lease, why string) {
	if l.state != held {
		return
	}
	l.state = lost
	if l.idx >= 0 {
		heap.Remove(&e.h, l.idx)
	}
	l.closeLostLocked()
	e.c.cfg.logger.Warn("dlock/valkey: lease lost", "kind", l.kind.String(), "name", l.name, "reason", why)
}

// close stops the extender; the leases still held are lost (nobody extends
// them any more).
func (e *extender) close() {
	e.mu.Lock()
	if !e.shut {
		e.shut = true
		close(e.stop)
	}
	for len(e.h) > 0 {
		e.loseLocked(e.h[0], "backend closed")
	}
	e.mu.Unlock()
	e.wg.Wait()
	// Batches that were in flight may have put leases back; lose them too.
	e.mu.Lock()
	for len(e.h) > 0 {
		e.loseLocked(e.h[0], "backend closed")
	}
	e.mu.Unlock()
}

func (e *extender) loop() {
	defer e.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Leases due within slack of the first are sent with it, so that
	// leases acquired at different moments share batches.
	slack := e.c.cfg.extendEvery / 4
	idle := false // a linger began with nothing to do
	for {
		e.mu.Lock()
		if e.shut || (idle && len(e.h) == 0 && e.busy == 0) {
			e.run = false
			e.mu.Unlock()
			return
		}
		if len(e.h) == 0 && e.busy == 0 {
			idle = true
			e.armed = time.Now().Add(extenderLinger)
			e.mu.Unlock()
			timer.Reset(extenderLinger)
			select {
			case <-timer.C:
			case <-e.wake:
				idle = false
			case <-e.stop:
			}
			e.mu.Lock()
			e.armed = time.Time{}
			e.mu.Unlock()
			continue
		}
		idle = false
		now := time.Now()
		var batch []*Lease
		for len(e.h) > 0 && !e.h[0].due.After(now.Add(slack)) {
			l := heap.Pop(&e.h).(*Lease)
			if e.expireLocked(l, now); l.state != held {
				continue
			}
			batch = append(batch, l)
		}
		wait := time.Hour
		if len(e.h) > 0 {
			wait = time.Until(e.h[0].due)
		}
		if len(batch) > 0 {
			e.busy++
			e.wg.Add(1)
			go e.extend(batch)
		}
		e.armed = now.Add(wait)
		e.mu.Unlock()
		timer.Reset(max(wait, 0))
		select {
		case <-timer.C:
		case <-e.wake:
		case <-e.stop:
		}
		e.mu.Lock()
		e.armed = time.Time{}
		e.mu.Unlock()
	}
}

// extend sends one batch to every node and settles each lease by the
// answers.
func (e *extender) extend(batch []*Lease) {
	defer e.wg.Done()
	c := e.c
	first := batch[0].deadline
	calls := make([]call, len(batch))
	for i, l := range batch {
		calls[i] = l.extendCall()
		if l.deadline.Before(first) {
			first = l.deadline
		}
	}
	t1 := time.Now()
	// Waiting past the earliest deadline is pointless: that lease is lost
	// then, and the others are retried.
	ctx, cancel := context.WithDeadline(context.Background(), first)
	defer cancel()
	ok := make([]int, len(batch))
	no := make([]int, len(batch))
	var why error
	var wmu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(func() {
			res := execBatch(ctx, n.client, calls)
			unconfirmed := c.confirmExtension(ctx, n, batch, res) // WithReplicas (replicas.go)
			if len(res) > 0 {
				_, err := res[0].AsInt64()
				c.noteAuth(n, err)
			}
			wmu.Lock()
			defer wmu.Unlock()
			for i, r := range res {
				v, err := r.AsInt64()
				if err == nil && v == 1 && unconfirmed != nil {
					err = unconfirmed
				}
				switch {
				case err != nil:
					why = err
				case v == 1:
					ok[i]++
				default:
					no[i]++
				}
			}
		})
	}
	wg.Wait()
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.busy--
	retry := max(c.cfg.extendEvery/8, 5*time.Millisecond)
	for i, l := range batch {
		if l.state != held {
			continue
		}
		switch {
		case ok[i] >= c.quorum:
			l.setDeadline(t1.Add(c.cfg.lease - c.cfg.drift))
			l.due = t1.Add(c.cfg.extendEvery)
		case no[i] > len(c.nodes)-c.quorum:
			e.loseLocked(l, "the key was deleted or taken over")
			continue
		default:
			if e.expireLocked(l, now); l.state != held {
				continue
			}
			c.cfg.logger.Debug("dlock/valkey: extension failed, retrying", "kind", l.kind.String(), "name", l.name, "err", why)
			l.due = now.Add(retry)
			if l.due.After(l.deadline) {
				l.due = l.deadline
			}
		}
		heap.Push(&e.h, l)
	}
	e.poke()
}

// leaseHeap orders leases by their next extension.
type leaseHeap []*Lease

func (h leaseHeap) Len() int           { return len(h) }
func (h leaseHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *leaseHeap) Push(x any) {
	l := x.(*Lease)
	l.idx = len(*h)
	*h = append(*h, l)
}
func (h *leaseHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.idx = -1
	return l
}
