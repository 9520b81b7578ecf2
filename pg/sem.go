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
// A semaphore wait (Acquire) tries all slots; while they are busy it
// waits for a release notification (see listen.go: one listener connection
// per Backend, one round trip from a release to the waiter's next try),
// with a slow fallback poll for slots freed without one.

// TryAcquire makes one attempt to take one of the limit slots of the
// semaphore name. limit must be between 1 and MaxSemaphoreLimit.
func (b *Backend) TryAcquire(ctx context.Context, name string, limit int) (*Lease, bool, error) {
	r := req{kind: "semaphore", name: name, fence: semKey(name)}
	if err := checkLimit(r, limit); err != nil {
		return nil, false, err
	}
	l, ok, err := b.trySem(ctx, r, semSlots(name, limit))
	return l, ok, permanent(err)
}

// Acquire takes one of the limit slots of the semaphore name, waiting
// until one is free or ctx is done. It waits for a release notification,
// not in the server's queue, so it holds no connection of its own while it
// waits.
func (b *Backend) Acquire(ctx context.Context, name string, limit int) (*Lease, error) {
	l, err := b.acquireSem(ctx, name, limit)
	return l, permanent(err)
}

func (b *Backend) acquireSem(ctx context.Context, name string, limit int) (*Lease, error) {
	r := req{kind: "semaphore", name: name, fence: semKey(name)}
	if err := checkLimit(r, limit); err != nil {
		return nil, err
	}
	slots := semSlots(name, limit)
	var w *semWaiter
	defer func() {
		if w != nil {
			b.unlisten(w)
		}
	}()
	poll := pace.New(pollMin, pollMax)
	var last error
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
			// No connection for the try: poll until one is free.
			last = err
			poll.Reset()
		}
		if w == nil {
			// Register, then try again: a release committed after this
			// point wakes w (once the listener is ready; until then, and
			// for releases that send no notification, the poll below).
			var ready bool
			if w, ready = b.listen(r.fence.String()); ready {
				continue
			}
		}
		t := time.NewTimer(poll.Next())
		select {
		case <-w.wake:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, b.ended(ctx, r, last)
		}
		t.Stop()
	}
}

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
	if err := b.begin(ctx, r); err != nil {
		return nil, false, err
	}
	var last error
	for range b.maxAttempts() {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, false, r.errorf("%w", errClosed)
		}
		lc, fresh := b.pickLocked(Key{}, false)
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
	var expr strings.Builder
	expr.WriteString("CASE")
	var idx []int
	for i, k := range slots {
		if b.held[k] != nil {
			continue
		}
		expr.WriteString(" WHEN pg_try_advisory_lock(")
		expr.WriteString(k.String())
		expr.WriteString(") THEN ")
		expr.WriteString(strconv.Itoa(len(idx)))
		idx = append(idx, i)
	}
	expr.WriteString(" ELSE -1 END")
	if len(idx) == 0 {
		lc.pending--
		b.mu.Unlock()
		return nil, false, nil, false
	}
	for _, i := range idx {
		lc.keys[slots[i]] = struct{}{}
	}
	b.mu.Unlock()

	sql := b.lockSQL(expr.String(), "v >= 0", r.fence)
	pgc := lc.pc.Conn().PgConn()
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.opTimeout)
	row, qerr := query(qctx, pgc, sql)
	cancel()
	ended := qerr != nil && sessionEnded(pgc, qerr)
	got := -1
	if qerr == nil {
		if len(row) == 0 {
			qerr = fmt.Errorf("no result")
		} else if got, qerr = strconv.Atoi(string(row[0])); qerr == nil && got >= len(idx) {
			qerr = fmt.Errorf("slot %d out of range", got)
		}
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
