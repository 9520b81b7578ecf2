package backend

import "context"

// MultiLocker is implemented by a Locker that can take several names in one
// atomic attempt (one round trip, one statement, one script): every name is
// taken or none is, and no other client ever sees some of them taken by
// this attempt and not the others — or, where the server cannot promise
// that last part, only for the instant a competitor takes a name between
// the attempt's check and its grant, which the backend documents
// (PostgreSQL's advisory locks). The engine uses it for the first attempt
// of Guard.DoAll and friends and falls back to ordered single acquisitions
// when it finds a name busy and may wait.
type MultiLocker[L Lease] interface {
	// TryLockAll makes one attempt to take every lock of names (at least
	// two, sorted and without duplicates, none empty: checked by the
	// caller). It does not wait. When one of them is held elsewhere, or
	// others wait for it (a try does not jump the queue), it takes none
	// and returns busy, the index in names of such a name. Else it returns
	// one lease per name, in the order of names, each released and lost
	// on its own like TryLock's, and busy == -1. err != nil reports a
	// failure to find out; then nothing is held. An error matching
	// errors.ErrUnsupported says that this set of names has no atomic path
	// (names in several cluster slots, say): the engine then takes them one
	// after another.
	TryLockAll(ctx context.Context, names []string) (leases []L, busy int, err error)
}

// MultiRWLocker is MultiLocker for the two sides of an RWLocker.
type MultiRWLocker[L Lease] interface {
	// TryRLockAll is TryLockAll for reading (see RWLocker.TryRLock).
	TryRLockAll(ctx context.Context, names []string) (leases []L, busy int, err error)
	// TryWLockAll is TryLockAll for writing (see RWLocker.TryWLock).
	TryWLockAll(ctx context.Context, names []string) (leases []L, busy int, err error)
}

// MultiSemaphore is MultiLocker for a Semaphore: one ticket of each name,
// every name of limit limit.
type MultiSemaphore[L Lease] interface {
	// TryAcquireAll is TryLockAll for a ticket of each name (see
	// Semaphore.TryAcquire).
	TryAcquireAll(ctx context.Context, names []string, limit int) (leases []L, busy int, err error)
}

// MultiReleaser is implemented by a backend that can release several of its
// leases in one round trip (one script, one statement). The engine finds it
// by type assertion on the backend and uses it for LockSet.Release (the
// release of DoAll, TryDoAll and AcquireAll's sets).
type MultiReleaser[L Lease] interface {
	// ReleaseAll releases every lease of leases — each granted by this
	// backend, of any kind, and not released yet; the engine passes a set's
	// leases in reverse canonical order — as if Release were called on
	// each, and returns one error per lease, in order: nil when that lease
	// held its lock until it was released, else what Release would return
	// (wrapping ErrLockLost when the backend knows it was lost). Every
	// lease is released and its resources freed even when ctx is done or
	// an error is returned, as with Release. A backend with no one-trip
	// path for some of the leases (names in several cluster slots, leases
	// on several connections) releases those one by one. errs has
	// len(leases) entries.
	ReleaseAll(ctx context.Context, leases []L) (errs []error)
}
