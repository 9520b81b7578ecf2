// Package pg is the PostgreSQL backend of dlock: mutexes, reader-writer
// mutexes and semaphores over PostgreSQL advisory locks, on connections
// taken from the caller's pgx pool.
//
//	pool, _ := pgxpool.New(ctx, url)
//	b, err := pg.New(pool) // an error only for a nil pool or a bad option
//	if err != nil {
//		return err
//	}
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
// the pool as soon as it holds none, its session then holding no lock. If
// an unlock cannot be confirmed, the connection is closed instead of
// returned (ending the session frees its locks). So a session lock never
// goes back into the pool, which does not reset sessions.
//
// Many leases share few connections: a try (TryLock, and the first attempt
// of a wait) runs on an existing lock connection, spread over up to
// WithMaxLockConns connections when tries run concurrently and up to
// WithMaxLeasesPerConn leases each (PostgreSQL's per-transaction cost
// grows with the locks a session holds); 5,000 held locks use about 10
// connections, or fewer if the pool has no more to give. A wait that must
// queue on the server runs on a connection of its own, never on a shared
// one, so it never delays the release of another lease; once granted, that
// connection becomes a lock connection like the others. A wait skips its
// first try when the try would all but surely fail: this backend holds the
// name in a conflicting mode, queues for it, or (a mutex or writer) is
// trying it already. So a burst of 32 waits for one name held elsewhere
// sends one try and queues on 33 pool connections, not 64
// (TestBurstOfWaitsTriesOnce).
//
// The tries and unlocks that goroutines queue on one lock connection at
// the same time are sent together, when neither fencing nor holder
// records are on (for unlocks: nor a semaphore's waiters to notify, nor
// an upgrade key): the next goroutine to take the connection sends all of
// them as one statement, which runs them in arrival order (an unnest of
// their functions and keys), one round trip and one transaction of the
// server for all. Each caller gets the outcome its statement would have
// had alone: the advisory lock functions are not transactional, so when
// the combined statement fails on a session that lives on (an error
// raised by one of them), the backend reads from pg_locks which of the
// keys the session holds now, settles each call from that, and runs again,
// one by one, those that may not have run. 32 goroutines taking and
// releasing locks of their own over one lock connection ran 1,920 locks in
// 222 transactions instead of 3,840 (TestSharedConnectionCombines). A
// lone try or unlock runs its own prepared statement, as before.
//
// A try never waits for a connection, and a wait never waits for one that
// this backend holds. The backend takes a connection from the pool only
// when the pool can give one at once (its acquired connections, those
// being constructed and those this backend is acquiring are fewer than
// MaxConns); a connection it is acquiring is shared at once by concurrent
// tries rather than matched by more. When the pool has none to give, a try
// runs on an existing lock connection, queued behind the statements in
// flight there (64 concurrent tries of free names over a pool of
// MaxConns 2 take one connection, the slowest a few tens of milliseconds);
// spreading tries over more connections always leaves one for a wait. If
// there is no lock connection either — the application's own work holds
// the whole pool — a try fails at once (within about 20ms: pgx's pool
// counts a connection it is still destroying as in use, so a full pool
// gets that long to free a place) with an error matching ErrNoConnection
// that says so, and a wait keeps trying until its ctx ends. A wait with
// no connection for the server's queue polls with tries (5ms growing to
// 200ms, jittered) instead; while a writer waits that way, this backend's
// readers of the name hold back, as the server's queue would make them.
// So the pool may be small: MaxConns 2 passes the whole conformance suite.
//
// Connecting is bounded by the caller's ctx, and its errors name the
// server's host:port. A server that accepts connections and never answers
// holds a call no longer than its ctx; pgx's pool goes on constructing
// such a connection in the background, holding a place in the pool, until
// it fails, so set connect_timeout in the pool's URL to bound that too.
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
// about one round trip of its release, in arrival order (see Ordering;
// unless the pool had no connection for the wait: see Connections). The
// blocking pg_advisory_lock runs with a local lock_timeout (from ctx's
// deadline) inside its statement's own implicit transaction, so no setting
// reaches the session; on a session with a statement_timeout (which would
// cut the wait short) the wait also sets a local statement_timeout = 0, in
// one batch with the lock. When ctx ends, the backend sends the server a
// cancel request (cancelling the server-side wait), waits for the statement to
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
// # Upgradeable read locks
//
// RWMutex.Upgradeable (TryULock, ULock) takes a name as its upgradeable
// reader: it holds RWKey(name) shared, like a reader, plus the name's
// upgrade key (SHA-256("dlock:rwu:" + name)) exclusive, so there is one at
// most. Writers take the upgrade key too, first, and let it go in the same
// statement once they hold RWKey(name): while an upgradeable reader holds
// the name no writer gets in or even queues for RWKey(name). (So a
// writer that waits for an upgradeable reader, not for plain readers, does
// not hold new readers back.) A writer's try is still one prepared
// statement, of three advisory calls instead of one.
//
// Lock.Upgrade first tries on the lease's own session (the exclusive lock
// of a key whose shared lock the session holds is granted when no other
// session holds it; the statement then lets go of the shared lock and the
// upgrade key). When readers are in, it queues pg_advisory_lock on a pool
// connection of its own, as a wait does (never a blocking statement on a
// shared lock connection), and once pg_locks shows that request waiting,
// the lease's session lets go of its shared lock: new readers queue
// behind the request (writer preference) and writers are kept out by the
// upgrade key, so the name passes from the readers already in straight to
// the upgrade. Once granted, the lease moves to that connection and the
// old session lets go of the upgrade key. When ctx ends first the request
// is cancelled on the server and the lease's session takes its shared lock
// back: it is the upgradeable reader again. A loss of its session while it
// waits cancels the request and Upgrade returns an error matching
// dlock.ErrLockLost. An upgraded lease keeps its fencing token. Upgrade
// needs a pool connection while it waits (ErrNoConnection, retried by
// dlock until ctx ends, when the pool has none). Processes that share
// names must all run a version of this package that knows the upgrade key
// (earlier writers did not take it), and transaction-scoped write locks of
// RWKey(name) (LockTx) do not take it: they can get in between an
// upgrade's release of the shared lock and its grant.
//
// # Semaphores
//
// A semaphore of limit n is n slot keys derived from its name, plus a
// queue key, and needs no table. A try takes the first free slot in one
// statement (a CASE that stops at the first pg_try_advisory_lock that
// succeeds); limit may be 1 to MaxSemaphoreLimit. Acquire, when no slot
// is free, queues on the server: a blocking pg_advisory_lock of the queue
// key, on a pool connection of its own. The waiter that holds the queue
// key (the head) alone waits for a slot: it runs LISTEN dlock_sem on its
// connection, and a release runs pg_notify('dlock_sem', <the semaphore's
// key>) in the statement of its unlock, so the head tries again about one
// round trip after a release. Slots freed without a notification (a holder
// whose session died, a release by other code) are found by a fallback
// poll (50ms growing to 500ms). The statement that takes a slot also
// unlocks the queue key, which the server hands to the next waiter at
// once, and the connection stops listening before it becomes a lock
// connection. So a semaphore waiter holds a pool connection while it
// waits, as a mutex waiter does. Holders with different limits: a holder
// with limit n only uses slots 0..n-1, so at most the largest limit in
// use hold the name at once, and a smaller limit is never exceeded by its
// own users, though holders with a larger limit may take its slots. Use
// one limit per name.
//
// # Ordering
//
// Waits are served in the order they reach the server, across clients and
// processes: a mutex, RW or Keys wait queues in PostgreSQL's lock queue of
// its key, a semaphore wait in the lock queue of the semaphore's queue
// key, and PostgreSQL grants a lock to its waiters first come, first
// served (with writer preference for RW locks: readers that queued before
// a waiting writer go first, readers that come after it wait behind it). A
// try never jumps the queue: a try of a lock that has waiters fails, even
// when the lock is free at that instant — PostgreSQL refuses a conditional
// lock request that conflicts with a queued one, and a semaphore try
// takes the queue key shared and lets it go in the statement of its slot
// tries, which fails while anyone queues; a try of a key that a wait of
// the same Backend queues for fails at once, with no round trip. A waiter
// whose ctx ends leaves the queue at once (the server cancels its
// request), and one whose process dies leaves it with its session, so
// neither holds back the waiters behind it. The promise needs a connection
// per waiter: a wait for which the pool has no connection to give polls
// with tries (see Connections), which win only while nobody queues, and
// is served in no particular order.
//
// # Several names at once
//
// Guard.DoAll, TryDoAll, AcquireAll and TryAcquireAll take several names
// in one attempt (TryLockAll, TryRLockAll, TryWLockAll, TryAcquireAll):
// one statement on one lock connection whose session holds none of the
// set's keys. The statement first reads pg_locks once and finds the first
// name that another session holds or waits for in a conflicting mode (a
// semaphore: one with a waiter, or with every slot taken); only when there
// is none does it try each name in turn, nested so that a failure lets go,
// in the same statement, of those taken before it. So a set that is busy
// takes none of its names, not even for a moment, and a try never jumps
// queued waiters; only a competitor that takes a name of the set in the
// microseconds between the look and the tries can see another name of
// the set held for that moment, after which the statement lets it go.
// Each name gets its own lease (released, and lost, on its own), its own
// fencing token and holder record, written in the same statement. Without
// fencing and holder records the statement of a mutex or RW set is
// prepared once per connection, kind and size. Measured against the same
// number of single TryAcquire calls in sequence, acquisition and release
// of every lease included (BenchmarkTryAcquireAll, 3 interleaved rounds,
// loaded 2-core machine): 2 names 1.5 to 1.9 times as long (the look at
// pg_locks costs more than the round trips saved), 8 names 0.38 to 0.45,
// 32 names 0.19 to 0.22. A set is released (LockSet.Release, through
// Backend.ReleaseAll) by one statement per lock connection its leases sit
// on — one for a set taken in one attempt — which unlocks every key and
// deletes every holder-table row; before it released one lease per
// statement, and the ratios were 1.36 to 1.44, 0.76 to 0.87 and 0.61 to
// 0.66. A set whose names share an advisory key (a hash collision) has no
// atomic path: it is taken one name after another.
//
// # Transactions
//
// LockTx, TryLockTx, RLockTx and TryRLockTx take a lock inside the caller's
// own pgx.Tx (pg_advisory_xact_lock): the commit or rollback releases it,
// so work that must be atomic with the lock commits with its release. Keys
// from MutexKey and RWKey exclude the backend's locks of the same name.
//
// # Errors and retries
//
// A wait (dlock's Do and Acquire over Lock, RLock, WLock, Acquire) rides
// out errors that can heal: a refused or reset connection, a server
// restarting or down for a while, a session ended under it. dlock tries
// again with backoff until the lock is taken or ctx ends, and then returns
// an error matching dlock.ErrNotAcquired and ctx.Err() that wraps the last
// server error. A try reports such an error at once — except that a try
// that lands on a pooled connection whose session the server ended while
// it sat idle (SQLSTATE 57P01 after pg_terminate_backend, or a connection
// already closed) runs again on another connection: an ended session
// holds nothing, so that is safe. Errors that cannot heal are marked
// backend.Permanent and end a wait at once: a closed Backend
// (backend.ErrClosed), a zero Backend (not made by New), an invalid key
// name, a semaphore limit out of range, failed authentication (SQLSTATE
// 28000, 28P01), an unknown database (3D000) or schema (3F000), a missing
// privilege (42501), an invalid name (42602) and a pool configuration that
// does not parse. New's own invalid arguments (a nil pool, an option out
// of range) are errors of New, wrapping dlock.ErrInvalidOption.
// ErrNoConnection is not permanent.
//
// # Release
//
// Release runs pg_advisory_unlock even when its ctx is cancelled, bounded
// by ctx's deadline: dlock's Lock.Release passes the Guard's release
// timeout (dlock.WithReleaseTimeout), which is then the one bound on a
// release; a direct Release with a ctx without a deadline is bounded by
// WithOpTimeout. An unlock that does not complete in time cannot show that
// the lock was held to the end: its connection is closed (never returned
// to the pool holding a session lock), every lease on it reports the loss,
// and Release returns an error matching dlock.ErrLockLost.
//
// A try or a release on a lock connection runs under a context of its
// own: not ctx's cancellation (the statement is bounded by WithOpTimeout
// or the release's deadline, by a timer of the connection), and ctx's
// values only when the pool's ConnConfig.Tracer is set, so that a tracer
// sees them (pgx would otherwise watch a context per statement, which
// costs more client CPU than the rest of a try); a statement sent for
// several callers together carries the values of the first of them.
//
// # Loss
//
// A lock connection that runs no statement is watched all the time (by a
// goroutine of its own, started once it has been idle for a millisecond;
// on a TCP or Unix socket it waits for the socket to become readable
// without reading it, so a statement, a release say, is sent at once
// rather than after stopping the watcher; on a connection that gives no
// socket, TLS or a net.Conn wrapper that is no syscall.Conn, it reads the
// connection and a statement stops it first), so when the server closes
// it — pg_terminate_backend, a server shutting
// down, restarting or crashing — the backend notices at once, with no
// statement and no extra round trip per acquisition: over 100
// terminations of an idle lock connection, the loss was reported 0.5ms
// (median) and 7 to 18ms (99th percentile, on a loaded two-core machine)
// after another client could take the lock (TestRevocationWindow). A connection
// that dies silently (a network cut, a frozen server) sends nothing: one
// monitor per backend (a timer, set while it has lock connections)
// pings each idle lock connection every half loss interval
// (WithLossInterval, default 1s), each ping bounded by the other half. When
// a connection dies every lease on it reports loss: Lost closes and Do's
// ctx is cancelled with cause dlock.ErrLockLost — within milliseconds when
// the server closed it, within about the loss interval when it went
// silent, or within the op timeout when a query was in flight on a silent
// network.
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
// # Holders
//
// Guard.Holders (DescribeLock, DescribeRW, DescribeSemaphore) tells who
// holds a name without taking it, in one query on a lock connection (taken
// as a try takes one). What it can tell depends on the mode:
//
//   - With no setup it reads pg_locks joined with pg_stat_activity: one
//     Holder per session holding the lock (per ticket of a semaphore),
//     Shared from the lock's mode. The server does not know the client's
//     process, so Host, PID and ProcessStart are zero unless the pool's
//     sessions carry ApplicationName() as their application_name (set in
//     the pool's configuration, RuntimeParams: no statement, no round
//     trip); Owner and Since are always zero. The uncontended path is
//     unchanged: no statement, no round trip.
//   - WithHolderTable(table) also records every lease: its acquisition
//     statement writes a row (host, pid, process start, the owner text of
//     dlock.WithOwner, the time, keyed by key space, key and session pid)
//     in a data-modifying CTE of the same statement, and its release
//     deletes it in the statement of the unlock: no extra round trip, but
//     a row written and deleted per acquisition. (Without fencing, the try
//     and unlock of a mutex or reader are prepared statements; the rest
//     are sent as text.) Holders then fills in every field. (An upgrade moves the record with the lease, in a statement
//     of its own.) Without fencing these statements commit with
//     synchronous_commit off: a record lost in a crash does no harm, as
//     the crash also ends the sessions and their locks. Measured on a
//     server with fsync off (so the commits cost the same either way), an
//     uncontended Do took 1.3 to 2.0 times as long with the table
//     (BenchmarkHolderTable, 6 interleaved rounds, median ratio 1.44).
//
// Either way only sessions that hold the lock at the moment are listed:
// PostgreSQL frees the locks of a session the moment it ends (a killed
// process, a terminated backend), and a record whose session no longer
// holds the lock is not shown (it stays in the table until the next holder
// on a session of the same pid overwrites it). An upgradeable reader that
// has let go of its shared lock while its upgrade waits is not listed
// until the upgrade ends.
//
// # Close
//
// Close stops the monitor and closes any lock connection still held, which
// frees its locks on the server; leases still held then report loss.
// Release leases before Close to give their connections back to the pool.
package pg
