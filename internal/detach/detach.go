// Package detach is the context a lease's release runs under: the caller's
// ctx without its cancellation, bounded by a deadline of its own (see
// backend.DetachedContext). It lives apart from package backend so that
// the dlock package's Lock can keep one in its own memory: a release then
// allocates no context at all until the backend asks for Done.
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
func (c *Ctx) Init(parent context.Context, timeout time.Duration) {
	c.parent, c.due = parent, now()+timeout
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

// endLocked ends c in state s: it closes Done, stops the timer and starts
// the AfterFunc functions, each in its own goroutine. c.mu is held.
func (c *Ctx) endLocked(s state) {
	c.state = s
	if c.done != nil {
		close(c.done)
		if c.timer != nil {
			c.timer.Stop()
		}
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
// the timer that closes it at the deadline.
func (c *Ctx) Done() <-chan struct{} {
	c.mu.Lock()
	if c.done == nil {
		c.makeDoneLocked()
	}
	done := c.done
	c.mu.Unlock()
	return done
}

// makeDoneLocked makes the done channel and c's timer; c.mu is held.
func (c *Ctx) makeDoneLocked() {
	c.done = make(chan struct{})
	switch {
	case c.state != live:
		close(c.done)
	case now() >= c.due:
		c.endLocked(expired)
	default:
		c.timer = time.AfterFunc(c.due-now(), c.expire)
	}
}

// Err implements context.Context. It answers from the deadline and End,
// without a channel or a timer: once the deadline is past it ends c (and
// closes Done, if made) rather than wait for the timer.
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
	if c.done == nil {
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
