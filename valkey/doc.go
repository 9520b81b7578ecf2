// Package valkey is a dlock backend over Valkey, or Redis 6.2 or later
// (its scripts use SET with GET), through github.com/valkey-io/valkey-go:
// leases with automatic extension, loss detection, fencing tokens,
// mutexes, reader-writer mutexes (with upgradeable read locks) and
// semaphores on a single node, a Valkey Cluster or a Sentinel-managed
// primary, and mutexes by RedLock over several independent nodes.
//
// The package is named valkey, like valkey-go's; import it under another
// name where both are used:
//
//	import (
//		"github.com/valkey-io/valkey-go"
//		dlockvalkey "github.com/dlock-go/dlock/valkey"
//	)
//
//	client, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{"127.0.0.1:6379"}})
//	...
//	b, err := dlockvalkey.New(client)           // or dlockvalkey.NewRedLock(clients)
//	...
//	defer b.Close()
//	mu := dlock.NewMutex(b)
//	err = mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
//		return build(ctx) // ctx is cancelled, cause dlock.ErrLockLost, if the lease is lost
//	})
//
// # Leases
//
// A lock is a key taken by SET NX PX (or a sorted-set member, see below)
// holding a random token, for a lease time (WithLease, default 30s).
// Release and extension are compare-and-act Lua scripts (run by EVALSHA,
// falling back to EVAL), so they never touch a lock that passed to another
// holder. While a lease is held it is extended in the background, every
// third of the lease by default (WithExtendEvery): one goroutine per Backend
// (running only while leases are held, and a second longer) sends the
// extensions of all leases
// due in one pipelined batch.
//
// A lease is lost — Lost() closes, Do's ctx is cancelled with cause
// dlock.ErrLockLost — when an extension finds its key gone or owned by
// another, or when no extension is confirmed before the lease's validity
// deadline: t + lease - drift, t being the monotonic time just before the
// request that acquired (or last extended) it was sent, drift the clock
// drift allowance (WithDriftAllowance, default 1% of the lease + 2ms). The
// server's expiry comes at least a lease after the request arrived, so the
// holder learns of the loss before the server lets anyone else in (given
// clocks that drift less than the allowance, and a process that is not
// paused past its deadline — no lease can protect against that; use the
// fencing token). A holder that resumes from such a pause and asks
// (Lock.Err, Lost, Release) is told at once that its lock is lost, before
// the extender has run, and it stays lost. A killed connection is not a
// loss: valkey-go reconnects
// and the extensions go on. A holder that dies frees its locks within the
// lease time.
//
// # Keys
//
// Every key of one lock is prefix + "{" + enc(name) + "}:" + suffix (prefix
// from WithKeyPrefix, default "dlock:"). enc escapes the name so that it
// never contains '{' or '}' (long names: an escaped head plus a SHA-256), so
// all keys of a lock share one cluster hash slot and no name can move its
// keys to another slot or outside the prefix. Names are arbitrary bytes of
// any length. A Mutex, an RWMutex and a Semaphore of the same name are
// different locks. The suffixes are listed with keyBase in keys.go.
//
// # Reader-writer locks and semaphores
//
// Readers are members of a sorted set scored by their own expiry in server
// time (TIME inside the scripts), so a crashed reader expires on its own
// even while other readers keep extending theirs. The writer is a string
// key. A waiting writer makes the readers that come after it wait (they
// queue behind it, see Waiting and order): writers are preferred, and the
// readers that came before it go first.
//
// A semaphore is a sorted set of holders scored by expiry (server time);
// each acquisition is judged by its own limit (holders asking with a larger
// limit may enter beside holders that asked with a smaller one). Both work
// on a single node and on a cluster (one slot per lock).
//
// Upgradeable read locks (dlock's RWMutex.Upgradeable: TryULock, ULock, and
// Upgrade and TryUpgrade on the lease) work on a single node, a cluster and
// a Sentinel-managed primary. An upgradeable reader is a key holding its
// token (rw:u: at most one per name) and, until it upgrades, a reader
// member like any other, so writers wait for it as for a reader; the
// upgrade swaps the member for the writer key, and one script extends
// whichever it holds. An upgrade that waits for the readers queues first in
// the lock's waiter queue, as a writer: readers and writers that come later
// wait behind it, and the readers' releases wake it. An upgrade that ends
// without the write lock (ctx done, error) has left the queue when it
// returns, and the lease is still the upgradeable reader (an upgrade whose
// answer was lost is undone); a lease upgrades once at a time (a concurrent
// call fails, and the dlock package retries it). ULock waiters are served
// in arrival order with the writers; readers may pass a waiting ULock (they
// share the lock with it). The fencing token does not change at the
// upgrade: the upgradeable acquisition's is above every earlier writer's
// and below every later one's, so writes stay fenced (readers that came in
// during its read phase hold larger tokens: that matters only to a store
// that fences reads too). Deleting its key, or once upgraded the writer
// key, is a loss. Its holder record (see Holders) is written, extended
// and deleted as a reader's: DescribeRW lists it as a reader (Shared) until
// it upgrades, then as the writer. With WithReplicas an upgrade counts only
// once the replicas confirm it. RedLock offers no reader-writer lock, so no
// upgradeable one.
//
// # Fencing tokens
//
// Every acquisition advances a per-name, per-kind counter in the same
// script, so Token() is strictly increasing across all holders. The new
// token is max(counter + 1, the server's time in microseconds; on a RedLock
// in whole milliseconds × 1000):
// the counter keeps tokens distinct and increasing however fast acquisitions
// come, and the clock floor keeps them increasing when the counter is
// forgotten — a server restarted without persistence, or a failover to a
// replica that had not received the last increments (Redis replication is
// asynchronous). After such a loss the next token is the server's clock,
// larger than every earlier token provided (1) the server's clock (TIME) was
// not stepped back across the outage, and (2) the counter had not run ahead
// of the clock by more than the outage lasted, which takes more than one
// acquisition of one name per microsecond (on a RedLock 1000 per
// millisecond), sustained. (On a failover the
// new primary's clock counts: clocks of the nodes must agree to within the
// failover time.) Tokens are therefore large numbers (about 1.8e15:
// microseconds since 1970), not counts. A counter expires a day
// after the last acquisition of its lock (later if it had run ahead of the
// clock floor, by as much), so unused names leave no keys behind; the next
// token then comes from the floor, which by then is past every earlier
// token, unless the server's clock was stepped back by more than the
// counter stayed idle. A failover can
// still lose the lock itself (see Replicas and failover); fencing is what
// catches a holder that was not told.
//
// # Replicas and failover
//
// Valkey replicates asynchronously: a primary grants a lock, answers, and
// sends the key to its replicas a moment later. If it dies in between and
// Sentinel promotes a replica, the new primary has no key, and a second
// client is granted the lock while the first still holds it and has not
// been told (its next extension finds the key gone and reports the loss;
// fencing tokens catch it before that). The failover test
// (TestFailover/Without: SIGKILL of the primary while its replicas lag)
// records such double grants; they do happen without the option below.
//
// WithReplicas(n, timeout) closes that gap: an acquisition counts only
// once n replicas confirm it (WAIT n timeout, sent on one dedicated
// connection right after a write that follows the acquisition's: a
// compare-and-touch of the held key), and an extension pushes the lease's
// validity forward only once n replicas confirm it. When fewer confirm in
// time, the acquisition is released (compare-and-delete) and fails with an
// error saying how many replicas confirmed — not permanent, so a wait
// tries again — and the extension counts as failed: it is retried, and the
// lease is lost when its validity deadline passes. (WAITAOF, which waits
// for the replicas' append-only files too, is not used.) It costs one more
// round trip per acquisition and per extension batch, plus the replicas'
// acknowledgement (see BENCHMARKS.md). It protects against:
//
//   - a failover after an acquisition (or extension) returned: every
//     replica that confirmed has the key with its expiry, so a promoted
//     one lets nobody else in before the holder's deadline. With n equal
//     to the number of replicas, whichever replica is promoted has it;
//     TestFailover checks that no second holder is granted a lock an
//     earlier holder still holds untold, over several failovers.
//
// It does not protect against:
//
//   - a replica that confirmed not being the one promoted, when n is below
//     the number of replicas (Sentinel prefers the replica with the most
//     data, but a replica that is down or lagging in its view may be
//     skipped, and one that did not confirm may be chosen);
//   - asynchronous replication during the WAIT window: the write itself is
//     not synchronous, only the claim that the lock is held waits for it.
//     Until the WAIT returns, the key is on the primary alone and a
//     failover loses it; that is safe only because nobody counts on it yet
//     (the acquisition fails; an unconfirmed extension leaves the lease
//     bounded by the validity the replicas have). A key that reached a
//     replica whose acknowledgement was lost stays on the new primary,
//     held by nobody, until its lease runs out;
//   - split brain before the sentinels agree: a primary cut off from the
//     sentinels but reachable by some clients keeps granting locks (whose
//     WAIT fails if its replicas are cut off too, or succeeds on replicas
//     that are then not promoted) until it is demoted; min-replicas-to-write
//     on the server narrows this, WithReplicas does not;
//   - data lost on the replicas themselves (a replica restarted without
//     persistence after it confirmed), and a replica promoted whose clock
//     is ahead (the key expires early; see Leases for clocks).
//
// On a RedLock, WithReplicas applies per node: each node that granted the
// lock must have n of its own replicas confirm, and a majority of the
// nodes must, for the acquisition (or extension) to count.
//
// # Waiting and order
//
// Lock, RLock, WLock and Acquire queue and wait without polling. A waiter
// whose first attempt fails joins the lock's waiter queue (two sorted sets
// in the lock's slot: arrival order in server time, and each waiter's
// deadline), subscribes to the lock's channel (SUBSCRIBE, on one dedicated
// connection per Backend; on a cluster PUBLISH reaches every node), tries
// again (unless the channel was already subscribed in this process when
// its first attempt was sent), and then tries whenever it is woken — so a
// hand-off takes about one round trip after the release. Every attempt
// renews the waiter's deadline (now + the lease); a waiter polls at least
// every 500ms (and three times per lease), so a live waiter never expires.
//
// The ordering promise, on a single node, a cluster and a Sentinel-managed
// primary (every Backend made by New):
//
//   - First come, first served, across goroutines, Backends and processes:
//     a waiter that began waiting (its first attempt reached the server)
//     before another is granted before it. A mutex or semaphore release is
//     announced, only when someone waits, with the id of the queue's first
//     waiter and wakes only that one, wherever it is; when that waiter
//     waits in the releasing Backend, nothing is published and it is woken
//     in-process. A mutex's release script also grants that waiter the
//     lock at once (the lock's value becomes the waiter's id, its token),
//     saving the waiter's own attempt: in the releasing Backend the lease
//     is valid from before the release was sent; in another process the
//     message carries the fencing token, the lock lasts what remained of
//     the waiter's place in the queue (a lease after its last attempt; the
//     release only wakes a waiter with less than half a lease left), and
//     the lease is valid from before that attempt was sent. A waiter that
//     stops before it takes a grant gives the lock back as it leaves the
//     queue; one that missed the message takes the grant over at its next
//     poll. Semaphore waiters get tickets in arrival order (a waiter that
//     takes a ticket and leaves room behind it wakes the next).
//   - Reader-writer locks: a writer enters when the lock is free and it is
//     first in the queue; a reader enters when no writer holds the lock
//     and no writer queued before it. So readers that came before a
//     waiting writer go first, the writer next, and the readers that came
//     after it wait (writer preference); writers are served in arrival
//     order. A release wakes all the lock's waiters in each process, and
//     the scripts let in only those allowed.
//   - Tries never wait and never jump the queue: TryLock, TryWLock and
//     TryAcquire fail while a live waiter is queued, even if the lock is
//     free at that moment; TryRLock fails while a writer holds or waits.
//     The check is in the try's own script (a mutex's try may take two:
//     see Cost below).
//   - A waiter whose ctx ends (or whose wait fails) leaves the queue before
//     Lock returns — detached from its ctx, bounded by 5s — and if it was
//     first, the next waiter is woken. If that removal fails, or the
//     waiter's process dies (SIGKILL), its place expires a lease after its
//     last attempt: a dead waiter holds the queue up for at most the lease
//     (plus the next waiter's poll, at most 500ms: a release still names a
//     dead first waiter, and the next attempt after its place expired
//     evicts it).
//   - A wait that fails on a server or connection error (not a permanent
//     one) while its ctx lives keeps its place for the dlock engine's
//     retry, which resumes it (the same lock, the same ctx); a place no
//     retry resumes is left when the ctx ends or 2s later. A failover or
//     a killed connection no longer leaves a dead place at the head of
//     the queue.
//   - A queue entry the scripts did not write (a member without a deadline)
//     counts as dead; a queue key of the wrong type fails every attempt on
//     that lock with an error saying so, and changes nothing.
//
// The order is the server's: a failover to a replica that had not received
// the last queue changes (Sentinel) may forget places in the queue for a
// moment — waiters queue again at their next attempt — but never lets two
// holders in. All clients of one lock must run this version: an earlier
// one ignores the queue (it neither queues nor yields to it), and one
// before the holder record moved into a free mutex's value lists the
// holder of such a lock with the record as part of its token and without
// the record (Describe; its own leases, which it took itself, are plain).
//
// RedLock gives no ordering promise: its nodes' queues could disagree, and
// a waiter first on one node but not on a majority would block everyone.
// Its waiters queue on every node only so that a release is announced when
// someone waits; the queue never decides who is next, and a try does not
// yield to waiters. Within one RedLock a release wakes only the waiter
// that has waited longest (a waiter that gives up passes its turn on), so
// a hot lock costs one attempt per release per process; across processes
// the first to retry wins. A bounded backoff poll (up to 500ms) covers
// lost notifications, and a waiter is also woken when the holder's lease
// is due to expire.
//
// # Holders
//
// Backend implements backend.LockDescriber, RWDescriber and
// SemaphoreDescriber (dlock's Holders), and RedLock LockDescriber. Each
// acquisition records its holder — host name, process id and start, the
// owner text (dlock.WithOwner), and Since: the server's time (TIME) when
// it took the lock — written by the acquire script itself: no extra round
// trip (an acquisition without an owner text sends a record made once per
// process). A mutex taken free with nobody waiting keeps it in the lock's
// value, after the lease's token, so it lives and dies with the lease;
// every other acquisition keeps it in a hash beside the lease, in the
// lock's slot, keyed by the lease's token. The hash's expiry follows the leases in it (the
// acquire and extension scripts keep it a lease ahead) and a release
// deletes its holder's record. Describing reads the lock and the records
// in one read-only script and lists only live holders: the mutex's or
// writer's current token, the readers or semaphore tickets whose expiry
// is still ahead — a holder that died is not listed once its lease has
// expired, whatever record remains (records of expired holders are
// pruned by later acquisitions, and the hash expires a lease after the
// last holder). A waiter's attempts record it too, so that a mutex a
// release grants it (see Waiting and order) lists it, with the time of its
// latest attempt as Since. A lock taken by an earlier version of this
// package is listed with zero fields. On a RedLock, a holder is listed
// when a majority of the nodes hold its token, and describing needs a
// majority of the nodes to answer.
//
// # Composite locks
//
// Backend implements backend.MultiLocker, MultiRWLocker and MultiSemaphore
// (dlock's DoAll, AcquireAll, TryAcquireAll and friends): one script takes
// a lock of every name of a set or none. It checks each name as the single
// try would — held, or free but with a live waiter queued (a try never
// jumps the queue) — before it writes anything but the single tries' own
// clean-ups (dead waiters and expired holders dropped), then takes every
// lock with its own token, fencing token, holder record and lease: each
// lease is extended, released and lost on its own (the extensions of all
// leases due together go in one pipelined batch, as always). Per
// topology:
//
//   - a single node and a Sentinel-managed primary: atomic for any set —
//     no other client ever sees part of a failed set taken;
//   - a cluster: atomic for a set whose names' keys all hash to one slot
//     (each name's keys share the slot of its escaped name, see Keys);
//     for any other set TryLockAll and friends return an error matching
//     errors.ErrUnsupported, and the dlock engine takes the names one by
//     one in order (not atomic: a failed set may hold some names for a
//     moment);
//   - RedLock: no composite path (it does not implement MultiLocker); the
//     engine takes the names one by one.
//
// With WithReplicas, each lease of a set is confirmed as a single
// acquisition is (one WAIT per name, in turn).
//
// Backend and RedLock implement backend.MultiReleaser (a set's release):
// on one node, one script releases the leases of each cluster slot (all of
// them elsewhere), each exactly as its own release would — its
// compare-and-delete, its holder record, the wake-up of (or the grant to)
// its next waiter — and answers for each (a lost lease: ErrLockLost; a key
// of the wrong type: that lease's error, the others released all the
// same). A lease alone in its slot, an upgradeable lock's, and a
// RedLock's are released one by one.
//
// # Errors, outages and waits
//
// An attempt that meets a server error — connection refused or reset, EOF,
// a server restarting, a Sentinel failover — returns it, and a wait (the
// dlock package's Do and Acquire) rides it out: the dlock engine tries
// again with jittered, capped backoff until the lock is taken or its ctx
// ends, and then returns an error matching dlock.ErrNotAcquired and
// ctx.Err() that wraps the last server error. A try (TryDo, TryAcquire)
// reports the error at once. Errors that retrying cannot heal are marked
// backend.Permanent and end a wait at once: the server refusing the
// client's credentials or permissions (WRONGPASS, NOAUTH, NOPERM), a closed
// Backend. (A closed valkey-go client is not recognised: its error,
// ErrClosing, also stands for a connection that could not be made.)
// Errors name the node (its address) they came from.
// Held leases are unaffected: a lease rides out an outage shorter than its
// validity and is reported lost otherwise (see Leases).
//
// # Releasing
//
// Release deletes the lease's key by compare-and-delete. It runs even when
// its ctx is already cancelled, and its ctx's deadline is its only bound:
// the dlock package's Lock.Release passes the Guard's release timeout
// (dlock.WithReleaseTimeout, 10s by default), shorter or longer; a Release
// called directly with a ctx without a deadline is bounded by 5s. A release
// that finds the key gone or owned by another holder returns an error
// wrapping dlock.ErrLockLost, as does the release of a lease past its
// validity deadline. A node whose connection broke (a restarted server) is
// tried again a few times over some 70ms, and one that timed out on
// valkey-go's own timeouts (its 5s dial timeout) until the deadline, so
// that a release learns a loss rather than reporting a broken connection.
// A release the server did not confirm by the deadline returns its error;
// the key then expires with its lease.
//
// # Cost
//
// On one node, a cluster or a Sentinel-managed primary, an uncontended
// mutex costs one script to take (EXISTS of the queue, TIME, SET NX PX,
// and one SET … GET of the fencing counter) and one to release (GET,
// EXISTS, DEL), each declaring only the keys it touches: the lock, its
// fencing counter and its queue; the lock and its queue. When the lock
// is not free or someone waits, that script answers so and the full one
// runs (queueing the waiter, granting the lock to the next waiter): one
// more round trip, after which the Backend counts the lock as contended
// and sends it the full scripts directly until it has seen no sign of
// contention for 2s (an attempt the first script could not settle or the
// full one refused, a release that woke a waiter or handed it the lock).
// A try of a held lock nobody waits for is answered by the first script. Reader-writer locks, semaphores and RedLock always send their
// full scripts.
//
// # RedLock
//
// NewRedLock runs the mutex over several independent nodes by majority;
// see RedLock for the algorithm, its fencing tokens, and why it offers no
// semaphore or reader-writer lock. It refuses a client given twice and two
// clients that talk to the same address: one server counted as several
// nodes would break the majority. A node that refuses authentication counts
// as down; it is logged (WithLogger) and named in the error of an
// acquisition that misses its majority, and when a majority of the nodes
// refuse it the error is permanent. A wait rides out a minority of nodes
// down (it acquires on the others) and a majority down (it retries until
// enough nodes are back or its ctx ends).
package valkey
