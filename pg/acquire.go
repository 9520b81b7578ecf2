package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock"
)

// TryLock makes one attempt at the mutex name (pg_try_advisory_lock of
// MutexKey(name)) on a lock connection whose session does not hold it.
func (b *Backend) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.try(ctx, req{kind: "mutex", name: name, key: MutexKey(name), mode: exclusive, fence: MutexKey(name)})
}

// Lock takes the mutex name, waiting in the server's lock queue until it is
// free or ctx is done.
func (b *Backend) Lock(ctx context.Context, name string) (*Lease, error) {
	return b.wait(ctx, req{kind: "mutex", name: name, key: MutexKey(name), mode: exclusive, fence: MutexKey(name)})
}

// TryRLock makes one attempt to read-lock name (a shared advisory lock of
// RWKey(name)). It fails while a writer holds name or waits for it.
func (b *Backend) TryRLock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.try(ctx, req{kind: "rwmutex", name: name, key: RWKey(name), mode: shared, fence: RWKey(name)})
}

// TryWLock makes one attempt to write-lock name (an exclusive advisory lock
// of RWKey(name)).
func (b *Backend) TryWLock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.try(ctx, req{kind: "rwmutex", name: name, key: RWKey(name), mode: exclusive, fence: RWKey(name)})
}

// RLock read-locks name, waiting in the server's lock queue; it queues
// behind a waiting writer.
func (b *Backend) RLock(ctx context.Context, name string) (*Lease, error) {
	return b.wait(ctx, req{kind: "rwmutex", name: name, key: RWKey(name), mode: shared, fence: RWKey(name)})
}

// WLock write-locks name, waiting in the server's lock queue. While it
// waits, new readers of name fail their tries and queue behind it.
func (b *Backend) WLock(ctx context.Context, name string) (*Lease, error) {
	return b.wait(ctx, req{kind: "rwmutex", name: name, key: RWKey(name), mode: exclusive, fence: RWKey(name)})
}

// req describes one acquisition.
type req struct {
	kind, name string
	key        Key
	mode       mode
	fence      Key // the row of the fencing table
}

func (r req) errorf(format string, args ...any) error {
	return fmt.Errorf("pg: %s %s: "+format, append([]any{r.kind, shortName(r.name)}, args...)...)
}

func (r req) notAcquired(ctx context.Context) error {
	return r.errorf("%w: %w", dlock.ErrNotAcquired, ctx.Err())
}

// begin checks what every acquisition needs before it takes a connection:
// a live ctx, a pool, and the fencing table when fencing is on.
func (b *Backend) begin(ctx context.Context, r req) error {
	if ctx.Err() != nil {
		return r.notAcquired(ctx)
	}
	if b.pool == nil {
		return r.errorf("nil pool")
	}
	if err := b.ensureFencing(ctx); err != nil {
		return r.errorf("%w", err)
	}
	return nil
}

// try takes r on a lock connection with a non-blocking try.
func (b *Backend) try(ctx context.Context, r req) (*Lease, bool, error) {
	if err := b.begin(ctx, r); err != nil {
		return nil, false, err
	}
	for attempt := 0; ; attempt++ {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, false, r.errorf("%w", errClosed)
		}
		if b.conflictsLocked(r.key, r.mode) {
			b.mu.Unlock()
			return nil, false, nil // held by a lease of this backend
		}
		lc := b.pickLocked(r.key, true)
		if lc != nil {
			lc.pending++
			lc.keys[r.key] = struct{}{}
		}
		b.mu.Unlock()
		if lc == nil {
			var err error
			if lc, err = b.newConn(ctx, r); err != nil {
				return nil, false, err
			}
			lc.pending++
			lc.keys[r.key] = struct{}{}
			b.addConnLocked(lc)
			b.mu.Unlock()
		}
		l, ok, err, retry := b.tryOn(ctx, lc, r)
		if retry && attempt < 3 {
			continue
		}
		return l, ok, err
	}
}

// newConn takes a pool connection for a new lock connection and returns
// with b.mu held, the backend open.
func (b *Backend) newConn(ctx context.Context, r req) (*lockConn, error) {
	pc, err := b.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, r.notAcquired(ctx)
		}
		return nil, r.errorf("acquire a connection: %w", err)
	}
	lc := newLockConn(pc)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		pc.Release()
		return nil, r.errorf("%w", errClosed)
	}
	return lc, nil
}

// tryOn runs the try of r on lc, on which r.key is reserved. retry reports
// that lc was gone before the try was sent.
func (b *Backend) tryOn(ctx context.Context, lc *lockConn, r req) (l *Lease, ok bool, err error, retry bool) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	b.mu.Lock()
	if lc.gone {
		lc.pending--
		b.mu.Unlock()
		return nil, false, r.errorf("lock connection closed"), true
	}
	b.mu.Unlock()
	fn := "pg_try_advisory_lock"
	if r.mode == shared {
		fn = "pg_try_advisory_lock_shared"
	}
	sql := b.lockSQL(fn+"("+r.key.String()+")", "v", r.fence)
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.opTimeout)
	row, qerr := query(qctx, lc.pc.Conn().PgConn(), sql)
	cancel()
	if qerr == nil {
		ok = len(row) > 0 && string(row[0]) == "t"
		l, qerr = b.leaseFrom(r, row, ok)
	}
	if qerr != nil {
		// The try may have taken the lock (a fencing failure): undo it, or
		// end the session.
		b.undoOrFail(lc, r.key, r.mode, qerr)
		b.mu.Lock()
		lc.pending--
		if !lc.gone {
			delete(lc.keys, r.key)
		}
		retire := b.retireIfIdleLocked(lc)
		b.mu.Unlock()
		if retire {
			lc.pc.Release()
		}
		return nil, false, r.errorf("try: %w", qerr), false
	}
	b.mu.Lock()
	lc.pending--
	if ok {
		b.attachLocked(lc, l)
	} else {
		delete(lc.keys, r.key)
	}
	retire := b.retireIfIdleLocked(lc)
	b.mu.Unlock()
	if retire {
		lc.pc.Release()
	}
	return l, ok, nil, false
}

// leaseFrom makes the lease of a successful acquisition from its result
// row (value, token).
func (b *Backend) leaseFrom(r req, row [][]byte, ok bool) (*Lease, error) {
	if !ok {
		return nil, nil
	}
	l := &Lease{b: b, kind: r.kind, name: r.name, key: r.key, mode: r.mode, lostCh: make(chan struct{})}
	if r.kind == "semaphore" {
		l.topic = r.fence.String() // a decimal: safe in an SQL literal
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
	pgc := lc.pc.Conn().PgConn()
	if pgc.IsClosed() {
		b.fail(lc, cause)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.opTimeout)
	defer cancel()
	if _, err := unlock(ctx, pgc, k, m); err != nil {
		b.fail(lc, cause)
	}
}

// wait takes r, queueing on the server if it is held.
func (b *Backend) wait(ctx context.Context, r req) (*Lease, error) {
	if err := b.begin(ctx, r); err != nil {
		return nil, err
	}
	// First a try (one short statement, on a lock connection, or on a
	// pool connection that becomes one): most locks are free, and a lease
	// there needs no connection of its own. Only a lock held elsewhere
	// costs the blocking statement, on a connection of its own.
	b.mu.Lock()
	tryFirst := !b.conflictsLocked(r.key, r.mode)
	b.mu.Unlock()
	if tryFirst {
		l, ok, err := b.try(ctx, r)
		if err != nil || ok {
			return l, err
		}
	}
	return b.waitBlocking(ctx, r)
}

// waitBlocking takes r with a blocking wait on a connection of its own,
// which never holds r already (it is not a lock connection), so the
// server's queue decides; after the grant that connection becomes a lock
// connection holding the lease.
func (b *Backend) waitBlocking(ctx context.Context, r req) (*Lease, error) {
	pc, err := b.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, r.notAcquired(ctx)
		}
		return nil, r.errorf("acquire a connection: %w", err)
	}
	fn := "pg_advisory_lock"
	if r.mode == shared {
		fn = "pg_advisory_lock_shared"
	}
	sql := b.lockSQL(fn+"("+r.key.String()+")", "", r.fence)
	row, err := b.block(ctx, pc, sql, r.key, r.mode)
	if err != nil {
		if ctx.Err() != nil {
			return nil, r.notAcquired(ctx)
		}
		return nil, r.errorf("wait: %w", err)
	}
	l, err := b.leaseFrom(r, row, true)
	lc := newLockConn(pc)
	if err == nil {
		b.mu.Lock()
		if !b.closed {
			b.addConnLocked(lc)
			b.attachLocked(lc, l)
			b.mu.Unlock()
			return l, nil
		}
		b.mu.Unlock()
		err = errClosed
	}
	release(pc, r.key, r.mode, b.cfg.opTimeout)
	return nil, r.errorf("wait: %w", err)
}

// release unlocks k on pc, a connection that is not a lock connection, and
// gives pc back to the pool, or destroys it if the unlock fails.
func release(pc *pgxpool.Conn, k Key, m mode, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := unlock(ctx, pc.Conn().PgConn(), k, m); err != nil {
		destroy(pc)
		return
	}
	pc.Release()
}

// block runs sql, a blocking lock statement, on pc, bounded by ctx on the
// server: lock_timeout from ctx's deadline (SET LOCAL in the statement's
// own implicit transaction, so it never outlives it), and a cancel request
// when ctx ends. On success pc's session holds k and pc is still the
// caller's. On error the session does not hold k and pc has been given back
// to the pool (or destroyed).
func (b *Backend) block(ctx context.Context, pc *pgxpool.Conn, sql string, k Key, m mode) ([][]byte, error) {
	pgc := pc.Conn().PgConn()
	for {
		var ms int64 // lock_timeout; 0: none
		if dl, ok := ctx.Deadline(); ok {
			// Just after the deadline: the cancel request on ctx's end
			// usually comes first, and either way the result is the same.
			ms = max(time.Until(dl).Milliseconds()+2, 1)
		}
		timeout := strconv.FormatInt(ms, 10)
		full := "SET LOCAL lock_timeout = " + timeout + "; SET LOCAL statement_timeout = 0; " + sql
		row, cancelled, err := runCancellable(ctx, pgc, full, b.cfg.opTimeout)
		switch {
		case err == nil && !cancelled:
			return row, nil
		case err == nil:
			// Granted just as ctx ended: the caller has gone, give it back.
			release(pc, k, m, b.cfg.opTimeout)
			return nil, ctx.Err()
		case pgc.IsClosed():
			pc.Release() // destroyed by the pool
			return nil, err
		}
		// The statement failed, but not always before the lock: a cancel
		// or a timeout can strike after the grant, within the statement
		// (and a fencing failure comes after it), and a session lock
		// outlives its statement. So unlock in every case (a harmless
		// warning when not held) before the connection goes back.
		release(pc, k, m, b.cfg.opTimeout)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "57014" || pgErr.Code == "55P03") {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if pgErr.Code == "55P03" {
				// lock_timeout fired a moment before ctx's deadline.
				if pc, err = b.pool.Acquire(ctx); err != nil {
					return nil, err
				}
				pgc = pc.Conn().PgConn()
				continue
			}
		}
		return nil, err
	}
}

// runCancellable runs sql on pgc; when ctx ends first it sends the server a
// cancel request, and if the statement still does not end within grace it
// closes the connection. cancelled reports that a cancel request was sent;
// it has then been delivered (or given up) before runCancellable returns,
// so it cannot hit a later statement.
func runCancellable(ctx context.Context, pgc *pgconn.PgConn, sql string, grace time.Duration) (row [][]byte, cancelled bool, err error) {
	qctx, qcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer qcancel()
	done := make(chan struct{})
	cancelDone := make(chan struct{})
	var sent atomic.Bool
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelDone)
		sent.Store(true)
		cctx, cancel := context.WithTimeout(context.Background(), grace)
		err := pgc.CancelRequest(cctx)
		cancel()
		if err != nil {
			qcancel() // no way to reach the server: drop the connection
			return
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			qcancel()
		}
	})
	row, err = query(qctx, pgc, sql)
	close(done)
	if !stop() {
		<-cancelDone
	}
	return row, sent.Load(), err
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

// unlock releases k on pgc's session; ok reports that it was held.
func unlock(ctx context.Context, pgc *pgconn.PgConn, k Key, m mode) (bool, error) {
	return unlockNotify(ctx, pgc, k, m, "")
}

// unlockNotify is unlock that also, when topic is not "", notifies the
// semaphore waiters of topic (semChannel), in the same statement.
func unlockNotify(ctx context.Context, pgc *pgconn.PgConn, k Key, m mode, topic string) (bool, error) {
	fn := "pg_advisory_unlock"
	if m == shared {
		fn = "pg_advisory_unlock_shared"
	}
	sql := "SELECT " + fn + "(" + k.String() + ")"
	if topic != "" {
		sql += ", pg_notify('" + semChannel + "', '" + topic + "')"
	}
	row, err := query(ctx, pgc, sql)
	if err != nil {
		return false, err
	}
	return len(row) > 0 && string(row[0]) == "t", nil
}

// lockSQL builds the statement that evaluates expr (which takes the lock)
// and, with fencing on, bumps the lock's fencing row in the same statement
// when cond (an SQL condition on expr's value v; "" for always) holds.
// Its first column is expr's value, its second the token.
func (b *Backend) lockSQL(expr, cond string, fence Key) string {
	if b.cfg.fenceTable == "" {
		return "SELECT " + expr
	}
	t := b.cfg.fenceTable
	space := "1"
	if fence.pair {
		space = "2"
	}
	var s strings.Builder
	s.WriteString("WITH l AS (SELECT ")
	s.WriteString(expr)
	s.WriteString(" AS v), t AS (INSERT INTO ")
	s.WriteString(t)
	s.WriteString(" (space, key, token) SELECT ")
	s.WriteString(space)
	s.WriteString(", ")
	s.WriteString(strconv.FormatInt(fence.v, 10))
	s.WriteString(", 1 FROM l")
	if cond != "" {
		s.WriteString(" WHERE ")
		s.WriteString(cond)
	}
	s.WriteString(" ON CONFLICT (space, key) DO UPDATE SET token = ")
	s.WriteString(t)
	s.WriteString(".token + 1 RETURNING token) SELECT ")
	if cond == "" {
		s.WriteString("'t'")
	} else {
		s.WriteString("l.v")
	}
	s.WriteString(", (SELECT token FROM t) FROM l")
	return s.String()
}

// ensureFencing creates the fencing table once, when fencing is on.
func (b *Backend) ensureFencing(ctx context.Context) error {
	if b.cfg.fenceTable == "" {
		return nil
	}
	b.fenceMu.Lock()
	defer b.fenceMu.Unlock()
	if b.fenceReady {
		return nil
	}
	_, err := b.pool.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+b.cfg.fenceTable+
		" (space smallint NOT NULL, key bigint NOT NULL, token bigint NOT NULL, PRIMARY KEY (space, key))")
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "42P07")) {
		return fmt.Errorf("create fencing table %s: %w", b.cfg.fenceTable, err)
	}
	b.fenceReady = true
	return nil
}
