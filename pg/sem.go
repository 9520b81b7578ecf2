package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/pace"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A semaphore of limit n over name is n exclusive advisory locks, its slots
// (see the key derivation in keys.go); a holder holds one slot. A try tests
// the free slots in one statement, a CASE that stops at the first slot it
// takes, so it costs one round trip whatever the limit.
//
// Holders that disagree on the limit: a holder with limit n only takes
// slots 0..n-1. So at most max(limits) holders exist at once, and an
// acquisition with limit n succeeds only while fewer than n of the slots
// 0..n-1 are taken: a smaller limit is respected by its own users, a larger
// one may be cut short by holders that use the smaller one. Use one limit
// per name.
//
// A semaphore wait (Acquire) first tries, as TryAcquire does. If no slot
// is free it queues, on a pool connection of its own, in the server's lock
// queue of the semaphore's queue key (pg_advisory_lock: first come, first
// served; cancelled on the server when ctx ends; freed by the server when
// the session dies). The waiter that holds the queue key is the head: it
// alone waits for a slot, on that connection, trying all slots each time
// a release notifies it (LISTEN on that same connection: one round trip
// from a release to the head's next try), with a slow fallback poll (50ms
// growing to 500ms) for slots freed without one. The statement that
// takes a slot also unlocks the queue key, which the server hands at once
// to the next waiter. Every other try takes the queue key shared and lets
// it go, in the same statement as its slot tries: that fails while a head
// holds it or a waiter is queued for it, so a try never jumps the queue.
// A wait with no pool connection to queue with polls with tries instead,
// which win a slot only when nobody queues (no ordering promise then).

// TryAcquire makes one attempt to take one of the limit slots of the
// semaphore name. limit must be between 1 and MaxSemaphoreLimit. It fails
// while other acquisitions wait for the semaphore: it does not jump their
// queue.
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	r := semReq(name)
	if err := checkLimit(r, limit); err != nil {
		return nil, false, err
	}
	l, ok, err := b.trySem(ctx, r, semSlots(name, limit))
	return l, ok, permanent(err)
}

// Acquire takes one of the limit slots of the semaphore name, waiting
// until one is free or ctx is done. Waiters are served in the order they
// began to wait, across clients and processes: they queue on the server
// (see the package doc, Ordering), each on a pool connection of its own.
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	l, err := b.acquireSem(ctx, name, limit)
	return l, permanent(err)
}

func semReq(name string) req {
	return req{kind: "semaphore", name: name, fence: semKey(name), queue: semQueueKey(name)}
}

func (b *Backend) acquireSem(ctx context.Context, name string, limit int) (*Lease, error) {
	r := semReq(name)
	if err := checkLimit(r, limit); err != nil {
		return nil, err
	}
	slots := semSlots(name, limit)
	if err := b.begin(ctx, &r); err != nil {
		return nil, err
	}
	poll := pace.New(waitPollMin, waitPollMax)
	var last error // the last error that kept the wait from the server's queue
	for {
		l, ok, err := b.trySem(ctx, r, slots)
		switch {
		case ok:
			return l, nil
		case err != nil && ctx.Err() != nil && last != nil:
			return nil, b.ended(ctx, r, last)
		case err != nil && !errors.Is(err, ErrNoConnection):
			return nil, err
		case err != nil:
			last = err
		}
		if err == nil {
			pc, err := b.acquire(ctx)
			if err == nil {
				l, err := b.semQueue(ctx, r, slots, pc)
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
		// No connection to queue with: poll with tries.
		t := time.NewTimer(poll.Next())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, b.ended(ctx, r, last)
		}
	}
}

// semQueue queues r on pc, a pool connection of its own, in the server's
// queue of r's queue key, and then, as the head of the queue, waits for a
// slot (semHead). On error pc has gone back to the pool (or been closed)
// and its session holds nothing.
func (b *Backend) semQueue(ctx context.Context, r req, slots []Key, pc *pgxpool.Conn) (*Lease, error) {
	defer b.enqueue(r.queue)()
	if _, err := b.block(ctx, pc, "", r.queue, exclusive); err != nil {
		if ctx.Err() != nil {
			return nil, r.notAcquired(ctx)
		}
		if errors.Is(err, errEarly) {
			return nil, err
		}
		return nil, r.errorf("wait: %w", err)
	}
	return b.semHead(ctx, r, slots, pc)
}

// semHead waits for a slot of r on pc, whose session holds r's queue key:
// it tries every slot, and when none is free waits for a release
// notification on pc itself (LISTEN semChannel, sent with its first try)
// or the fallback poll, and tries again. The statement that takes a slot
// unlocks the queue key; then pc stops listening and becomes a lock
// connection holding the lease. When ctx ends first, the queue key is
// unlocked and pc goes back to the pool, no longer listening.
func (b *Backend) semHead(ctx context.Context, r req, slots []Key, pc *pgxpool.Conn) (*Lease, error) {
	// CASE evaluates its branches in order: the queue key is unlocked only
	// once a slot is taken.
	var expr strings.Builder
	expr.WriteString("(SELECT CASE WHEN s.v < 0 THEN s.v WHEN pg_advisory_unlock(")
	expr.WriteString(r.queue.String())
	expr.WriteString(") THEN s.v ELSE s.v END FROM (SELECT ")
	writeSlotCase(&expr, slots, nil)
	expr.WriteString(" AS v) s)")
	try := b.lockSQL(expr.String(), "v >= 0", r, slotArray(slots, nil))
	sql := "LISTEN " + semChannel + "; " + try // a release committed after this wakes pc
	pgc := pc.Conn().PgConn()
	poll := pace.New(pollMin, pollMax)
	for {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.opTimeout)
		row, err := query(qctx, pgc, sql)
		cancel()
		sql = try
		got := -1
		if err == nil {
			got, err = slotOf(row, len(slots))
		}
		if err == nil && got >= 0 {
			r.key, r.mode = slots[got], exclusive
			var l *Lease
			if l, err = b.leaseFrom(r, row, true); err == nil {
				qctx, cancel := context.WithTimeout(context.Background(), b.cfg.opTimeout)
				_, err = query(qctx, pgc, "UNLISTEN "+semChannel)
				cancel()
				if err == nil {
					return b.adopt(r, newLockConn(pc), l)
				}
			}
		}
		if err != nil {
			// What the statement took is unknown: end the session, which
			// frees it all, the queue key included.
			destroy(pc)
			return nil, r.errorf("wait: %w", err)
		}
		if err := waitNotification(ctx, pgc, poll.Next()); err != nil {
			if ctx.Err() == nil {
				destroy(pc)
				return nil, r.errorf("wait: %w", err)
			}
			// The next waiter becomes the head.
			leave(pc, "UNLISTEN "+semChannel+"; SELECT pg_advisory_unlock("+r.queue.String()+")", b.cfg.opTimeout)
			return nil, r.notAcquired(ctx)
		}
	}
}

// waitNotification waits for a notification on pgc (of any semaphore: a
// spurious wake-up costs one try) for at most d. It returns ctx's error
// when ctx ends first, or the connection's when it died.
func waitNotification(ctx context.Context, pgc *pgconn.PgConn, d time.Duration) error {
	nc := pgc.Conn()
	_ = nc.SetReadDeadline(time.Now().Add(d))
	done := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(done)
		_ = nc.SetReadDeadline(time.Now())
	})
	err := pgc.WaitForNotification(context.Background())
	if !stop() {
		<-done
	}
	_ = nc.SetReadDeadline(time.Time{})
	if pgc.IsClosed() {
		return fmt.Errorf("connection closed: %w", err)
	}
	return ctx.Err()
}

// leave runs sql, which undoes what pc's session took, and gives pc back
// to the pool, or closes it if sql fails.
func leave(pc *pgxpool.Conn, sql string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := query(ctx, pc.Conn().PgConn(), sql); err != nil {
		destroy(pc)
		return
	}
	pc.Release()
}

// adopt makes lc, made by newLockConn on a connection of its own whose
// session holds l's lock (and no other), a lock connection holding l.
func (b *Backend) adopt(r req, lc *lockConn, l *Lease) (*Lease, error) {
	pc := lc.pc
	lc.lockWait()
	b.mu.Lock()
	if !b.closed {
		b.addConnLocked(lc)
		b.attachLocked(lc, l)
		b.mu.Unlock()
		b.resume(lc)
		lc.unlock()
		return l, nil
	}
	b.mu.Unlock()
	lc.unlock()
	if l.ukey != nil {
		leave(pc, undoSQL(r), b.cfg.opTimeout)
	} else {
		release(pc, l.key, l.mode, b.cfg.opTimeout)
	}
	return nil, r.errorf("wait: %w", errClosed)
}

// writeSlotCase writes the CASE that takes the first free slot of slots
// whose index is in idx (every slot when idx is nil); its value is the
// slot's position in idx (in slots when idx is nil), or -1.
func writeSlotCase(s *strings.Builder, slots []Key, idx []int) {
	s.WriteString("CASE")
	n := len(slots)
	if idx != nil {
		n = len(idx)
	}
	for j := range n {
		k := slots[j]
		if idx != nil {
			k = slots[idx[j]]
		}
		s.WriteString(" WHEN pg_try_advisory_lock(")
		s.WriteString(k.String())
		s.WriteString(") THEN ")
		s.WriteString(strconv.Itoa(j))
	}
	s.WriteString(" ELSE -1 END")
}

// slotArray is the SQL expression of the key of the slot that a CASE of
// writeSlotCase over slots and idx took, from its value v.
func slotArray(slots []Key, idx []int) string {
	return "(" + slotList(slots, idx) + ")[v + 1]"
}

// slotList is the SQL array of the keys of slots whose index is in idx
// (every slot when idx is nil), in the order of writeSlotCase's values.
func slotList(slots []Key, idx []int) string {
	var s strings.Builder
	s.WriteString("ARRAY[")
	n := len(slots)
	if idx != nil {
		n = len(idx)
	}
	for j := range n {
		k := slots[j]
		if idx != nil {
			k = slots[idx[j]]
		}
		if j > 0 {
			s.WriteString(",")
		}
		s.WriteString(strconv.FormatInt(k.v, 10))
	}
	s.WriteString("]::bigint[]")
	return s.String()
}

// slotOf reads a slot try's result: the position of the slot taken, or -1.
func slotOf(row [][]byte, n int) (int, error) {
	if len(row) == 0 || row[0] == nil {
		return -1, errors.New("no result")
	}
	got, err := strconv.Atoi(string(row[0]))
	if err == nil && got >= n {
		err = fmt.Errorf("slot %d out of range", got)
	}
	return got, err
}

// semChannel is the notification channel of semaphore releases: a release
// runs pg_notify(semChannel, <the semaphore's fencing key>) in the
// statement of its unlock, so in the same round trip.
const semChannel = "dlock_sem"

// Fallback poll of a semaphore head: from pollMin, doubling to pollMax.
const (
	pollMin = 50 * time.Millisecond
	pollMax = 500 * time.Millisecond
)

func checkLimit(r req, limit int) error {
	if limit < 1 || limit > MaxSemaphoreLimit {
		return backend.Permanent(r.errorf("%w: %d (must be 1 to %d)", backend.ErrInvalidLimit, limit, MaxSemaphoreLimit))
	}
	return nil
}

func semSlots(name string, limit int) []Key {
	slots := make([]Key, limit)
	for i := range slots {
		slots[i] = semSlotKey(name, i)
	}
	return slots
}

// trySem takes a free slot of slots on a lock connection.
func (b *Backend) trySem(ctx context.Context, r req, slots []Key) (*Lease, bool, error) {
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
		if b.queued[r.queue] > 0 {
			b.mu.Unlock()
			return nil, false, nil // a wait of this backend queues for it
		}
		lc, fresh := b.pickLocked()
		lc.pending++
		b.mu.Unlock()
		if err := b.take(ctx, lc, Key{}, false, fresh); err != nil {
			if errors.Is(err, errRetry) {
				last = err
				continue
			}
			return nil, false, r.errorf("%w", err)
		}
		l, ok, err, retry := b.trySemOn(ctx, lc, r, slots)
		if !retry {
			return l, ok, err
		}
		last = err
	}
	return nil, false, r.errorf("try: %w", last)
}

// trySemOn runs the try of r on lc, which the caller took (take).
func (b *Backend) trySemOn(ctx context.Context, lc *lockConn, r req, slots []Key) (l *Lease, ok bool, err error, retry bool) {
	defer b.done(lc)
	// Under lc's lock the registry is exact for lc's session: slots held
	// by this backend (on any connection) are left out, so none is stacked.
	b.mu.Lock()
	var idx []int
	for i, k := range slots {
		if b.held[k] == nil {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		lc.pending--
		b.mu.Unlock()
		return nil, false, nil, false
	}
	for _, i := range idx {
		lc.keys[slots[i]] = struct{}{}
	}
	b.mu.Unlock()
	// The queue key taken shared and let go at once: that fails while a
	// head holds it or a waiter is queued for it (the server's queue),
	// so the slots are tried only when nobody waits.
	q := r.queue.String()
	var expr strings.Builder
	expr.WriteString("CASE WHEN pg_try_advisory_lock_shared(")
	expr.WriteString(q)
	expr.WriteString(") THEN CASE WHEN pg_advisory_unlock_shared(")
	expr.WriteString(q)
	expr.WriteString(") THEN ")
	writeSlotCase(&expr, slots, idx)
	expr.WriteString(" END ELSE -1 END")

	sql := b.lockSQL(expr.String(), "v >= 0", r, slotArray(slots, idx))
	pgc := lc.pc.Conn().PgConn()
	bound := lc.boundStmt(time.Now().Add(b.cfg.opTimeout)) // see boundStmt
	qctx := b.stmtCtx(ctx)
	row, qerr := query(qctx, pgc, sql)
	qerr = lc.endStmt(qerr, bound)
	ended := qerr != nil && sessionEnded(pgc, qerr)
	got := -1
	if qerr == nil {
		got, qerr = slotOf(row, len(idx))
	}
	if qerr == nil && got >= 0 {
		r.key, r.mode = slots[idx[got]], exclusive
		l, qerr = b.leaseFrom(r, row, true)
	}
	if qerr != nil {
		// Which slot a failed statement took is unknown: end the session
		// unless it held nothing else to lose... it may hold other leases,
		// so undo every candidate (none is held by another lease here).
		for _, i := range idx {
			b.undoOrFail(lc, slots[i], exclusive, qerr)
		}
	}
	b.mu.Lock()
	lc.pending--
	if !lc.gone {
		for j, i := range idx {
			if qerr == nil && j == got {
				continue
			}
			delete(lc.keys, slots[i])
		}
		if qerr == nil && got >= 0 {
			b.attachLocked(lc, l)
		}
	}
	b.mu.Unlock()
	if qerr != nil {
		return nil, false, r.errorf("try: %w", qerr), ended && ctx.Err() == nil
	}
	if got < 0 {
		return nil, false, nil, false
	}
	return l, true, nil, false
}
