package backend

import "errors"

// The errors of the lock contract, shared by the dlock package (which
// re-exports each under the same name: dlock.ErrLockLost is
// backend.ErrLockLost) and every backend. A backend returns them bare or
// wrapped with its own cause; the dlock package adds the lock's kind and
// name once. Match them with errors.Is.
var (
	// ErrNotAcquired reports that a lock was not acquired: held elsewhere
	// (a try), or a wait ended because its ctx was done (then the error
	// matches ctx.Err() too).
	ErrNotAcquired = errors.New("lock not acquired")
	// ErrLockLost reports that a held lock was lost: the backend could no
	// longer guarantee ownership.
	ErrLockLost = errors.New("lock lost")
	// ErrInvalidName reports a lock name that is empty or that the backend
	// cannot map into its namespace.
	ErrInvalidName = errors.New("invalid lock name")
	// ErrInvalidLimit reports a semaphore limit below 1.
	ErrInvalidLimit = errors.New("invalid semaphore limit")
	// ErrNotHeld reports a Release of a lock that was already released.
	ErrNotHeld = errors.New("lock not held")
	// ErrClosed reports a call on a backend that was closed. It is
	// permanent: a wait ends at once on it.
	ErrClosed = errors.New("backend closed")
	// ErrInvalidOption reports a backend constructor's invalid argument: an
	// option value out of range, a nil client or pool. Every backend's New
	// returns it (wrapped, naming the option and the value) rather than
	// clamping or ignoring the value.
	ErrInvalidOption = errors.New("invalid option")
)
