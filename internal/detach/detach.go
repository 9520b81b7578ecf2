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
// be copied after Init.
//
// It is lazy: its deadline is fixed by Init, but its done channel and the
// timer that closes it are made only when someone asks for Done (a network
// client may; one that only checks Err does not, nor does a release made of
// local system calls). A context derived from it (context.WithCancel,
// context.AfterFunc) follows it through its AfterFunc method, without a
// goroutine of its own.
type Ctx struct {
	parent   context.Context // the caller's ctx: only its values are used
	deadline time.Time

	mu    sync.Mutex
	state state
	done  chan struct{} // made by the first Done; closed when it ends
	timer *time.Timer   // ends it at the deadline; made with done
	rare  *rare         // made by the first Value or AfterFunc
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

// rare is what a Ctx needs only for Value and AfterFunc, which a release
// seldom calls: kept apart so that a Ctx stays small.
type rare struct {
	detached context.Context    // parent without its cancellation
	after    context.Context    // cancelled when the Ctx ends
	stop     context.CancelFunc // after's cancel
}

// rareLocked returns c.rare, made on first call; c.mu is held.
func (c *Ctx) rareLocked() *rare {
	if c.rare == nil {
		c.rare = &rare{detached: context.WithoutCancel(c.parent)}
	}
	return c.rare
}

// Init makes c parent without its cancellation, ending at deadline.
func (c *Ctx) Init(parent context.Context, deadline time.Time) {
	c.parent, c.deadline = parent, deadline
}

// End cancels c (its Err becomes context.Canceled unless it has already
// ended) and frees its timer.
func (c *Ctx) End() {
	c.mu.Lock()
	if c.state == live {
		c.endLocked(canceled)
	}
	c.mu.Unlock()
}

// endLocked ends c in state s; c.mu is held.
func (c *Ctx) endLocked(s state) {
	c.state = s
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.rare != nil && c.rare.stop != nil {
		c.rare.stop() // starts the AfterFunc functions, each in its own goroutine
	}
}

// expire ends c at its deadline (its timer's function).
func (c *Ctx) expire() {
	c.mu.Lock()
	if c.state == live {
		c.endLocked(expired)
	}
	c.mu.Unlock()
}

// Deadline implements context.Context.
func (c *Ctx) Deadline() (time.Time, bool) { return c.deadline, true }

// Done implements context.Context. The first call makes the channel and
// the timer that closes it at the deadline.
func (c *Ctx) Done() <-chan struct{} {
	c.mu.Lock()
	if c.done == nil {
		c.done = make(chan struct{})
		switch d := time.Until(c.deadline); {
		case c.state != live:
			close(c.done)
		case d <= 0:
			c.endLocked(expired)
		default:
			c.timer = time.AfterFunc(d, c.expire)
		}
	}
	done := c.done
	c.mu.Unlock()
	return done
}

// Err implements context.Context. It answers from the deadline and End,
// without a channel or a timer: once the deadline is past it ends c (and
// closes Done, if made) rather than wait for the timer.
func (c *Ctx) Err() error {
	c.mu.Lock()
	if c.state == live && !time.Now().Before(c.deadline) {
		c.endLocked(expired)
	}
	s := c.state
	c.mu.Unlock()
	return s.err()
}

// Value implements context.Context: the values of the caller's ctx, but
// not its cancellation (context.Cause of c, or of a context derived from
// it, is c's own Err, never the cause of the caller's ctx).
func (c *Ctx) Value(key any) any {
	c.mu.Lock()
	d := c.rareLocked().detached
	c.mu.Unlock()
	return d.Value(key)
}

// AfterFunc lets context.AfterFunc and contexts derived from c follow its
// end without a goroutine of their own: f runs, in its own goroutine, once
// c ends (at once if it has); stop unregisters it, as context.AfterFunc's
// does.
func (c *Ctx) AfterFunc(f func()) (stop func() bool) {
	c.Done() // the timer, so that the deadline ends c even if nobody else waits
	c.mu.Lock()
	r := c.rareLocked()
	if r.after == nil {
		r.after, r.stop = context.WithCancel(context.Background())
		if c.state != live {
			r.stop()
		}
	}
	after := r.after
	c.mu.Unlock()
	return context.AfterFunc(after, f)
}
