package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock/internal/pace"
)

// TryLock makes one attempt at the mutex name (pg_try_advisory_lock of
// MutexKey(name)) on a lock connection whose session does not hold it. It
// fails while others wait for name: it does not jump their queue.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	k := MutexKey(name)
	return b.try(ctx, req{kind: "mutex", name: name, key: k, mode: exclusive, fence: k})
}

// Lock takes the mutex name, waiting in the server's lock queue (first
// come, first served) until it is granted or ctx is done.
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	k := MutexKey(name)
	return b.wait(ctx, req{kind: "mutex", name: name, key: k, mode: exclusive, fence: k})
}

// TryRLock makes one attempt to read-lock name (a shared advisory lock of
// RWKey(name)). It fails while a writer holds name or waits for it.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	k := RWKey(name)
	return b.try(ctx, req{kind: "rwmutex", name: name, key: k, mode: shared, fence: k})
}

// TryWLock makes one attempt to write-lock name (an exclusive advisory lock
// of RWKey(name)).
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.try(ctx, wReq(name))
}

// wReq is the request of a writer of the RWMutex name: it takes the
// name's upgrade key before RWKey(name) and lets go of it once it holds
// RWKey(name), so that it never gets in while an upgradeable reader holds
// the name (see upgrade.go).
func wReq(name string) req {
	k := RWKey(name)
	return req{kind: "rwmutex", name: name, key: k, mode: exclusive, fence: k, upgrade: rwUpgradeKey(name), ukind: uWriter}
}

// RLock read-locks name, waiting in the server's lock queue; it queues
// behind a waiting writer.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	k := RWKey(name)
	return b.wait(ctx, req{kind: "rwmutex", name: name, key: k, mode: shared, fence: k})
}

// WLock write-locks name, waiting in the server's lock queue. While it
// waits, new readers of name fail their tries and queue behind it.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	return b.wait(ctx, wReq(name))
}

// req describes one acquisition.
type req struct {
	kind, name string
	key        Key
	mode       mode
	fence      Key    // the row of the fencing table
	queue      Key    // a semaphore's waiter queue (semQueueKey)
	upgrade    Key    // the upgrade key (rwUpgradeKey) of an RWMutex's writer or upgradeable reader
	ukind      uint8  // what it does with upgrade: uNone, uWriter or uReader
	rec        string // the holder record (holder table on; set by begin)
}

// What an acquisition does with its upgrade key.
const (
	uNone   = iota
	uWriter // takes it first, lets go once it holds key
	uReader // an upgradeable reader: holds it, with key shared
)

// busyLocked reports whether this backend knows, with no round trip, that
// an acquisition of r must not be tried: a lease of it holds r's key (or
// upgrade key) in a conflicting mode, a writer of it waits for a reader's
// key, or a wait of it queues for either key (a try does not jump the
// queue, and the server would refuse it).
func (b *Backend) busyLocked(r req) bool {
	if b.conflictsLocked(r.key, r.mode) || (r.mode == shared && b.writers[r.key] > 0) || b.queued[r.key] > 0 {
		return true
	}
	return r.ukind != uNone && (b.conflictsLocked(r.upgrade, exclusive) || b.queued[r.upgrade] > 0)
}

// tryingLocked reports whether a try of this backend has a key that r
// takes exclusively (its key when r is exclusive, its upgrade key) in
// flight on a lock connection. A wait then skips its first try: that try
// could only succeed if the one in flight failed and the lock was let go
// between the two, and the wait's blocking statement takes a free lock
// anyway. So a burst of waits for one name sends one try, not one per
// wait, each on a lock connection of its own (a session must not try a key
// it holds or tries: see pickLocked). A reader's try of a key another
// reader tries or holds may succeed, so it is sent.
func (b *Backend) tryingLocked(r req) bool {
	for c := range b.conns {
		if c.gone {
			continue
		}
		if _, has := c.keys[r.key]; has && r.mode == exclusive {
			return true
		}
		if r.ukind != uNone {
			if _, has := c.keys[r.upgrade]; has {
				return true
			}
		}
	}
	return false
}

// tryExpr is the SQL expression of a try of r that takes its upgrade key:
// true when it took everything, false when it took nothing.
func (r req) tryExpr() string {
	u, k := r.upgrade.String(), r.key.String()
	then := "pg_advisory_unlock(" + u + ")" // a writer keeps only the write lock
	fn := "pg_try_advisory_lock("
	if r.ukind == uReader {
		then, fn = "true", "pg_try_advisory_lock_shared("
	}
	return "CASE WHEN pg_try_advisory_lock(" + u + ") THEN CASE WHEN " + fn + k + ") THEN " + then +
		" ELSE NOT pg_advisory_unlock(" + u + ") END ELSE false END"
}

// blockSQL is the statement of a wait of r that takes its upgrade key:
// the upgrade key, then the key, then (a writer) the upgrade key let go.
func (b *Backend) blockSQL(r req) string {
	u, k := r.upgrade.String(), r.key.String()
	fn := "pg_advisory_lock("
	if r.ukind == uReader {
		fn = "pg_advisory_lock_shared("
	}
	expr := fn + k + ")"
	if r.ukind == uWriter {
		expr += ", pg_advisory_unlock(" + u + ")" // after the lock: a target list runs in order
	}
	return "SELECT pg_advisory_lock(" + u + "); " + b.lockSQL(expr, "", r, "")
}

func (r req) errorf(format string, args ...any) error {
	return fmt.Errorf(format, args...)
}

func (r req) notAcquired(ctx context.Context) error {
	return r.errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
}

// begin checks what every acquisition needs before it takes a connection:
// a live ctx, a pool, and the fencing table when fencing is on.
func (b *Backend) begin(ctx context.Context, r *req) error {
	if ctx.Err() != nil {
		return r.notAcquired(ctx)
	}
	if b.pool == nil {
		return r.errorf("%w", errNilPool)
	}
	if err := b.ensureTables(ctx); err != nil {
		return r.errorf("%w", err)
	}
	r.rec = b.holderRec(ctx)
	return nil
}

// maxAttempts bounds the attempts of one try whose connection turned out
// gone or dead before the try could take anything (a pooled connection
// whose session the server ended while it was idle).
func (b *Backend) maxAttempts() int { return b.maxConns + 2 }

// try takes r on a lock connection with a non-blocking try.
func (b *Backend) try(ctx context.Context, r req) (*Lease, bool, error) {
	l, ok, err := b.try1(ctx, r)
	return l, ok, permanent(err)
}

func (b *Backend) try1(ctx context.Context, r req) (*Lease, bool, error) {
	if err := b.begin(ctx, &r); err != nil {
		return nil, false, err
	}
	var last error
	for range b.maxAttempts() {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, false, r.errorf("%w", errClosed)
		}
		if b.busyLocked(r) {
			b.mu.Unlock()
			return nil, false, nil // held here, or awaited by a wait of this backend
		}
		lc, fresh := b.pickLocked(r.key)
		lc.pending++
		lc.keys[r.key] = struct{}{}
		if r.ukind == uReader {
			lc.keys[r.upgrade] = struct{}{}
		}
		b.mu.Unlock()
		if b.combinable(r) {
			l, ok, err, retry := b.tryCall(ctx, lc, r, fresh)
			if !retry {
				return l, ok, err
			}
			last = err
			continue
		}
		if err := b.take(ctx, lc, r.key, true, fresh); err != nil {
			if r.ukind == uReader {
				b.mu.Lock()
				if !lc.gone {
					delete(lc.keys, r.upgrade)
				}
				b.mu.Unlock()
			}
			if errors.Is(err, errRetry) {
				last = err
				continue
			}
			return nil, false, r.errorf("%w", err)
		}
		l, ok, err, retry := b.tryOn(ctx, lc, r)
		if !retry {
			return l, ok, err
		}
		last = err
	}
	return nil, false, r.errorf("try: %w", last)
}

// errRetry reports that a lock connection picked for a try was gone (or
// its session dead) before the try was sent: the try may run elsewhere.
var errRetry = errors.New("lock connection gone")

// pickLocked chooses a lock connection for a try of k (byKey; else any
// key): the least busy one whose session does not hold k, or a new one
// (fresh) when there is none or tries should spread and the pool can give
// one at once. A new one is added to the lock connections at once, still
// being acquired (its acquirer calls connect, see take), so that other
// tries share it instead of taking more. With no lock connection to use,
// it always picks a new one: if the pool has no connection to give, its
// acquisition fails with an error matching ErrNoConnection within about
// 20ms (see acquireNoWait).
func (b *Backend) pickLocked(keys ...Key) (lc *lockConn, fresh bool) {
	var best *lockConn
	n := 0
	for c := range b.conns {
		if c.gone {
			continue
		}
		n++
		if holdsAny(c, keys) {
			continue
		}
		if best == nil || c.pending < best.pending || (c.pending == best.pending && len(c.leases) < len(best.leases)) {
			best = c
		}
	}
	var grow bool // the pool's count (freeLocked) only when it decides
	switch {
	case best == nil:
		// Nothing to share: take one if the pool gives it within a
		// moment. (Even a full pool may: pgx's pool counts a connection
		// it is destroying as acquired until its close completes.)
		grow = true
	case best.pending > 0 && n < b.cfg.maxLockConns:
		// Spread concurrent tries, but leave a connection for a wait.
		grow = b.freeLocked() > 1
	case len(best.leases) >= b.cfg.maxLeases:
		// PostgreSQL walks all of a session's locks at the end of every
		// transaction, so each statement on a session holding n locks
		// costs O(n): spread large numbers of leases.
		grow = b.freeLocked() > 0
	}
	if !grow {
		return best, false
	}
	lc = newLockConn(nil)
	b.conns[lc] = struct{}{}
	b.acquiring++
	return lc, true
}

// holdsAny reports whether c's session holds (or is trying) one of keys.
func holdsAny(c *lockConn, keys []Key) bool {
	for _, k := range keys {
		if _, has := c.keys[k]; has {
			return true
		}
	}
	return false
}

// connect acquires the pool connection of lc, a lock connection picked
// fresh by pickLocked, and makes it ready (or failed) for every try that
// waits for it.
func (b *Backend) connect(ctx context.Context, lc *lockConn) {
	pc, err := b.acquireNoWait(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.acquiring--
	if err == nil && lc.gone { // Close came first
		pc.Release()
		pc, err = nil, errClosed
	}
	if err != nil {
		lc.connErr = err
		if !lc.gone {
			lc.gone = true
			delete(b.conns, lc)
		}
		close(lc.ready)
		return
	}
	lc.pc, lc.pid, lc.nc = pc, pc.Conn().PgConn().PID(), pc.Conn().PgConn().Conn()
	b.addConnLocked(lc)
	close(lc.ready)
}

// take makes lc, on which the caller scheduled an operation (pending, and
// k reserved when byKey), ready for it: it acquires lc's connection if
// the caller picked it fresh, else waits for it to be ready, then takes
// lc's lock and pauses its watcher. All bounded by ctx. On error the
// reservation is undone; errRetry says the operation may run elsewhere.
func (b *Backend) take(ctx context.Context, lc *lockConn, k Key, byKey, fresh bool) error {
	err := b.connReady(ctx, lc, fresh)
	if err == nil && !lc.lock(ctx) {
		err = ctx.Err()
	}
	if err == nil {
		b.mu.Lock()
		gone := lc.gone
		b.mu.Unlock()
		if !gone {
			if perr := b.pause(lc); perr != nil {
				b.fail(lc, perr)
				gone = true
			}
		}
		if gone {
			err = errRetry
			lc.unlock()
		}
	}
	if err == nil {
		return nil
	}
	return b.untake(ctx, lc, k, byKey, err)
}

// connReady acquires lc's connection if the caller picked it fresh, else
// waits, bounded by ctx, for it to be ready. errRetry says that its
// acquirer gave up and the operation may run elsewhere.
func (b *Backend) connReady(ctx context.Context, lc *lockConn, fresh bool) error {
	if fresh {
		b.connect(ctx, lc)
	}
	select {
	case <-lc.ready:
	case <-ctx.Done():
	}
	select {
	case <-lc.ready:
		err := lc.connErr
		if err != nil && !fresh && !errors.Is(err, ErrNoConnection) && !errors.Is(err, errClosed) && ctx.Err() == nil &&
			(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
			err = errRetry // its acquirer gave up; this try need not
		}
		return err
	default: // ctx ended first
		return fmt.Errorf("connection to %s still being acquired: %w", b.addr, ctx.Err())
	}
}

// untake undoes the reservation of an operation scheduled on lc that
// failed with err before it ran, and returns err, marked
// backend.ErrNotAcquired when ctx ended.
func (b *Backend) untake(ctx context.Context, lc *lockConn, k Key, byKey bool, err error) error {
	b.mu.Lock()
	lc.pending--
	if byKey && !lc.gone {
		delete(lc.keys, k)
	}
	b.mu.Unlock()
	if ctx.Err() != nil && !errors.Is(err, errRetry) {
		if err == ctx.Err() {
			return fmt.Errorf("%w: %w", backend.ErrNotAcquired, err)
		}
		return fmt.Errorf("%w: %w (%w)", backend.ErrNotAcquired, ctx.Err(), err)
	}
	return err
}

// done ends an operation on lc (the caller holds its lock, pending
// already decremented): see idle; then lc's lock is released.
func (b *Backend) done(lc *lockConn) {
	b.idle(lc)
	lc.unlock()
}

// idle ends the operations on lc that the caller ran (it holds lc's
// lock): lc goes back to the pool if nothing else uses it, else its
// watcher resumes.
func (b *Backend) idle(lc *lockConn) {
	b.mu.Lock()
	retire := b.retireIfIdleLocked(lc)
	gone := lc.gone
	b.mu.Unlock()
	if retire {
		b.quiesce(lc)
		lc.pc.Release()
	} else if !gone {
		b.resume(lc)
	}
}

// tryOn runs the try of r on lc, which the caller took (take) with r.key
// reserved. retry reports that the try took nothing because lc's session
// had ended: it may run on another connection.
func (b *Backend) tryOn(ctx context.Context, lc *lockConn, r req) (l *Lease, ok bool, err error, retry bool) {
	defer b.done(lc)
	pgc := lc.pc.Conn().PgConn()
	// Bounded by lc's statement timer (see boundStmt), not by a ctx.
	qctx := b.stmtCtx(ctx)
	bound := lc.boundStmt(time.Now().Add(b.cfg.opTimeout))
	var (
		row  [][]byte
		qerr error
	)
	plain := b.cfg.fenceTable == "" && b.cfg.holderTable == ""
	if r.ukind != uNone && plain {
		ok, qerr = callTryUpgradeKey(qctx, lc.pc.Conn(), r)
	} else if r.ukind != uNone {
		row, qerr = query(qctx, pgc, b.lockSQL(r.tryExpr(), "v", r, ""))
		ok = qerr == nil && len(row) > 0 && string(row[0]) == "t"
	} else if b.cfg.holderTable != "" && b.cfg.fenceTable == "" && !r.key.pair {
		ok, qerr = b.callRecorded(qctx, lc.pc.Conn(), r.key, r.mode, true, r.rec)
	} else if plain {
		fn := fnTry
		if r.mode == shared {
			fn = fnTryShared
		}
		ok, qerr = callKeyFn(qctx, lc.pc.Conn(), fn, r.key)
	} else {
		fn := "pg_try_advisory_lock"
		if r.mode == shared {
			fn = "pg_try_advisory_lock_shared"
		}
		row, qerr = query(qctx, pgc, b.lockSQL(fn+"("+r.key.String()+")", "v", r, ""))
		ok = qerr == nil && len(row) > 0 && string(row[0]) == "t"
	}
	qerr = lc.endStmt(qerr, bound)
	if qerr == nil {
		l, qerr = b.leaseFrom(r, row, ok)
	}
	if qerr != nil {
		// The try may have taken the lock (a fencing failure): undo it, or
		// end the session.
		ended := sessionEnded(pgc, qerr)
		b.undoOrFail(lc, r.key, r.mode, qerr)
		if r.ukind != uNone {
			b.undoOrFail(lc, r.upgrade, exclusive, qerr)
		}
		b.mu.Lock()
		lc.pending--
		if !lc.gone {
			delete(lc.keys, r.key)
			delete(lc.keys, r.upgrade)
		}
		b.mu.Unlock()
		return nil, false, r.errorf("try: %w", qerr), ended && ctx.Err() == nil
	}
	b.mu.Lock()
	lc.pending--
	if ok {
		b.attachLocked(lc, l)
	} else {
		delete(lc.keys, r.key)
		if r.ukind == uReader {
			delete(lc.keys, r.upgrade)
		}
	}
	b.mu.Unlock()
	return l, ok, nil, false
}

// leaseFrom makes the lease of a successful acquisition from its result
// row (value, token).
func (b *Backend) leaseFrom(r req, row [][]byte, ok bool) (*Lease, error) {
	if !ok {
		return nil, nil
	}
	l := &Lease{b: b, kind: r.kind, name: r.name, key: r.key, mode: r.mode}
	if r.kind == "semaphore" {
		l.topic = r.fence.String() // a decimal: safe in an SQL literal
	}
	if r.ukind == uReader {
		u := r.upgrade
		l.ukey, l.upgradeable, l.rec = &u, true, r.rec
	}
	if b.cfg.fenceTable != "" {
		if len(row) < 2 || row[1] == nil {
			return nil, errors.New("no fencing token in the result")
		}
		t, err := strconv.ParseUint(string(row[1]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("fencing token: %w", err)
		}
		l.token = t
	}
	return l, nil
}

// attachLocked records l as held on lc.
func (b *Backend) attachLocked(lc *lockConn, l *Lease) {
	l.lc = lc
	lc.leases[l] = struct{}{}
	lc.keys[l.key] = struct{}{}
	b.holdLocked(l.key, l.mode)
	if l.ukey != nil {
		lc.keys[*l.ukey] = struct{}{}
		b.holdLocked(*l.ukey, exclusive)
	}
}

// undoOrFail unlocks k on lc after a failed statement that may have taken
// it (nobody else holds k on lc's session); if that cannot be confirmed,
// it ends the session. The caller holds lc.mu.
func (b *Backend) undoOrFail(lc *lockConn, k Key, m mode, cause error) {
	b.mu.Lock()
	gone := lc.gone
	b.mu.Unlock()
	if gone {
		return
	}
	if lc.pc.Conn().PgConn().IsClosed() {
		b.fail(lc, cause)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.opTimeout)
	defer cancel()
	if _, err := unlock(ctx, lc.pc.Conn(), k, m); err != nil {
		b.fail(lc, cause)
	}
}

// Polling of a wait that cannot have a connection of its own: from
// waitPollMin, doubling to waitPollMax, jittered.
const (
	waitPollMin = 5 * time.Millisecond
	waitPollMax = 200 * time.Millisecond
)

// wait takes r, queueing on the server if it is held.
func (b *Backend) wait(ctx context.Context, r req) (*Lease, error) {
	l, err := b.wait1(ctx, r)
	return l, permanent(err)
}

func (b *Backend) wait1(ctx context.Context, r req) (*Lease, error) {
	if err := b.begin(ctx, &r); err != nil {
		return nil, err
	}
	if r.kind != "mutex" && r.mode == exclusive {
		// A writer waits: this backend's readers of the key fail their
		// tries and wait behind it, also while it polls.
		b.mu.Lock()
		b.writers[r.key]++
		b.mu.Unlock()
		defer func() {
			b.mu.Lock()
			if b.writers[r.key]--; b.writers[r.key] <= 0 {
				delete(b.writers, r.key)
			}
			b.mu.Unlock()
		}()
	}
	var poll *pace.Pacer // made when first needed: most waits never poll
	var last error       // the last error that kept the wait from the server's queue
	for {
		noConn := false
		// First a try (one short statement, on a lock connection, or on
		// a pool connection that becomes one): most locks are free, and a
		// lease there needs no connection of its own. Only a lock held
		// elsewhere costs the blocking statement, on a connection of its
		// own.
		b.mu.Lock()
		tryFirst := !b.busyLocked(r) && !b.tryingLocked(r)
		b.mu.Unlock()
		if tryFirst {
			l, ok, err := b.try1(ctx, r)
			switch {
			case ok:
				return l, nil
			case err != nil && ctx.Err() != nil && last != nil:
				return nil, b.ended(ctx, r, last)
			case err != nil && !errors.Is(err, ErrNoConnection):
				return nil, err
			case err != nil:
				last, noConn = err, true
			}
		}
		if !noConn {
			pc, err := b.acquire(ctx)
			if err == nil {
				l, err := b.waitBlocking(ctx, r, pc)
				if !errors.Is(err, errEarly) {
					return l, err
				}
				continue
			}
			if ctx.Err() != nil {
				return nil, b.ended(ctx, r, last)
			}
			if !errors.Is(err, ErrNoConnection) {
				return nil, r.errorf("wait: %w", err)
			}
			last = err
		}
		// No connection for a server-side wait: poll.
		if poll == nil {
			p := pace.New(waitPollMin, waitPollMax)
			poll = &p
		}
		t := time.NewTimer(poll.Next())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, b.ended(ctx, r, last)
		}
	}
}

// ended is the error of a wait that ctx ended, wrapping the last error
// that kept it from the server's queue, if any.
func (b *Backend) ended(ctx context.Context, r req, last error) error {
	if last == nil {
		return r.notAcquired(ctx)
	}
	return r.errorf("%w: %w (last: %w)", backend.ErrNotAcquired, ctx.Err(), last)
}

// errEarly reports that lock_timeout fired just before ctx's deadline:
// the wait goes on.
var errEarly = errors.New("lock_timeout before the deadline")

// waitBlocking takes r with a blocking wait on pc, a connection of its
// own, which never holds r already (it is not a lock connection), so the
// server's queue decides; after the grant that connection becomes a lock
// connection holding the lease.
func (b *Backend) waitBlocking(ctx context.Context, r req, pc *pgxpool.Conn) (*Lease, error) {
	sql := "" // the plain lock function, prepared
	if b.cfg.fenceTable != "" || b.cfg.holderTable != "" {
		fn := "pg_advisory_lock"
		if r.mode == shared {
			fn = "pg_advisory_lock_shared"
		}
		sql = b.lockSQL(fn+"("+r.key.String()+")", "", r, "")
	}
	// Made now, while the server has not granted anything yet: the grant's
	// path to the caller is shorter by its allocations.
	lc := newLockConn(pc)
	var row [][]byte
	var err error
	if r.ukind == uNone {
		defer b.enqueue(r.key)()
		row, err = b.block(ctx, pc, sql, r.key, r.mode)
	} else {
		// It queues for the upgrade key first: while it does, tries of
		// that key fail here at once; a writer then queues for key too.
		defer b.enqueue(r.upgrade)()
		if r.ukind == uWriter {
			defer b.enqueue(r.key)()
		}
		row, err = b.blockUndo(ctx, pc, b.blockSQL(r), r.key, r.mode, func() {
			leave(pc, undoSQL(r), b.cfg.opTimeout)
		})
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, r.notAcquired(ctx)
		}
		if errors.Is(err, errEarly) {
			return nil, err
		}
		return nil, r.errorf("wait: %w", err)
	}
	l, err := b.leaseFrom(r, row, true)
	if err != nil {
		if r.ukind == uNone {
			release(pc, r.key, r.mode, b.cfg.opTimeout)
		} else {
			leave(pc, undoSQL(r), b.cfg.opTimeout)
		}
		return nil, r.errorf("wait: %w", err)
	}
	return b.adopt(r, lc, l)
}

// undoSQL lets go of whatever a failed acquisition of r that takes its
// upgrade key may hold (a harmless warning for each lock not held).
func undoSQL(r req) string {
	fn := "pg_advisory_unlock("
	if r.mode == shared {
		fn = "pg_advisory_unlock_shared("
	}
	return "SELECT " + fn + r.key.String() + "), pg_advisory_unlock(" + r.upgrade.String() + ")"
}

// enqueue counts a wait that enters the server's queue of k on a
// connection of its own, until the returned function is called: while it
// waits, this backend's tries of k fail at once (a try must not jump the
// queue, and the server would refuse it anyway), with no round trip and
// no connection.
func (b *Backend) enqueue(k Key) (leave func()) {
	b.mu.Lock()
	b.waiting++
	b.queued[k]++
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		b.waiting--
		if b.queued[k]--; b.queued[k] <= 0 {
			delete(b.queued, k)
		}
		b.mu.Unlock()
	}
}

// release unlocks k on pc, a connection that is not a lock connection, and
// gives pc back to the pool, or destroys it if the unlock fails.
func release(pc *pgxpool.Conn, k Key, m mode, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := unlock(ctx, pc.Conn(), k, m); err != nil {
		destroy(pc)
		return
	}
	pc.Release()
}

// block runs sql, a blocking lock statement of k in mode m ("" for the
// lock function itself, prepared: see lockBlocking), on pc, bounded by ctx
// on the server: lock_timeout from ctx's deadline (SET LOCAL in the
// statement's own implicit transaction, so it never outlives it), and a
// cancel request when ctx ends. On success pc's session holds k and pc is still the
// caller's. On error the session does not hold k and pc has been given back
// to the pool (or destroyed).
func (b *Backend) block(ctx context.Context, pc *pgxpool.Conn, sql string, k Key, m mode) ([][]byte, error) {
	return b.blockUndo(ctx, pc, sql, k, m, func() { release(pc, k, m, b.cfg.opTimeout) })
}

// blockUndo is block with undo, which lets go of what sql may have taken
// and gives pc back to the pool (or destroys it), instead of the unlock of
// k in mode m.
func (b *Backend) blockUndo(ctx context.Context, pc *pgxpool.Conn, sql string, k Key, m mode, undo func()) ([][]byte, error) {
	pgc := pc.Conn().PgConn()
	var ms int64 // lock_timeout; 0: none
	if dl, ok := ctx.Deadline(); ok {
		// Just after the deadline: the cancel request on ctx's end
		// usually comes first, and either way the result is the same.
		ms = max(time.Until(dl).Milliseconds()+2, 1)
	}
	run := func(qctx context.Context) ([][]byte, error) {
		return nil, lockBlocking(qctx, pc.Conn(), ms, k, m)
	}
	if sql != "" {
		full := "SET LOCAL lock_timeout = " + strconv.FormatInt(ms, 10) + "; SET LOCAL statement_timeout = 0; " + sql
		run = func(qctx context.Context) ([][]byte, error) { return query(qctx, pgc, full) }
	}
	row, cancelled, err := runCancellable(ctx, pgc, run, b.cfg.opTimeout)
	switch {
	case err == nil && !cancelled:
		return row, nil
	case err == nil:
		// Granted just as ctx ended: the caller has gone, give it back.
		undo()
		return nil, ctx.Err()
	case pgc.IsClosed():
		pc.Release() // destroyed by the pool
		return nil, err
	}
	// The statement failed, but not always before the lock: a cancel or a
	// timeout can strike after the grant, within the statement (and a
	// fencing failure comes after it), and a session lock outlives its
	// statement. So unlock in every case (a harmless warning when not
	// held) before the connection goes back.
	undo()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "57014" || pgErr.Code == "55P03") {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if pgErr.Code == "55P03" {
			// lock_timeout fired a moment before ctx's deadline.
			return nil, errEarly
		}
	}
	return nil, err
}

// runCancellable runs run (statements on pgc); when ctx ends first it sends
// the server a cancel request, and if the statement still does not end within grace it
// closes the connection. cancelled reports that a cancel request was sent;
// it has then been delivered (or given up) before runCancellable returns,
// so it cannot hit a later statement.
//
// run gets ctx without its cancellation, so pgx does not watch it: the
// statement is bounded, once ctx ends, by a deadline on pgc's network
// connection, whose expiry makes pgx close it (a wait then costs no
// context of its own, nor pgx's watch of one). That deadline is cleared
// before runCancellable returns if the statement ended in time; a
// connection it cut is closed by then.
func runCancellable(ctx context.Context, pgc *pgconn.PgConn, run func(context.Context) ([][]byte, error), grace time.Duration) (row [][]byte, cancelled bool, err error) {
	qctx := context.WithoutCancel(ctx)
	if ctx.Done() == nil {
		row, err = run(qctx) // ctx never ends
		return row, false, err
	}
	c := &cancelRun{pgc: pgc, grace: grace}
	c.wg.Add(1)
	stop := context.AfterFunc(ctx, c.cancel)
	row, err = run(qctx)
	if stop() {
		c.wg.Done() // cancel will not run
		return row, false, err
	}
	c.wg.Wait()
	switch {
	case pgc.IsClosed():
		// pgx closes the socket only after a cancel request of its own,
		// which a silent server may hold for long: until then the session
		// lives on, and could be granted the lock.
		_ = pgc.Conn().Close()
	default:
		_ = pgc.Conn().SetDeadline(time.Time{}) // the statement ended in time: pgc is fine
	}
	return row, true, err
}

// cancelRun is the cancellation of one statement of runCancellable.
type cancelRun struct {
	pgc   *pgconn.PgConn
	grace time.Duration
	wg    sync.WaitGroup // done when cancel has returned
}

// cancel sends the server a cancel request for the statement in flight on
// pgc, and sets pgc's deadline grace later; if the request cannot be sent,
// it sets the deadline in the past. Either way a statement that does not
// end by then fails, and pgx closes pgc.
func (c *cancelRun) cancel() {
	defer c.wg.Done()
	cctx, cancel := context.WithTimeout(context.Background(), c.grace)
	err := c.pgc.CancelRequest(cctx)
	cancel()
	deadline := time.Now().Add(c.grace)
	if err != nil {
		deadline = time.Unix(1, 0) // no way to reach the server: drop the connection
	}
	_ = c.pgc.Conn().SetDeadline(deadline)
}

// query runs sql (simple protocol, one round trip) and returns the first
// row of its last result.
func query(ctx context.Context, pgc *pgconn.PgConn, sql string) ([][]byte, error) {
	results, err := pgc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, errors.New("no result")
	}
	last := results[len(results)-1]
	if len(last.Rows) == 0 {
		return nil, nil
	}
	return last.Rows[0], nil
}

// unlock releases k on conn's session; ok reports that it was held.
func unlock(ctx context.Context, conn *pgx.Conn, k Key, m mode) (bool, error) {
	return unlockNotify(ctx, conn, k, m, "")
}

// unlockNotify is unlock that also, when topic is not "", notifies the
// semaphore waiters of topic (semChannel), in the same statement.
func unlockNotify(ctx context.Context, conn *pgx.Conn, k Key, m mode, topic string) (bool, error) {
	if topic == "" {
		fn := fnUnlock
		if m == shared {
			fn = fnUnlockShared
		}
		return callKeyFn(ctx, conn, fn, k)
	}
	fn := "pg_advisory_unlock"
	if m == shared {
		fn = "pg_advisory_unlock_shared"
	}
	sql := "SELECT " + fn + "(" + k.String() + ")"
	if topic != "" {
		sql += ", pg_notify('" + semChannel + "', '" + topic + "')"
	}
	row, err := query(ctx, conn.PgConn(), sql)
	if err != nil {
		return false, err
	}
	return len(row) > 0 && string(row[0]) == "t", nil
}

// lockSQL builds the statement that evaluates expr (which takes the lock
// of r) and, in the same statement when cond (an SQL condition on expr's
// value v; "" for always) holds, bumps the lock's fencing row (fencing
// on) and records the holder (holder table on) of the key hkey (an SQL
// expression on v; "" for r.key). Its first column is expr's value (or
// 't' when cond is ""), its second the token.
func (b *Backend) lockSQL(expr, cond string, r req, hkey string) string {
	if b.cfg.fenceTable == "" && b.cfg.holderTable == "" {
		return "SELECT " + expr
	}
	where := ""
	if cond != "" {
		where = " WHERE " + cond
	}
	var s strings.Builder
	s.WriteString(b.relaxed())
	s.WriteString("WITH l AS (SELECT ")
	s.WriteString(expr)
	s.WriteString(" AS v)")
	if t := b.cfg.fenceTable; t != "" {
		s.WriteString(", t AS (INSERT INTO ")
		s.WriteString(t)
		s.WriteString(" (space, key, token) SELECT ")
		s.WriteString(keySpace(r.fence))
		s.WriteString(", ")
		s.WriteString(strconv.FormatInt(r.fence.v, 10))
		s.WriteString(", 1 FROM l")
		s.WriteString(where)
		s.WriteString(" ON CONFLICT (space, key) DO UPDATE SET token = ")
		s.WriteString(t)
		s.WriteString(".token + 1 RETURNING token)")
	}
	if t := b.cfg.holderTable; t != "" {
		space := keySpace(r.key)
		if hkey == "" {
			hkey = strconv.FormatInt(r.key.v, 10)
		} else {
			space = "1" // a semaphore's slot keys
		}
		s.WriteString(", h AS (INSERT INTO ")
		s.WriteString(t)
		s.WriteString(" (space, key, pid, shared, rec) SELECT ")
		s.WriteString(space)
		s.WriteString(", ")
		s.WriteString(hkey)
		s.WriteString(", pg_backend_pid(), ")
		s.WriteString(strconv.FormatBool(r.mode == shared))
		s.WriteString(", ")
		s.WriteString(dollarQuote(r.rec))
		s.WriteString(" FROM l")
		s.WriteString(where)
		s.WriteString(" ON CONFLICT (space, key, pid) DO UPDATE SET shared = EXCLUDED.shared, rec = EXCLUDED.rec)")
	}
	s.WriteString(" SELECT ")
	if cond == "" {
		s.WriteString("'t'")
	} else {
		s.WriteString("l.v")
	}
	if b.cfg.fenceTable != "" {
		s.WriteString(", (SELECT token FROM t)")
	}
	s.WriteString(" FROM l")
	return s.String()
}

// keySpace is the number of k's key space in the fencing and holder
// tables: 1 for bigint keys, 2 for pairs.
func keySpace(k Key) string {
	if k.pair {
		return "2"
	}
	return "1"
}

// ensureTables creates the fencing and holder tables once, when they are
// on, on a connection taken like any other (never waiting for one),
// bounded by ctx.
func (b *Backend) ensureTables(ctx context.Context) error {
	if (b.cfg.fenceTable == "" && b.cfg.holderTable == "") || b.tablesReady.Load() {
		return nil
	}
	select {
	case b.fenceMu <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", backend.ErrNotAcquired, ctx.Err())
	}
	defer func() { <-b.fenceMu }()
	if b.tablesReady.Load() {
		return nil
	}
	pc, err := b.acquire(ctx)
	if err != nil {
		return fmt.Errorf("create the fencing or holder table: %w", err)
	}
	defer pc.Release()
	for _, t := range []struct{ name, cols string }{
		{b.cfg.fenceTable, "space smallint NOT NULL, key bigint NOT NULL, token bigint NOT NULL, PRIMARY KEY (space, key)"},
		{b.cfg.holderTable, "space smallint NOT NULL, key bigint NOT NULL, pid integer NOT NULL, shared boolean NOT NULL, rec text NOT NULL, PRIMARY KEY (space, key, pid)"},
	} {
		if t.name == "" {
			continue
		}
		_, err = pc.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+t.name+" ("+t.cols+")")
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "42P07")) {
			return fmt.Errorf("create table %s: %w", t.name, err)
		}
	}
	b.tablesReady.Store(true)
	return nil
}
