package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// Combined statements: when several goroutines share a lock connection,
// their tries and unlocks — the statements of the uncontended path, when
// neither fencing nor holder records are on — are sent together, as one
// statement that runs them in the order they arrived, in one round trip
// and one transaction of the server.
//
// An operation queues its call on the connection (exec). Whoever takes
// the connection's lock next — the call's own goroutine, or another one
// that queued a call — runs every call queued by then (runCalls): it
// pauses the watcher once, sends one statement (the prepared single-key
// statement when it has one call, else combineSQL), does each call's
// bookkeeping in arrival order, resumes the watcher (or gives the
// connection back to the pool) once, and wakes the calls' goroutines. A
// call that waits for its turn gives up (taking nothing) when its ctx ends
// (a try) or its deadline passes (an unlock, which then ends the
// connection as Release does) before a runner takes it; once taken, it is
// run, bounded by the earliest deadline of the calls of its statement
// (calls due soon are sent alone: see runStatements).
//
// The advisory lock functions are not transactional: when a combined
// statement fails on a session that lives on, the rows before the failing
// one ran and the rest did not. The runner then reads which of the calls'
// keys the session holds (pg_locks) and settles each call from that: a
// try whose key is held took it; an unlock whose key is no longer held ran;
// the others are run again, one statement each (resolve).

// combineSQL runs calls of keyFn fnTry, fnTryShared, fnUnlock and
// fnUnlockShared ($1) on bigint keys ($2), in array order, one row each.
const (
	combineName = "dlock_combined"
	combineSQL  = "SELECT CASE t.f WHEN 0 THEN pg_try_advisory_lock(t.k) WHEN 1 THEN pg_try_advisory_lock_shared(t.k) " +
		"WHEN 2 THEN pg_advisory_unlock(t.k) WHEN 3 THEN pg_advisory_unlock_shared(t.k) END " +
		"FROM unnest($1::integer[], $2::bigint[]) AS t(f, k)"
	// heldSQL lists the bigint advisory keys (objsubid 1) the session holds.
	heldSQL = "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks " +
		"WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND pid = pg_backend_pid()"
)

// combineSQL numbers the functions as keyFn does: this fails to compile
// if they differ.
const _ = uint8(fnTry-0) + uint8(0-fnTry) + uint8(fnTryShared-1) + uint8(1-fnTryShared) +
	uint8(fnUnlock-2) + uint8(2-fnUnlock) + uint8(fnUnlockShared-3) + uint8(3-fnUnlockShared)

// call is one try or unlock queued on a lock connection.
type call struct {
	fn  keyFn
	r   req             // a try's request; an unlock's key in r.key
	l   *Lease          // the lease an unlock releases; a try's lease once granted
	dl  time.Time       // the statement must end by then
	ctx context.Context // its caller's: values for a pool's tracer (stmtCtx)

	// Set by the runner, read once done has a value.
	ok    bool  // the statement returned true
	err   error // the outcome (see tryDone and unlockDone)
	ended bool  // a try took nothing because its session ended

	taken bool          // a runner took it; guarded by lockConn.qmu
	done  chan struct{} // receives a value once the call is settled
}

// tryCall runs the try of r, a combinable request, on lc (picked with
// r.key reserved) as a call: tryOn's counterpart.
func (b *Backend) tryCall(ctx context.Context, lc *lockConn, r req, fresh bool) (l *Lease, ok bool, err error, retry bool) {
	if err := b.connReady(ctx, lc, fresh); err != nil {
		err = b.untake(ctx, lc, r.key, true, err)
		if errors.Is(err, errRetry) {
			return nil, false, err, true
		}
		return nil, false, r.errorf("%w", err), false
	}
	c := getCall()
	defer putCall(c)
	c.fn, c.r, c.ctx, c.dl = fnTry, r, ctx, time.Now().Add(b.cfg.opTimeout)
	if r.mode == shared {
		c.fn = fnTryShared
	}
	if !b.exec(lc, c, ctx, time.Time{}) {
		return nil, false, r.errorf("%w", b.untake(ctx, lc, r.key, true, ctx.Err())), false
	}
	switch {
	case errors.Is(c.err, errRetry):
		return nil, false, c.err, true
	case c.err != nil:
		return nil, false, c.err, c.ended && ctx.Err() == nil
	}
	return c.l, c.ok, nil, false
}

// releaseCall releases l, a lease of lc that the caller marked released,
// as a call, bounded by ctx's deadline (else WithOpTimeout), and sets
// errs[0] to the outcome: Release's counterpart of releaseOn.
func (b *Backend) releaseCall(ctx context.Context, lc *lockConn, l *Lease, errs []error) {
	dl, hasDL := ctx.Deadline()
	if !hasDL {
		dl = time.Now().Add(b.cfg.opTimeout)
	}
	c := getCall()
	defer putCall(c)
	c.fn, c.r.key, c.l, c.ctx, c.dl = fnUnlock, l.key, l, ctx, dl
	if l.mode == shared {
		c.fn = fnUnlockShared
	}
	if !b.exec(lc, c, nil, dl) {
		b.releaseBusy(lc, []*Lease{l}, errs)
		return
	}
	errs[0] = c.err
}

// combinableLease reports whether the release of l runs as a call: a
// single key of the bigint space, no upgrade key, no holder record, no
// semaphore waiters to notify.
func (b *Backend) combinableLease(l *Lease) bool {
	return b.cfg.holderTable == "" && l.ukey == nil && l.topic == "" && !l.key.pair
}

// calls holds settled calls for reuse: a try or an unlock queues one.
var calls = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall() *call { return calls.Get().(*call) }

func putCall(c *call) {
	done := c.done
	*c = call{done: done}
	calls.Put(c)
}

// combinable reports whether a try of r runs as a call: a single key of
// the bigint space, with neither fencing nor holder records.
func (b *Backend) combinable(r req) bool {
	return b.cfg.fenceTable == "" && b.cfg.holderTable == "" && r.ukind == uNone && !r.key.pair
}

// exec queues c on lc and returns once it is settled (true), or false
// when, before a runner took it, ctx ended (a try; ctx non-nil) or dl
// passed (an unlock; ctx nil): c is then no longer queued and took
// nothing.
func (b *Backend) exec(lc *lockConn, c *call, ctx context.Context, dl time.Time) bool {
	lc.qmu.Lock()
	lc.q = append(lc.q, c)
	lc.qmu.Unlock()
	if !lc.tryLock() {
		var (
			stop    <-chan struct{}
			expired <-chan time.Time
		)
		if ctx != nil {
			stop = ctx.Done()
		} else {
			t := getTimer(time.Until(dl))
			defer putTimer(t)
			expired = t.C
		}
		select {
		case lc.sem <- struct{}{}:
		case <-c.done:
			return true
		case <-stop:
			return lc.abandon(c)
		case <-expired:
			return lc.abandon(c)
		}
	}
	// This goroutine holds lc's lock: c is queued still, or settled by a
	// runner before it let the lock go.
	b.runCalls(lc)
	lc.unlock()
	<-c.done
	return true
}

// abandon takes c out of lc's queue, unless a runner took it: then it
// waits for c to be settled (the runner bounds it) and returns true.
func (lc *lockConn) abandon(c *call) bool {
	if lc.unqueue(c) {
		return false
	}
	<-c.done
	return true
}

// unqueue takes c out of lc's queue unless a runner took it, and
// reports whether it did.
func (lc *lockConn) unqueue(c *call) bool {
	lc.qmu.Lock()
	defer lc.qmu.Unlock()
	if c.taken {
		return false
	}
	for i, q := range lc.q {
		if q == c {
			lc.q = append(lc.q[:i], lc.q[i+1:]...)
			lc.q[len(lc.q):cap(lc.q)][0] = nil // the slot past the end kept c
			break
		}
	}
	return true
}

// runCalls runs the calls queued on lc and settles them. The caller holds
// lc's lock.
func (b *Backend) runCalls(lc *lockConn) {
	lc.qmu.Lock()
	batch := lc.q
	lc.q = lc.spare
	lc.spare = nil
	for _, c := range batch {
		c.taken = true
	}
	lc.qmu.Unlock()
	if len(batch) == 0 {
		lc.qmu.Lock()
		lc.spare = batch
		lc.qmu.Unlock()
		return
	}
	b.mu.Lock()
	sent := !lc.gone
	b.mu.Unlock()
	if sent {
		if err := b.pause(lc); err != nil {
			b.fail(lc, err)
			sent = false
		}
	}
	if sent {
		b.runStatements(lc, batch)
	}
	for _, c := range batch {
		if c.l != nil && c.fn >= fnUnlock {
			b.unlockDone(lc, c, sent)
		} else {
			b.tryDone(lc, c, sent)
		}
	}
	b.idle(lc)
	for _, c := range batch {
		c.done <- struct{}{}
	}
	clear(batch)
	lc.qmu.Lock()
	lc.spare = batch[:0]
	lc.qmu.Unlock()
}

// soloMargin is how soon (at most; half of WithOpTimeout when that is
// shorter) a call's deadline must be for it to run alone.
const soloMargin = time.Second

// runStatements runs the statements of batch on lc, its watcher paused,
// and sets each call's ok and err. A statement is bounded by the earliest
// deadline of its calls, and ends the connection when it overruns it: so
// calls due within soloMargin run first, each alone, and the others
// together, so that a caller's short deadline (a Release under a ctx
// about to end) never cuts the others' statement short. It may reorder
// batch.
func (b *Backend) runStatements(lc *lockConn, batch []*call) {
	if len(batch) > 1 {
		soon := time.Now().Add(min(b.cfg.opTimeout/2, soloMargin))
		k := 0
		for i, c := range batch {
			if c.dl.Before(soon) {
				batch[i], batch[k] = batch[k], batch[i]
				k++
			}
		}
		if k > 0 {
			for i := range k {
				b.runStatement(lc, batch[i:i+1])
			}
			if k < len(batch) {
				b.runStatement(lc, batch[k:])
			}
			return
		}
	}
	b.runStatement(lc, batch)
}

// runStatement runs batch as one statement on lc, bounded by the earliest
// deadline of its calls, and sets each call's ok and err.
func (b *Backend) runStatement(lc *lockConn, batch []*call) {
	dl := batch[0].dl
	for _, c := range batch[1:] {
		if c.dl.Before(dl) {
			dl = c.dl
		}
	}
	ctx := b.stmtCtx(batch[0].ctx)
	bound := lc.boundStmt(dl)
	var err error
	if len(batch) == 1 {
		c := batch[0]
		c.ok, err = callKeyFn(ctx, lc.pc.Conn(), c.fn, c.r.key)
	} else {
		err = b.combined(ctx, lc, batch)
		if err != nil && !lc.pc.Conn().PgConn().IsClosed() && lc.bound.Stop() {
			// The session lives on, and the statement timer has not
			// fired: settle each call (timer re-armed by resolve).
			bound = lc.boundStmt(dl)
			err = b.resolve(ctx, lc, batch)
		}
	}
	err = lc.endStmt(err, bound)
	for _, c := range batch {
		if c.err == nil {
			c.err = err
		}
	}
}

// combined runs batch as one statement (combineSQL) and sets each call's
// ok. The caller holds lc's lock.
func (b *Backend) combined(ctx context.Context, lc *lockConn, batch []*call) error {
	fs, ks := lc.params[0][:0], lc.params[1][:0]
	fs, ks = append(fs, '{'), append(ks, '{')
	for i, c := range batch {
		if i > 0 {
			fs, ks = append(fs, ','), append(ks, ',')
		}
		fs = strconv.AppendInt(fs, int64(c.fn), 10)
		ks = strconv.AppendInt(ks, c.r.key.v, 10)
	}
	fs, ks = append(fs, '}'), append(ks, '}')
	lc.params[0], lc.params[1] = fs, ks
	ps := [2][]byte{fs, ks}
	n := 0
	err := runStmt(ctx, lc.pc.Conn().PgConn(), combineName, combineSQL, ps[:], func(vals [][]byte) {
		if n < len(batch) {
			batch[n].ok = len(vals) > 0 && len(vals[0]) > 0 && vals[0][0] == 't'
		}
		n++
	})
	if err == nil && n != len(batch) {
		err = fmt.Errorf("combined statement: %d rows for %d calls", n, len(batch))
	}
	return err
}

// resolve settles the calls of batch after their combined statement
// failed on a session that lives on: some of its rows ran, the others did
// not. It reads which keys the session holds and decides each call from
// that, running again, alone, those whose row may not have run. Each call
// holds the only reservation of its key on the session (pickLocked), so
// a key held now is held once. The caller holds lc's lock.
func (b *Backend) resolve(ctx context.Context, lc *lockConn, batch []*call) error {
	conn := lc.pc.Conn()
	rows, err := conn.Query(ctx, heldSQL)
	if err != nil {
		return err
	}
	held := make(map[int64]bool, len(batch))
	for rows.Next() {
		var k int64
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return err
		}
		held[k] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, c := range batch {
		h := held[c.r.key.v]
		switch {
		case c.fn < fnUnlock && h: // the try ran and took it
			c.ok = true
		case c.fn >= fnUnlock && !h: // the unlock ran
			c.ok = true
		default: // did not run, or a try that found it taken: run alone
			c.ok, c.err = callKeyFn(ctx, conn, c.fn, c.r.key)
			if c.err != nil && conn.PgConn().IsClosed() {
				return c.err
			}
		}
	}
	return nil
}

// tryDone settles c, a try, after its statement (sent) or without it
// (lc was gone): the try's part of tryOn. The caller holds lc's lock.
func (b *Backend) tryDone(lc *lockConn, c *call, sent bool) {
	r := c.r
	if !sent {
		c.err, c.ended = errRetry, true
	} else if c.err != nil {
		b.mu.Lock()
		gone := lc.gone
		b.mu.Unlock()
		if gone { // an earlier call of the batch failed lc: its session ended
			c.ended = true
		} else {
			c.ended = sessionEnded(lc.pc.Conn().PgConn(), c.err)
			b.undoOrFail(lc, r.key, r.mode, c.err)
		}
		c.err = r.errorf("try: %w", c.err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	lc.pending--
	if c.err == nil && c.ok && lc.gone {
		// An earlier call of the batch failed the connection: the
		// session, and the lock it took, ended.
		c.ok, c.err, c.ended = false, errRetry, true
	}
	if c.err == nil && c.ok {
		c.l, c.err = b.leaseFrom(r, nil, true)
		b.attachLocked(lc, c.l)
		return
	}
	delete(lc.keys, r.key)
}

// unlockDone settles c, the unlock of c.l, after its statement (sent) or
// without it (lc was gone, and c.l lost with it): Release's part of
// releaseOn. The caller holds lc's lock.
func (b *Backend) unlockDone(lc *lockConn, c *call, sent bool) {
	l := c.l
	b.mu.Lock()
	if !sent {
		cause := lc.cause
		if cause == nil {
			cause = errors.New("unknown cause")
		}
		b.mu.Unlock()
		c.err = l.errorf("release: %w: its connection failed: %w", backend.ErrLockLost, cause)
		return
	}
	if c.err == nil && c.ok {
		if !l.lost { // else an earlier call of the batch failed lc, which let l go
			delete(lc.leases, l)
			delete(lc.keys, l.key)
			b.unholdLeaseLocked(l)
		}
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	uerr := c.err
	if uerr == nil {
		uerr = errors.New("the session no longer held it")
	}
	b.fail(lc, fmt.Errorf("unlock: %w", uerr))
	c.err = l.errorf("release: %w: unlock not confirmed, so its connection was closed: %w", backend.ErrLockLost, uerr)
}
