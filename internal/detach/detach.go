// Package detach is the context a lease's release runs under: the caller's
// ctx without its cancellation, bounded by a deadline of its own (see
// backend.DetachedContext). It lives apart from package backend so that
// the dlock package's Lock can keep one in its own memory: a release then
// allocates no context at all until the backend asks for Done, and the
// releases of one Guard share their done channels and timers (Deadlines).
package detach

import (
	"context"
	"sync"
	"time"
)

// Ctx is a detached, bounded context. Its zero value is not ready: call
// Init first, and End when the release it bounds returns. A Ctx must not
// be copied after Init, nor used for a second release.
//
// It is lazy: its deadline is fixed by Init, but its done channel, and the
// timer that closes it at the deadline, are made only when someone asks
// for Done (a network client may; one that only checks Err does not, nor
// does a release made of local system calls). A
// context derived from it (context.WithCancel, context.AfterFunc) follows
// it through its AfterFunc method, without a goroutine of its own.
type Ctx struct {
	parent context.Context // the caller's ctx: only its values are used
	due    time.Duration   // the deadline, as a time since epoch
	ds     *Deadlines      // shares done channels and timers, if not nil
	b      *bucket         // the shared done channel Done gave, if any; nil once c ended

	mu        sync.Mutex
	state     state
	firstUsed bool          // first was registered (it may since be nil)
	done      chan struct{} // made by the first Done; closed when it ends
	timer     *time.Timer   // ends it at its deadline; made with done
	// The AfterFunc functions still to run when it ends; a stopped or
	// started one is nil. The first is kept apart: a release seldom
	// registers more than one (pgx watches the ctx of its one query).
	first func()
	more  *[]func()
}

// state is how a Ctx ended, if it has.
type state uint8

const (
	live state = iota
	canceled
	expired
)

// err is the Err of a Ctx in state s.
func (s state) err() error {
	switch s {
	case canceled:
		return context.Canceled
	case expired:
		return context.DeadlineExceeded
	}
	return nil
}

// Init makes c parent without its cancellation, ending timeout from now.
// With ds not nil, c's deadline is rounded up to the next multiple of
// Grain, and Done gives the channel that ds shares among its Ctxs of that
// deadline (see Deadlines).
func (c *Ctx) Init(parent context.Context, timeout time.Duration, ds *Deadlines) {
	c.parent, c.due, c.ds = parent, now()+timeout, ds
	if ds != nil {
		c.due = (c.due + Grain - 1) / Grain * Grain
	}
}

// epoch is the origin of the times a Ctx keeps: they are read from the
// monotonic clock alone (time.Since of a time that has a monotonic
// reading), which costs a fraction of time.Now's two clock reads.
var epoch = time.Now()

// now is the time since epoch.
func now() time.Duration { return time.Since(epoch) }

// End cancels c (its Err becomes context.Canceled unless it has already
// ended) and frees its timer.
func (c *Ctx) End() {
	c.mu.Lock()
	if c.state == live {
		c.endLocked(canceled)
	}
	c.mu.Unlock()
}

// endLocked ends c in state s: it closes Done (a shared one when it is
// due, or once no Ctx uses it), stops the timer and starts the AfterFunc
// functions, each in its own goroutine. c.mu is held.
func (c *Ctx) endLocked(s state) {
	c.state = s
	switch {
	case c.b != nil:
		if s == expired {
			c.ds.fire(c.b) // it is due, and so is every Ctx that shares it
		}
		c.ds.leave(c.b)
		c.b = nil
		c.done = closed // for a Done asked from now on
	case c.done != nil && c.done != closed:
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.first != nil {
		go c.first()
		c.first = nil
	}
	if c.more != nil {
		for i, f := range *c.more {
			if f != nil {
				go f()
				(*c.more)[i] = nil
			}
		}
	}
}

// expire ends c if its deadline has passed (its timer calls it).
func (c *Ctx) expire() {
	c.mu.Lock()
	if c.state == live && now() >= c.due {
		c.endLocked(expired)
	}
	c.mu.Unlock()
}

// Deadline implements context.Context. The time has a monotonic reading,
// which comparisons and time.Until use; its wall clock reading is
// epoch's plus the monotonic time since, so it is off by whatever the
// wall clock was stepped since the process started.
func (c *Ctx) Deadline() (time.Time, bool) { return epoch.Add(c.due), true }

// Done implements context.Context. The first call makes the channel and
// the timer that closes it at the deadline, or, if c has Deadlines, shares
// theirs. A shared channel is closed at the deadline, or earlier once
// every Ctx that shares it has ended: one given before End may stay open
// after it, until the deadline at most (End is for when the release has
// returned, and nobody waits on Done any more).
func (c *Ctx) Done() <-chan struct{} {
	c.mu.Lock()
	var done chan struct{}
	switch {
	case c.b != nil:
		done = c.b.done
	case c.done == nil && c.ds != nil && c.state == live && now() < c.due:
		c.b = c.ds.join(c.due)
		done = c.b.done
	default:
		if c.done == nil {
			c.makeDoneLocked()
		}
		done = c.done
	}
	c.mu.Unlock()
	return done
}

// makeDoneLocked makes the done channel and c's timer; c.mu is held.
func (c *Ctx) makeDoneLocked() {
	if c.state != live {
		c.done = closed
		return
	}
	c.done = make(chan struct{})
	c.armLocked()
}

// armLocked makes c's timer, or ends c if it is due; c.mu is held.
func (c *Ctx) armLocked() {
	if now() >= c.due {
		c.endLocked(expired)
	} else {
		c.timer = time.AfterFunc(c.due-now(), c.expire)
	}
}

// closed is a closed channel: the Done of a Ctx that had ended when asked.
var closed = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// Err implements context.Context. It answers from the deadline and End,
// without a channel or a timer: once the deadline is past it ends c (and
// closes Done, if made, shared or not) rather than wait for the timer.
func (c *Ctx) Err() error {
	c.mu.Lock()
	if c.state == live && now() >= c.due {
		c.endLocked(expired)
	}
	s := c.state
	c.mu.Unlock()
	return s.err()
}

// Value implements context.Context: the values of the caller's ctx, but
// not its cancellation, as context.WithoutCancel gives them (context.Cause
// of c, or of a context derived from it, is c's own Err, never the cause
// of the caller's ctx). It allocates nothing unless the key is an *int
// other than the context package's own key for its cancellation.
func (c *Ctx) Value(key any) any {
	if _, ok := key.(*int); ok { // the type of the context package's key
		if key == cancelKey {
			return nil // what WithoutCancel answers, without making one
		}
		return context.WithoutCancel(c.parent).Value(key)
	}
	return c.parent.Value(key)
}

// cancelKey is the key under which a context of the context package finds
// its closest cancellable ancestor (context.Cause, context.WithCancel and
// context.AfterFunc ask a parent for it), or nil if it could not be found
// out: Value then asks context.WithoutCancel for every *int key.
var cancelKey = findCancelKey()

// findCancelKey learns cancelKey from the first key context.Cause asks
// for, and checks it: a cancellable context answers it with itself.
func findCancelKey() any {
	p := &keyProbe{Context: context.Background()}
	_ = context.Cause(p)
	if _, ok := p.key.(*int); !ok {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if v, ok := ctx.Value(p.key).(context.Context); !ok || v != ctx {
		return nil
	}
	return p.key
}

// keyProbe is a cancelled context that records the first key asked of it.
type keyProbe struct {
	context.Context
	key any
}

func (p *keyProbe) Err() error { return context.Canceled }

func (p *keyProbe) Value(key any) any {
	if p.key == nil {
		p.key = key
	}
	return nil
}

// AfterFunc lets context.AfterFunc and contexts derived from c follow its
// end without a goroutine of their own: f runs, in its own goroutine, once
// c ends (at once if it has); stop unregisters it, as context.AfterFunc's
// does: it returns true if that kept f from running.
func (c *Ctx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.b != nil && c.timer == nil:
		c.armLocked() // c's Done is shared: a timer of its own ends c, and starts f, at the deadline
	case c.b == nil && c.done == nil:
		c.makeDoneLocked() // the timer, so that the deadline ends c even if nobody waits on Done
	}
	if c.state != live {
		go f()
		return stopped
	}
	if !c.firstUsed {
		c.first, c.firstUsed = f, true
		return c.stopFirst
	}
	if c.more == nil {
		c.more = new([]func())
	}
	i := len(*c.more)
	*c.more = append(*c.more, f)
	return func() bool { return c.stopMore(i) }
}

func stopped() bool { return false }

// stopFirst unregisters the first AfterFunc function.
func (c *Ctx) stopFirst() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := c.first != nil
	c.first = nil
	return ok
}

// stopMore unregisters the AfterFunc function more[i].
func (c *Ctx) stopMore(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := (*c.more)[i] != nil
	(*c.more)[i] = nil
	return ok
}

// Grain is the precision of the deadline of a Ctx with Deadlines: it is
// rounded up to a multiple of Grain, so that the Ctxs of one owner made in
// the same Grain share a done channel and a timer.
const Grain = time.Millisecond

// Deadlines lets Ctxs share their done channels, and the timers that close
// them: those with the same deadline (Init rounds it up to Grain) share
// one of each. A Guard's releases all have the same timeout, and many may
// run at once: they then make one channel and timer per Grain between
// them instead of one per release. Its zero value is ready to use; it must
// not be copied after first use.
type Deadlines struct {
	mu  sync.Mutex
	cur *bucket // the latest made, until it closes
}

// bucket is a done channel shared by the Ctxs of one deadline.
type bucket struct {
	at     time.Duration // the deadline, as a time since epoch
	done   chan struct{}
	timer  *time.Timer // closes done at the deadline
	users  int         // Ctxs that share it and have not ended
	closed bool        // done is closed
}

// join returns the bucket of deadline at (a multiple of Grain, still in
// the future), with one more user. It makes it if need be: a bucket that
// a later one replaces as the latest is closed once no Ctx uses it, and
// the latest one is kept for the next Ctx of its deadline even when none
// uses it (its timer then closes it at the deadline).
func (ds *Deadlines) join(at time.Duration) *bucket {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	b := ds.cur
	if b == nil || b.at != at || b.closed {
		nb := &bucket{at: at, done: make(chan struct{})}
		nb.timer = time.AfterFunc(at-now(), func() { ds.fire(nb) })
		if b == nil || b.closed || at > b.at {
			if b != nil && b.users == 0 {
				ds.closeLocked(b)
			}
			ds.cur = nb
		}
		b = nb
	}
	b.users++
	return b
}

// fire closes b's done channel, if not already closed: b is due.
func (ds *Deadlines) fire(b *bucket) {
	ds.mu.Lock()
	ds.closeLocked(b)
	ds.mu.Unlock()
}

func (ds *Deadlines) closeLocked(b *bucket) {
	if b.closed {
		return
	}
	b.closed = true
	close(b.done)
	b.timer.Stop()
	if ds.cur == b {
		ds.cur = nil
	}
}

// leave takes one user off b, and closes it when none is left, unless it
// is the latest.
func (ds *Deadlines) leave(b *bucket) {
	ds.mu.Lock()
	if b.users--; b.users == 0 && ds.cur != b {
		ds.closeLocked(b)
	}
	ds.mu.Unlock()
}
