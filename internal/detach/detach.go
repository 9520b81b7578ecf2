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

	mu       sync.Mutex
	err      error           // nil until it ends: context.Canceled or context.DeadlineExceeded
	done     chan struct{}   // made by the first Done; closed when it ends
	timer    *time.Timer     // ends it at the deadline; made with done
	detached context.Context // parent without its cancellation, made by the first Value
	after    context.Context // made by the first AfterFunc; cancelled when it ends
	stop     context.CancelFunc
}

// Init makes c parent without its cancellation, ending at deadline.
func (c *Ctx) Init(parent context.Context, deadline time.Time) {
	c.parent, c.deadline = parent, deadline
}

// End cancels c (its Err becomes context.Canceled unless it has already
// ended) and frees its timer.
func (c *Ctx) End() {
	c.mu.Lock()
	if c.err == nil {
		c.endLocked(context.Canceled)
	}
	c.mu.Unlock()
}

// endLocked ends c with err; c.mu is held.
func (c *Ctx) endLocked(err error) {
	c.err = err
	if c.done != nil {
		close(c.done)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.stop != nil {
		c.stop() // starts the AfterFunc functions, each in its own goroutine
	}
}

// expire ends c at its deadline (its timer's function).
func (c *Ctx) expire() {
	c.mu.Lock()
	if c.err == nil {
		c.endLocked(context.DeadlineExceeded)
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
		case c.err != nil:
			close(c.done)
		case d <= 0:
			c.endLocked(context.DeadlineExceeded)
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
	if c.err == nil && !time.Now().Before(c.deadline) {
		c.endLocked(context.DeadlineExceeded)
	}
	err := c.err
	c.mu.Unlock()
	return err
}

// Value implements context.Context: the values of the caller's ctx, but
// not its cancellation (context.Cause of c, or of a context derived from
// it, is c's own Err, never the cause of the caller's ctx).
func (c *Ctx) Value(key any) any {
	c.mu.Lock()
	if c.detached == nil {
		c.detached = context.WithoutCancel(c.parent)
	}
	d := c.detached
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
	if c.after == nil {
		c.after, c.stop = context.WithCancel(context.Background())
		if c.err != nil {
			c.stop()
		}
	}
	after := c.after
	c.mu.Unlock()
	return context.AfterFunc(after, f)
}
