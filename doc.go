// Package dlock provides distributed locks — a mutex, a reader-writer mutex
// and a counting semaphore — over PostgreSQL (package pg), Valkey or Redis
// (package valkey) and the local file system (package fs), so that a job, a
// migration or a critical section runs in one place at a time across
// goroutines, processes and machines.
//
// # Model
//
// A backend makes one attempt at a time to take a named lock and returns a
// lease when it succeeds. A Guard turns those attempts into waiting, runs
// code under the lock and releases it:
//
//	mu := dlock.NewMutex(fsBackend) // or pg.New(pool), valkey.New(client)
//	err := mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
//		return build(ctx) // ctx is cancelled, cause ErrLockLost, if the lock is lost
//	})
//
// Do waits until the lock is free or ctx is done: a deadline on ctx is the
// timeout, and there is no other. TryDo makes a single attempt. Acquire and
// TryAcquire return a held *Lock for code that is not shaped like a
// closure (leader election, a lock held across requests); it has Release,
// Lost, Err (why Lost closed: lost or released) and, where the backend
// offers one, a fencing Token.
//
// NewRWMutex gives a reader-writer mutex whose Read and Write sides are
// Guards, and whose Upgradeable side is a reader that can become the writer
// without letting go (Lock.Upgrade); NewSemaphore a semaphore with a limit.
// A Mutex, an RWMutex and a Semaphore with the same name are different
// locks.
//
// DoAll, TryDoAll, AcquireAll and TryAcquireAll take several names all or
// none, in one canonical order, so that overlapping sets never deadlock; a
// backend with an atomic path for several names (backend.MultiLocker) takes
// them in one attempt, and one that can release several at once
// (backend.MultiReleaser) gives a set up in one round trip. Holders lists who holds a name — host, process,
// since when, the owner text given with WithOwner — without taking it.
//
// # Guarantees
//
// Every backend passes the conformance suite in package dlocktest, which
// checks these:
//
//   - At most one holder of a mutex name (limit holders of a semaphore
//     name; readers or one writer of an RWMutex name) at a time, across
//     goroutines, guards, clients and processes. Locks are not re-entrant:
//     a second acquisition of a held name waits, even from the same
//     goroutine.
//   - Names are byte strings; names that differ in any byte are different
//     locks. The empty name is refused with ErrInvalidName, and no name can
//     reach outside the backend's directory or key prefix.
//   - A try never waits — not for a holder, and not for a connection or
//     other resource of the backend, also when many goroutines try at once
//     on one backend instance. A server error ends a try at once.
//   - A wait ends when the lock is taken or ctx is done. It rides out
//     transient server and connection errors (a server restarting, a reset
//     connection, a refused connect): it tries again, paced by jittered
//     capped backoff, until ctx ends. Errors that cannot heal (an invalid
//     name, failed authentication, a closed backend: see
//     backend.Permanent) end it at once. A wait ended by ctx returns an
//     error matching both ErrNotAcquired and ctx.Err(), wrapping the last
//     server error it rode out if there was one, and holds nothing
//     afterwards — also when the backend granted the lock just as ctx ended
//     (it is released at once).
//   - Release frees the lock for a waiter. Releasing twice returns
//     ErrNotHeld; releasing a lost lock returns ErrLockLost, also when the
//     backend learns of the loss only during the release; neither disturbs
//     the lock's next holder. Lock.Err tells afterwards which way the lock
//     ended. Do releases when fn returns and when it panics, and a release
//     runs even when ctx is already cancelled. WithReleaseTimeout is the one
//     bound on a release: it is the deadline of the backend's release
//     work, whatever the caller's ctx.
//   - Loss is reported: when the backend can no longer guarantee ownership
//     (the connection holding it died, the key expired or was deleted, the
//     lock file was removed), Lost is closed and Do's ctx is cancelled with
//     a cause matching ErrLockLost. Leases with a server-side expiry learn
//     of the loss before the server could let anyone else in.
//   - A holder process that dies frees its locks: at once for files and
//     PostgreSQL, within the lease time for Valkey.
//   - Readers share, a writer excludes everyone, and once a writer waits,
//     new readers wait too, so writers do not starve.
//   - Waiters are served in arrival order across clients and processes,
//     and a try does not jump that queue: on files, PostgreSQL, a Valkey
//     node and a Valkey Cluster (dlocktest checks it for every backend
//     whose Harness is not marked Unordered). RedLock promises only that no
//     client starves. A custom backend without a native wait is polled
//     with backoff, which promises no order.
//   - Fencing tokens, where offered, strictly increase per name across all
//     acquisitions, so a store can refuse a stale holder's writes.
//
// A lock held by a process that stops running (a long GC pause, SIGSTOP)
// can still expire under it on a lease backend; that is the case fencing
// tokens exist for.
//
// # Choosing a backend
//
//   - fs: processes on one machine. No server; locks are flock(2)s on files
//     in a directory, freed by the kernel when a holder dies.
//   - pg: processes that already share a PostgreSQL database. Session
//     advisory locks, freed by the server when the holding connection
//     dies; transaction-scoped locks for work inside a pgx.Tx.
//   - valkey: processes that share a Valkey or Redis server or cluster,
//     or several independent servers (RedLock). Leases that expire unless
//     extended, extended in the background while held.
//   - dlocktest.Memory: one process; for tests of code that uses dlock.
//
// Errors name the lock and wrap the sentinels below; match them with
// errors.Is. dlock logs nothing unless given a logger (WithLogger).
package dlock
