// Package backend defines the small interfaces a lock backend implements.
//
// A backend is a set of one-attempt primitives (Locker, RWLocker, Semaphore),
// each returning a Lease when it acquires. Everything that is the same for
// every backend — waiting, retry pacing, context handling, running a
// callback, releasing on panic — lives in the dlock package's Guard, which
// finds a backend's optional capabilities (a native wait, a fencing token) by
// type assertion, the way io.Copy finds io.WriterTo.
//
// Contracts common to every method here:
//
//   - name is a non-empty string of arbitrary bytes (the caller has checked
//     that it is not empty). A backend maps it injectively into its own
//     namespace or returns an error wrapping ErrInvalidName; it never
//     reaches outside that namespace (a directory, a key prefix).
//   - A Mutex, an RWMutex and a Semaphore of the same name are different
//     locks: a backend keeps the three kinds in separate namespaces.
//   - A lock is never re-entrant: two acquisitions of one name exclude each
//     other even when they come from one goroutine, one client or one
//     connection.
//   - A method that returns a non-nil error holds nothing afterwards, even if
//     ctx ended while the server was granting the lock.
//   - ctx bounds the call; it does not bound the lease.
package backend

import (
	"context"
	"errors"
	"time"

	"github.com/dlock-go/dlock/internal/detach"
)

// Lease is one held lock.
type Lease interface {
	// Release gives the lock up. It returns nil only if the lock was held by
	// this lease until the moment it was released. Releasing a lease that was
	// lost returns an error (wrapping ErrLockLost when the backend
	// knows it was lost), and never disturbs another holder of the same
	// name. Release frees every resource of the lease (goroutines,
	// connections, file descriptors) even when it returns an error, and even
	// when ctx is already done; it is called at most once.
	Release(ctx context.Context) error

	// Lost returns a channel that is closed when the backend can no longer
	// guarantee that this lease holds its lock: the connection that held it
	// died, the key was deleted or could not be extended in time, the lock
	// file was removed. For leases with a server-side expiry, the channel is
	// closed before the server could grant the lock to anyone else. The
	// channel is also closed by Release. It returns the same channel on every
	// call.
	Lost() <-chan struct{}
}

// Locker is an exclusive lock (a mutex).
type Locker[L Lease] interface {
	// TryLock makes one attempt to take the lock name. It does not wait for
	// a holder: if the lock is held elsewhere it returns ok == false and a
	// nil error. err != nil reports a failure to find out (bad input, a
	// server error); then nothing is held.
	TryLock(ctx context.Context, name string) (lease L, ok bool, err error)
}

// RWLocker is a reader-writer lock: many readers together, or one writer.
type RWLocker[L Lease] interface {
	// TryRLock makes one attempt to take name for reading. It fails
	// (ok == false) while a writer holds name or waits for it in
	// RWWaiter.WLock.
	TryRLock(ctx context.Context, name string) (lease L, ok bool, err error)

	// TryWLock makes one attempt to take name for writing. It fails while
	// anyone holds name.
	TryWLock(ctx context.Context, name string) (lease L, ok bool, err error)
}

// Semaphore is a counting semaphore: at most limit holders of one name.
type Semaphore[L Lease] interface {
	// TryAcquire makes one attempt to take one of the limit tickets of
	// name (limit >= 1, checked by the caller). Each backend documents what
	// happens when holders of one name disagree on limit.
	TryAcquire(ctx context.Context, name string, limit int) (lease L, ok bool, err error)
}

// LockWaiter is implemented by a Locker that can wait for a lock natively:
// block server-side, or be told of a release instead of polling.
//
// Native waits (LockWaiter, RWWaiter, SemaphoreWaiter) serve their waiters
// first come, first served across clients and processes — a waiter that
// began waiting before another is granted before it — unless the backend
// documents that it does not (the conformance suite checks it unless the
// Harness is marked Unordered);
// a waiter that gives up leaves the queue at once, and a try fails while
// others wait (it does not jump the queue). Every native wait must keep
// any client from starving. The engine's polling, for a backend without a
// native wait, promises neither.
type LockWaiter[L Lease] interface {
	// Lock waits until it takes name or ctx is done. When ctx ends first it
	// returns an error wrapping ctx.Err() and holds nothing.
	Lock(ctx context.Context, name string) (L, error)
}

// RWWaiter is implemented by an RWLocker that can wait natively. It is how a
// backend gives writers preference: while WLock waits for name, TryRLock and
// RLock of name must fail or wait, so a stream of readers cannot starve a
// writer. The dlock conformance suite (dlocktest) requires it of every
// RWLocker.
type RWWaiter[L Lease] interface {
	// RLock waits until it takes name for reading or ctx is done.
	RLock(ctx context.Context, name string) (L, error)
	// WLock waits until it takes name for writing or ctx is done.
	WLock(ctx context.Context, name string) (L, error)
}

// SemaphoreWaiter is implemented by a Semaphore that can wait natively.
type SemaphoreWaiter[L Lease] interface {
	// Acquire waits until it takes a ticket of name or ctx is done.
	Acquire(ctx context.Context, name string, limit int) (L, error)
}

// LostChecker is implemented by a Lease that makes its Lost channel only
// when asked for it: the engine then asks IsLost where it would only peek
// at the channel (at Release, in Lock.Err), so that the channel is never
// made for a lock whose loss nobody waits for.
type LostChecker interface {
	// IsLost reports whether Lost's channel is closed — or would be, were
	// it made now.
	IsLost() bool
}

// LossNotifier is implemented by a Lease that can call a function when it
// is lost, the way context.AfterFunc does for a context, so that the
// engine needs no goroutine watching Lost while Do's function runs.
type LossNotifier interface {
	// AfterLost arranges for f to run, in its own goroutine, once Lost is
	// closed (at once if it already is). Calling stop unregisters f: it
	// returns true if that kept f from running, false if f has already
	// been started (or stop was called before).
	AfterLost(f func()) (stop func() bool)
}

// Fencer is implemented by a Lease that carries a fencing token.
type Fencer interface {
	// Token returns the lease's fencing token: for each name (and kind of
	// lock), tokens are strictly increasing across all acquisitions by all
	// clients and processes, in the order the acquisitions took effect. A
	// downstream service that remembers the largest token it has seen can
	// refuse writes from a holder whose lock has since passed to another.
	// Zero means this lease has no token (fencing is off).
	Token() uint64
}

// Permanent marks err as an error that retrying cannot heal: bad
// configuration, failed authentication, a closed backend, an invalid name.
// A wait (the dlock package's Do and Acquire) rides out every other error of
// a backend's attempt — a refused connection, a reset, a server restarting —
// by trying again with backoff until its ctx ends; an error marked
// Permanent ends the wait at once. errors.Is and errors.As see through the
// mark to err. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// ReleaseContext returns the context a Lease's Release uses for its work:
// ctx without its cancellation (a caller whose ctx is already cancelled
// still releases) but with its deadline, which bounds the release. The
// dlock package's Lock.Release always passes a ctx whose deadline is the
// Guard's release timeout (dlock.WithReleaseTimeout), so that timeout is
// the one bound on a release; fallback bounds a Release called directly
// with a ctx that has no deadline. The caller must call cancel.
func ReleaseContext(ctx context.Context, fallback time.Duration) (rctx context.Context, cancel context.CancelFunc) {
	if _, ok := ctx.(*detach.Ctx); ok {
		return ctx, func() {} // already detached and bounded: no second context
	}
	if dl, ok := ctx.Deadline(); ok {
		return context.WithDeadline(context.WithoutCancel(ctx), dl)
	}
	return context.WithTimeout(context.WithoutCancel(ctx), fallback)
}

// DetachedContext returns ctx without its cancellation, bounded by timeout:
// the ctx the dlock package's Lock.Release passes to a Lease's Release.
// ReleaseContext hands such a ctx back as it is, so a release makes one
// context, not two. The caller must call cancel.
//
// The context is lazy: its deadline is fixed now, but its done channel is
// made only if a Release asks for Done (a network call may; one that only
// checks Err does not, nor does a release made of local system calls),
// with the timer that closes it at the deadline: a release costs one small
// allocation, and three more if it asks for Done. Contexts derived from it
// follow it without a goroutine of their own.
func DetachedContext(ctx context.Context, timeout time.Duration) (rctx context.Context, cancel context.CancelFunc) {
	c := new(detach.Ctx)
	c.Init(ctx, timeout, nil)
	return c, c.End
}

// ReleaseDetached calls release with DetachedContext(ctx, timeout) and
// cancels that context when release returns. It is what the dlock
// package's Lock.Release does (which keeps the context in the Lock's own
// memory); it costs one small allocation when release never asks the
// context for Done (DetachedContext's cancel function costs another).
func ReleaseDetached(ctx context.Context, timeout time.Duration, release func(context.Context) error) error {
	c := new(detach.Ctx)
	c.Init(ctx, timeout, nil)
	defer c.End()
	return release(c)
}
