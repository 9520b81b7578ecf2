// Package pg is the PostgreSQL backend of dlock: mutexes, reader-writer
// mutexes and semaphores over PostgreSQL advisory locks, on connections
// taken from the caller's pgx pool.
//
//	pool, _ := pgxpool.New(ctx, url)
//	b := pg.New(pool)
//	defer b.Close()
//	mu := dlock.NewMutex(b)
//	err := mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
//		return build(ctx) // ctx is cancelled, cause dlock.ErrLockLost, on loss
//	})
//
// # Names and keys
//
// A lock name (any non-empty bytes, any length) maps to a bigint advisory
// key: the first 8 bytes of SHA-256 over a kind tag and the name
// ("dlock:mutex:", "dlock:rw:", "dlock:sem:<slot>:"), so a Mutex, an
// RWMutex and a Semaphore of one name are different locks. The mapping is
// stable: it never changes between versions, and MutexKey and RWKey expose
// it. Two names share a key only by a hash collision: with n names in use
// at once, the odds are about n²/2⁶⁵ (one in 37 billion for a million
// names). A collision can never give one lock two holders; it only makes
// two names exclude each other (and a holder of one waiting for the other
// would wait for itself). SHA-256, unlike FNV, also resists names chosen to
// collide.
//
// Code that already uses advisory locks by number addresses them through
// Backend.Keys, whose names are keys as Key.String writes them ("42" for
// Int64Key(42), "1,2" for PairKey(1, 2); PostgreSQL keeps the two forms in
// separate key spaces). These are exactly the locks of pg_advisory_lock(42)
// and pg_advisory_lock(1, 2), shared with any SQL that takes them.
//
// # Connections
//
// A held lock is a session-level advisory lock on a lock connection: a
// pool connection the backend holds (acquired, not hijacked, so the pool's
// MaxConns counts it) for as long as it holds a lease, and gives back to
// the pool as soon as it holds none, its session then holding no lock. A
// release runs pg_advisory_unlock with context.WithoutCancel and a timeout
// (WithOpTimeout); if the unlock cannot be confirmed, the connection is
// closed instead of returned (ending the session frees its locks). So a
// session lock never goes back into the pool, which does not reset
// sessions.
//
// Many leases share few connections: a try (TryLock, and the first attempt
// of a wait) runs on an existing lock connection, spread over up to
// WithMaxLockConns connections when tries run concurrently and up to
// WithMaxLeasesPerConn leases each (PostgreSQL's per-transaction cost
// grows with the locks a session holds); 5,000 held locks use about 10
// connections, or fewer if the pool has no more to give. A wait that must
// queue on the server runs on a connection of its own, never on a shared
// one, so it never delays the release of another lease; once granted, that
// connection becomes a lock connection like the others. The pool needs a
// connection per concurrent queued mutex or RW wait, one for all the
// semaphore waits (see Semaphores), plus the lock connections.
//
// PostgreSQL's advisory locks are re-entrant within a session. dlock's are
// not: the backend records which keys each of its sessions holds and never
// takes a key again on a session that holds it. A second exclusive
// acquisition of a name the backend holds fails its try at once and waits
// on the server on another session; two readers of one name sit on two
// sessions (so a waiting writer also holds back this process's readers).
//
// The server's lock table is shared by all sessions and has
// max_locks_per_transaction × (max_connections + max_prepared_transactions)
// entries: 64 × 100 = 6,400 at default settings. Past it, an acquisition
// fails with SQLSTATE 53200, "out of shared memory" (hint: "You might need
// to increase max_locks_per_transaction"), which the backend returns
// wrapped; raise max_locks_per_transaction to hold more locks at once.
//
// A lock connection must reach one PostgreSQL session for its life: behind
// PgBouncer, use session pooling (transaction pooling breaks session
// locks).
//
// # Waiting
//
// Waits queue in the server's lock queue, so a waiter gets the lock within
// about one round trip of its release. The blocking pg_advisory_lock runs
// with SET LOCAL lock_timeout (from ctx's deadline) and statement_timeout =
// 0 inside its statement's own implicit transaction, so no setting reaches
// the session. When ctx ends, the backend sends the server a cancel
// request (cancelling the server-side wait), waits for the statement to
// end, and then, whatever the outcome, unlocks the key before the
// connection goes back to the pool: a grant can land just as the wait is
// cancelled, even within the cancelled statement, and is never reported as
// "not acquired" while held.
//
// RW locks are shared (readers) and exclusive (writers) advisory locks of
// one key. PostgreSQL's lock queue gives writers preference: while an
// exclusive request waits, new shared requests conflict with it, so
// TryRLock fails and RLock queues behind the writer.
//
// # Semaphores
//
// A semaphore of limit n is n slot keys derived from its name, and needs no
// table. A try takes the first free slot in one statement (a CASE that
// stops at the first pg_try_advisory_lock that succeeds); limit may be 1 to
// MaxSemaphoreLimit. A release runs pg_notify('dlock_sem', <the
// semaphore's key>) in the statement of its unlock, so in the same round
// trip. Acquire, while every slot is busy, waits for such a notification:
// a Backend with waiting acquisitions keeps one listener connection
// (LISTEN dlock_sem) whatever their number, wakes one waiter of the
// semaphore per notification, and the waiter tries again — a hand-off of
// about one round trip after the release, with no connection held per
// waiter. Slots freed without a notification (a holder whose session died,
// a release by other code) are found by a fallback poll (50ms growing to
// 500ms). The listener connection is closed, not returned to the pool,
// when no acquisition has waited for a loss interval. Holders with
// different limits: a holder
// with limit n only uses slots 0..n-1, so at most the largest limit in use
// hold the name at once, and a smaller limit is never exceeded by its own
// users, though holders with a larger limit may take its slots. Use one
// limit per name.
//
// # Transactions
//
// LockTx, TryLockTx, RLockTx and TryRLockTx take a lock inside the caller's
// own pgx.Tx (pg_advisory_xact_lock): the commit or rollback releases it,
// so work that must be atomic with the lock commits with its release. Keys
// from MutexKey and RWKey exclude the backend's locks of the same name.
//
// # Loss
//
// One monitor goroutine per backend, running while it has lock
// connections, pings each idle lock connection every half loss interval
// (WithLossInterval, default 1s), each ping bounded by the other half. When
// a connection dies (pg_terminate_backend, a server restart, a network
// cut) every lease on it reports loss: Lost closes and Do's ctx is
// cancelled with cause dlock.ErrLockLost, within about the loss interval —
// or within the op timeout when a query was in flight on a silent network.
// A lease whose session ended before the monitor noticed learns it at
// Release: Release returns nil only when the session confirmed the unlock;
// an unlock that fails (the session is gone), times out or finds the lock
// not held closes the connection, every lease on it reports loss at once,
// and Release returns an error matching dlock.ErrLockLost (so Do returns
// one too). PostgreSQL frees a session's locks the moment the session
// ends, before any client can know: fencing tokens (below) are the answer
// to the work a holder does in that gap.
// The pings also keep lock sessions from ever being idle for longer than
// half the interval, so idle_session_timeout never ends a session holding
// locks (keep it above half the interval).
//
// # Fencing
//
// WithFencing gives every lease a fencing token (Lease.Token), strictly
// increasing per lock across all clients: the acquisition statement also
// bumps a row of a small table the backend creates itself, in the same
// round trip, while the lock is held.
//
// # Close
//
// Close stops the monitor and closes any lock connection still held, which
// frees its locks on the server; leases still held then report loss.
// Release leases before Close to give their connections back to the pool.
package pg
