package dlock

import "errors"

// Errors returned by dlock and its backends. Match them with errors.Is; the
// errors actually returned wrap these and name the lock.
var (
	// ErrNotAcquired reports that a lock was not acquired: held elsewhere
	// (TryDo, TryAcquire), or a wait ended because its ctx was done (then
	// the error matches ctx.Err() too).
	ErrNotAcquired = errors.New("dlock: lock not acquired")
	// ErrLockLost reports that a held lock was lost: the backend could no
	// longer guarantee ownership. It is the cause of Do's ctx cancellation.
	ErrLockLost = errors.New("dlock: lock lost")
	// ErrInvalidName reports a lock name that is empty or that the backend
	// cannot map into its namespace.
	ErrInvalidName = errors.New("dlock: invalid lock name")
	// ErrInvalidLimit reports a semaphore limit below 1.
	ErrInvalidLimit = errors.New("dlock: invalid semaphore limit")
	// ErrNilFunc reports a nil callback passed to Do or TryDo.
	ErrNilFunc = errors.New("dlock: nil function")
	// ErrNotHeld reports a Release of a lock that was already released.
	ErrNotHeld = errors.New("dlock: lock not held")
)
