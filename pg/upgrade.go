package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
)

// Upgradeable read locks.
//
// Every RWMutex name has a third advisory key besides RWKey(name): its
// upgrade key (rwUpgradeKey). The upgradeable reader holds RWKey(name)
// shared, like a reader, and the upgrade key exclusive, so there is at
// most one. A writer takes the upgrade key before RWKey(name), in the
// statement of its try or wait, and lets it go in the same statement once
// it holds RWKey(name): so no writer gets in, or even queues for
// RWKey(name), while an upgradeable reader holds the name. The upgrade key
// is always taken before RWKey(name), so no wait closes a cycle.
//
// The upgradeable reader's locks sit on a shared lock connection, like any
// lease's, and a blocking statement never runs there. So Upgrade first
// tries on that session (pg_try_advisory_lock(RWKey(name)) while it holds
// the shared lock: granted when no other session holds it; then, in the
// same statement, the shared lock and the upgrade key are let go, and the
// lease is a writer's). When readers hold it, Upgrade queues a blocking
// pg_advisory_lock(RWKey(name)) on a pool connection of its own (as a wait
// does); once pg_locks shows that request waiting, the lease's session
// lets go of its shared lock. From then on new readers queue behind the
// request (PostgreSQL's writer preference) and writers cannot come near
// (the upgrade key is still held), so nobody but the readers already in
// gets the name before the upgrade: the read access is never given up to
// a writer. When the request is granted the lease moves to that
// connection, which becomes a lock connection, and the old session lets
// go of the upgrade key. When ctx ends first (or lock_timeout, from ctx's
// deadline), the request is cancelled on the server and the old session
// takes its shared lock back (nothing can hold the name exclusively: the
// upgrade key keeps writers out), so the lease is the upgradeable reader
// again. A loss of the lease's session while the request waits cancels
// it.

// TryULock makes one attempt to take name as its upgradeable reader (the
// name's upgrade key and RWKey(name) shared, in one statement). It fails
// while a writer holds name or queues for it, while another upgradeable
// reader holds it, or while others queue for the upgradeable read lock.
// It implements backend.UpgradeableLocker.
func (b *Backend) TryULock(ctx context.Context, name string) (*Lease, bool, error) {
	return b.try(ctx, uReq(name))
}

// ULock takes name as its upgradeable reader, waiting in the server's lock
// queues (first of the upgrade key, then of RWKey(name) shared, behind
// waiting writers) until it is granted or ctx is done. It implements
// backend.UpgradeableWaiter.
func (b *Backend) ULock(ctx context.Context, name string) (*Lease, error) {
	return b.wait(ctx, uReq(name))
}

func uReq(name string) req {
	k := RWKey(name)
	return req{kind: "rwmutex", name: name, key: k, mode: shared, fence: k, upgrade: rwUpgradeKey(name), ukind: uReader}
}

// unlockUpgradeable runs the unlock of an upgradeable reader on its
// connection (the caller holds it): ok reports that it held both locks.
func (l *Lease) unlockUpgradeable(ctx context.Context) (bool, error) {
	row, err := query(ctx, l.lc.pc.Conn().PgConn(), l.b.relaxed()+l.b.holderDel(l.key)+undoSQL(req{key: l.key, mode: shared, upgrade: *l.ukey}))
	if err != nil {
		return false, err
	}
	return len(row) == 2 && string(row[0]) == "t" && string(row[1]) == "t", nil
}

// Upgrade makes the upgradeable reader l the writer of its name, without
// letting a writer in: it waits in the server's queue until the other
// readers have left, while new readers queue behind it (see the package
// doc). When ctx ends first, or on any error but a loss, l still holds the
// upgradeable read lock; a loss meanwhile returns an error matching
// dlock.ErrLockLost. It needs a pool connection of its own while it waits
// (ErrNoConnection when the pool has none to give). l keeps its fencing
// token. It must not run concurrently with l's Release. It implements
// backend.Upgrader.
func (l *Lease) Upgrade(ctx context.Context) error {
	_, err := l.upgrade(ctx, true)
	return err
}

// TryUpgrade is Upgrade with one attempt, on l's session: it fails while
// another session holds the name. It implements backend.Upgrader.
func (l *Lease) TryUpgrade(ctx context.Context) (bool, error) {
	return l.upgrade(ctx, false)
}

func (l *Lease) upgrade(ctx context.Context, wait bool) (bool, error) {
	if !l.upgradeable {
		return false, backend.Permanent(fmt.Errorf("upgrade: %w: not an upgradeable read lock", errors.ErrUnsupported))
	}
	for {
		if l.released.Load() {
			return false, fmt.Errorf("upgrade: %w", backend.ErrNotHeld)
		}
		if err := l.lostErr(); err != nil {
			return false, err
		}
		l.b.mu.Lock()
		done := l.ukey == nil
		l.b.mu.Unlock()
		if done {
			return true, nil
		}
		if ctx.Err() != nil {
			return false, fmt.Errorf("upgrade: %w: %w", backend.ErrNotAcquired, ctx.Err())
		}
		ok, err := l.tryUpgrade(ctx)
		if err != nil || ok || !wait {
			return ok, err
		}
		ok, err = l.upgradeQueued(ctx)
		if errors.Is(err, errEarly) {
			continue
		}
		return ok, err
	}
}

// lostErr returns an error matching backend.ErrLockLost if l is lost.
func (l *Lease) lostErr() error {
	b := l.b
	b.mu.Lock()
	lost, cause := l.lost, l.lc.cause
	b.mu.Unlock()
	if !lost {
		return nil
	}
	if cause == nil {
		cause = errors.New("unknown cause")
	}
	return fmt.Errorf("upgrade: %w: its connection failed: %w", backend.ErrLockLost, cause)
}

// stmt runs sql, a short statement, on lc for l (bounded by WithOpTimeout,
// not by ctx: it must complete), and returns its row. A statement that
// fails ends the session (its locks are then unknown): l is lost.
func (l *Lease) stmt(ctx context.Context, lc *lockConn, sql string) ([][]byte, error) {
	b := l.b
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.opTimeout)
	defer cancel()
	if !lc.lock(qctx) {
		return nil, fmt.Errorf("upgrade: the lock connection stayed busy: %w", qctx.Err())
	}
	if err := b.pause(lc); err != nil {
		b.fail(lc, err)
	}
	b.mu.Lock()
	gone, cause := lc.gone, lc.cause
	b.mu.Unlock()
	if gone {
		lc.unlock()
		if cause == nil {
			cause = errors.New("connection gone")
		}
		return nil, fmt.Errorf("upgrade: %w: its connection failed: %w", backend.ErrLockLost, cause)
	}
	row, err := query(qctx, lc.pc.Conn().PgConn(), sql)
	if err != nil {
		b.fail(lc, fmt.Errorf("upgrade: %w", err))
		lc.unlock()
		return nil, fmt.Errorf("upgrade: %w: a statement on its connection failed, so it was closed: %w", backend.ErrLockLost, err)
	}
	b.done(lc)
	return row, nil
}

// tryUpgrade takes the write lock on l's session if no other session holds
// the name, and then lets go of the shared lock and the upgrade key.
func (l *Lease) tryUpgrade(ctx context.Context) (bool, error) {
	b, k, u := l.b, l.key.String(), l.ukey.String()
	sql := "SELECT CASE WHEN pg_try_advisory_lock(" + k + ") THEN pg_advisory_unlock_shared(" + k +
		")::int + pg_advisory_unlock(" + u + ")::int ELSE -1 END"
	if t := b.cfg.holderTable; t != "" {
		// Its record says writer from now on.
		sql = "WITH x AS (" + sql + " AS v), hu AS (UPDATE " + t + " SET shared = false WHERE space = 1 AND key = " + k +
			" AND pid = pg_backend_pid() AND (SELECT v FROM x) = 2) SELECT v FROM x"
	}
	row, err := l.stmt(ctx, l.lc, sql)
	if err != nil {
		return false, err
	}
	switch {
	case len(row) == 1 && string(row[0]) == "-1":
		return false, nil
	case len(row) == 1 && string(row[0]) == "2":
		b.mu.Lock()
		if !l.lost {
			l.becomeWriterLocked(l.lc)
		}
		b.mu.Unlock()
		return true, l.lostErr()
	}
	err = fmt.Errorf("upgrade: unexpected result %q: the session did not hold the upgradeable read lock", row)
	l.lc.lockWait()
	b.fail(l.lc, err)
	l.lc.unlock()
	return false, fmt.Errorf("%w: %w", backend.ErrLockLost, err)
}

// becomeWriterLocked makes l, whose write lock lc's session holds, its
// name's writer there: it no longer holds the shared lock or the upgrade
// key (on its former connection, which the caller unlocks).
func (l *Lease) becomeWriterLocked(lc *lockConn) {
	b, old := l.b, l.lc
	b.unholdLeaseLocked(l)
	delete(old.leases, l)
	delete(old.keys, l.key)
	delete(old.keys, *l.ukey)
	l.ukey, l.mode = nil, exclusive
	b.attachLocked(lc, l)
}

// upgradeQueued queues the write lock on a connection of its own, lets
// go of the shared lock once the request waits, and moves l to that
// connection once it is granted (see above).
func (l *Lease) upgradeQueued(ctx context.Context) (bool, error) {
	b, key, ukey := l.b, l.key, *l.ukey
	pc, err := b.acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return false, fmt.Errorf("upgrade: %w: %w (%w)", backend.ErrNotAcquired, ctx.Err(), err)
		}
		return false, fmt.Errorf("upgrade: %w", err)
	}
	b.mu.Lock()
	b.writers[key]++
	b.mu.Unlock()
	leave := b.enqueue(key) // this backend's tries hold back, as the server's queue makes others'
	defer func() {
		leave()
		b.mu.Lock()
		if b.writers[key]--; b.writers[key] <= 0 {
			delete(b.writers, key)
		}
		b.mu.Unlock()
	}()

	pgc := pc.Conn().PgConn()
	var ms int64 // lock_timeout; 0: none
	if dl, ok := ctx.Deadline(); ok {
		ms = max(time.Until(dl).Milliseconds()+2, 1)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopLoss := l.AfterLost(cancel) // a loss (or Release) ends the wait
	defer stopLoss()
	type result struct {
		cancelled bool
		err       error
	}
	res := make(chan result, 1)
	go func() { // received from below on every path
		_, cancelled, err := runCancellable(wctx, pgc, func(qctx context.Context) ([][]byte, error) {
			return nil, lockBlocking(qctx, pc.Conn(), ms, key, exclusive)
		}, b.cfg.opTimeout)
		res <- result{cancelled, err}
	}()

	// Let go of the shared lock once the request waits.
	k := key.String()
	check := "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = " +
		strconv.FormatUint(uint64(pgc.PID()), 10) + ") THEN pg_advisory_unlock_shared(" + k + ")::int ELSE -1 END"
	var (
		r       result
		got     bool
		let     bool // the shared lock was let go
		lostErr error
	)
	p := pace.New(time.Millisecond, 20*time.Millisecond)
	t := time.NewTimer(time.Millisecond)
	for !got && !let && lostErr == nil {
		select {
		case r = <-res:
			got = true
			continue
		case <-t.C:
		}
		row, err := l.stmt(ctx, l.lc, check)
		switch {
		case err != nil:
			lostErr = err
		case len(row) == 1 && string(row[0]) == "1":
			let = true
		case len(row) == 1 && string(row[0]) == "-1":
			t.Reset(p.Next())
		default:
			lostErr = fmt.Errorf("upgrade: %w: the session no longer held the read lock", backend.ErrLockLost)
		}
	}
	t.Stop()
	if lostErr != nil {
		cancel()
	}
	if !got {
		r = <-res
	}
	if err := l.lostErr(); err != nil && lostErr == nil {
		lostErr = err
	}

	if r.err == nil && lostErr == nil && let {
		// Granted: the lease moves to pc.
		lc := newLockConn(pc)
		lc.lockWait()
		b.mu.Lock()
		if b.closed || l.lost {
			b.mu.Unlock()
			lc.unlock()
			release(pc, key, exclusive, b.cfg.opTimeout)
			if err := l.lostErr(); err != nil {
				return false, err
			}
			return false, fmt.Errorf("upgrade: %w", errClosed)
		}
		old := l.lc
		b.addConnLocked(lc)
		l.becomeWriterLocked(lc)
		b.mu.Unlock()
		b.resume(lc)
		lc.unlock()
		// The old session lets go of the upgrade key (and its holder
		// record); if it cannot, it ends (which frees it), and only its
		// other leases are lost.
		_, _ = l.stmt(ctx, old, b.holderDel(key)+"SELECT pg_advisory_unlock("+ukey.String()+")")
		if t := b.cfg.holderTable; t != "" {
			// The record moves to the new session, as a writer's.
			if _, err := l.stmt(ctx, lc, "INSERT INTO "+t+" (space, key, pid, shared, rec) VALUES (1, "+k+", pg_backend_pid(), false, "+
				dollarQuote(l.rec)+") ON CONFLICT (space, key, pid) DO UPDATE SET shared = false, rec = EXCLUDED.rec"); err != nil {
				return false, err
			}
		}
		return true, nil
	}

	// Not granted (or granted too late): give the request up.
	if r.err == nil {
		release(pc, key, exclusive, b.cfg.opTimeout)
	} else if pgc.IsClosed() {
		pc.Release() // destroyed by the pool
	} else {
		release(pc, key, exclusive, b.cfg.opTimeout) // a grant can land within a cancelled statement
	}
	if lostErr != nil {
		return false, lostErr
	}
	if let {
		// Take the shared lock back: no one can hold the name
		// exclusively (the upgrade key keeps writers out).
		row, err := l.stmt(ctx, l.lc, "SELECT pg_try_advisory_lock_shared("+k+")")
		if err != nil {
			return false, err
		}
		if len(row) != 1 || string(row[0]) != "t" {
			err := fmt.Errorf("upgrade: %w: the read lock could not be taken back after the upgrade failed (a transaction-scoped write lock of the name?)", backend.ErrLockLost)
			l.lc.lockWait()
			b.fail(l.lc, err)
			l.lc.unlock()
			return false, err
		}
	}
	var pgErr *pgconn.PgError
	switch {
	case ctx.Err() != nil:
		return false, fmt.Errorf("upgrade: %w: %w", backend.ErrNotAcquired, ctx.Err())
	case errors.As(r.err, &pgErr) && pgErr.Code == "55P03":
		return false, errEarly // lock_timeout a moment before ctx's deadline
	case r.err == nil:
		return false, errors.New("upgrade: granted before the read lock was let go")
	}
	return false, fmt.Errorf("upgrade: %w", r.err)
}
