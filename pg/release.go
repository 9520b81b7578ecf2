package pg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/dlock-go/dlock/backend"
)

var _ backend.MultiReleaser[*Lease] = (*Backend)(nil)

// ReleaseAll releases every lease of leases (granted by b, of any kind) as
// if Release were called on each, and returns one error per lease, in
// order: nil for a lease that held its lock until it was released, else
// what Release returns (an error matching dlock.ErrLockLost for a lease
// that was lost, one matching backend.ErrNotHeld for one released
// already). The leases that sit on one lock connection (a set taken by
// TryLockAll, TryRLockAll, TryWLockAll or TryAcquireAll always does) are
// released by one statement, one round trip, that unlocks all their keys
// (and deletes their holder records, and wakes their semaphores'
// waiters); the connections are visited one after another. Every lease is
// released even when ctx is done or an error is returned: each
// connection's statement is bounded as Release's is (WithOpTimeout past
// ctx's end). A lease of another Backend is released by its own Release.
// It implements backend.MultiReleaser.
func (b *Backend) ReleaseAll(ctx context.Context, leases []*Lease) []error {
	errs := make([]error, len(leases))
	// Group the leases not yet released by connection, keeping the
	// order of their first appearance.
	var conns []*lockConn
	byConn := make(map[*lockConn][]int, 1)
	for i, l := range leases {
		if l == nil {
			errs[i] = fmt.Errorf("release: %w: nil lease", backend.ErrNotHeld)
			continue
		}
		if l.b != b { // another Backend's: its own Release
			errs[i] = l.Release(ctx)
			continue
		}
		if !l.released.CompareAndSwap(false, true) {
			errs[i] = l.errorf("release: %w", backend.ErrNotHeld)
			continue
		}
		if _, ok := byConn[l.lc]; !ok {
			conns = append(conns, l.lc)
		}
		byConn[l.lc] = append(byConn[l.lc], i)
	}
	for _, lc := range conns {
		idx := byConn[lc]
		ls := make([]*Lease, len(idx))
		es := make([]error, len(idx))
		for j, i := range idx {
			ls[j] = leases[i]
		}
		b.releaseOn(ctx, lc, ls, es)
		for j, i := range idx {
			errs[i] = es[j]
			ls[j].closeLost()
		}
	}
	return errs
}

// releaseOn releases ls, leases on lc that the caller marked released, in
// one statement on lc, and sets errs[i] to the outcome of ls[i] (see
// Release). The caller closes their Lost channels.
func (b *Backend) releaseOn(ctx context.Context, lc *lockConn, ls []*Lease, errs []error) {
	if len(ls) == 1 && b.combinableLease(ls[0]) {
		b.releaseCall(ctx, lc, ls[0], errs)
		return
	}
	// Bounded by ctx's deadline, not by its cancellation (else by
	// WithOpTimeout): the wait for lc by a timer, the statement by lc's
	// statement timer (see boundStmt).
	dl, hasDL := ctx.Deadline()
	if !hasDL {
		dl = time.Now().Add(b.cfg.opTimeout)
	}
	if !lc.lockUntil(dl) {
		b.releaseBusy(lc, ls, errs)
		return
	}
	defer lc.unlock()
	rctx := b.stmtCtx(ctx)
	if err := b.pause(lc); err != nil {
		b.fail(lc, err)
	}
	// The leases lost already (the connection failed) are not unlocked.
	live := ls
	b.mu.Lock()
	cause := lc.cause
	for i, l := range ls {
		if l.lost {
			if len(live) == len(ls) {
				live = append([]*Lease(nil), ls[:i]...)
			}
			if cause == nil {
				cause = errors.New("unknown cause")
			}
			errs[i] = l.errorf("release: %w: its connection failed: %w", backend.ErrLockLost, cause)
		} else if len(live) != len(ls) {
			live = append(live, l)
		}
	}
	b.mu.Unlock()
	if len(live) == 0 {
		return
	}
	var oks []bool
	var err error
	bound := lc.boundStmt(dl)
	if len(live) == 1 {
		l := live[0]
		var ok bool
		if l.ukey != nil {
			ok, err = l.unlockUpgradeable(rctx)
		} else if b.cfg.holderTable != "" {
			ok, err = l.unlockRecorded(rctx)
		} else {
			ok, err = unlockNotify(rctx, lc.pc.Conn(), l.key, l.mode, l.topic)
		}
		oks = []bool{ok}
	} else {
		oks, err = b.unlockAll(rctx, lc, live)
	}
	err = lc.endStmt(err, bound)
	var failed error
	b.mu.Lock()
	j := 0
	for i, l := range ls {
		if errs[i] != nil {
			continue // lost before
		}
		ok := err == nil && oks[j]
		j++
		if !ok {
			uerr := err
			if uerr == nil {
				uerr = errors.New("the session no longer held it")
			}
			failed = uerr
			errs[i] = l.errorf("release: %w: unlock not confirmed, so its connection was closed: %w", backend.ErrLockLost, uerr)
			continue
		}
		delete(lc.leases, l)
		delete(lc.keys, l.key)
		if l.ukey != nil {
			delete(lc.keys, *l.ukey)
		}
		b.unholdLeaseLocked(l)
	}
	if failed != nil {
		b.mu.Unlock()
		b.fail(lc, fmt.Errorf("unlock: %w", failed))
		return
	}
	retire := b.retireIfIdleLocked(lc)
	b.mu.Unlock()
	if retire {
		b.quiesce(lc)
		lc.pc.Release()
	} else {
		b.resume(lc)
	}
}

// releaseBusy ends lc, busy past the deadline of the release of ls, and
// sets errs to their outcome: lost.
func (b *Backend) releaseBusy(lc *lockConn, ls []*Lease, errs []error) {
	err := context.DeadlineExceeded
	_ = lc.nc.Close() // safe even if lc's pc is already destroyed
	lc.lockWait()
	b.fail(lc, fmt.Errorf("release: %w", err))
	lc.unlock()
	for i, l := range ls {
		errs[i] = l.errorf("release: %w: the connection was busy past the release deadline, so it was closed: %w", backend.ErrLockLost, err)
	}
}

// unlockAll unlocks every key of ls, leases on lc (whose lock the caller
// holds), in one statement, deleting their holder records (holder table
// on) and notifying their semaphores' waiters, and reports for each
// whether its session held all its keys.
func (b *Backend) unlockAll(ctx context.Context, lc *lockConn, ls []*Lease) ([]bool, error) {
	var s strings.Builder
	s.WriteString(b.relaxed())
	if t := b.cfg.holderTable; t != "" {
		s.WriteString("WITH hd AS (DELETE FROM ")
		s.WriteString(t)
		s.WriteString(" WHERE pid = pg_backend_pid() AND (space, key) IN (")
		for i, l := range ls {
			if i > 0 {
				s.WriteString(", ")
			}
			s.WriteString("(" + keySpace(l.key) + ", " + strconv.FormatInt(l.key.v, 10) + ")")
		}
		s.WriteString(")) ")
	}
	s.WriteString("SELECT ")
	cols := make([]int, len(ls)) // the number of columns of each lease
	topics := make(map[string]bool)
	for i, l := range ls {
		if i > 0 {
			s.WriteString(", ")
		}
		fn := "pg_advisory_unlock("
		if l.mode == shared {
			fn = "pg_advisory_unlock_shared("
		}
		s.WriteString(fn)
		s.WriteString(l.key.String())
		s.WriteString(")")
		cols[i] = 1
		if l.ukey != nil {
			s.WriteString(", pg_advisory_unlock(")
			s.WriteString(l.ukey.String())
			s.WriteString(")")
			cols[i] = 2
		}
		if l.topic != "" {
			topics[l.topic] = true
		}
	}
	for topic := range topics {
		s.WriteString(", pg_notify('" + semChannel + "', '" + topic + "')")
	}
	row, err := query(ctx, lc.pc.Conn().PgConn(), s.String())
	if err != nil {
		return nil, err
	}
	oks := make([]bool, len(ls))
	c := 0
	for i, n := range cols {
		ok := c+n <= len(row)
		for k := c; ok && k < c+n; k++ {
			ok = string(row[k]) == "t"
		}
		oks[i] = ok
		c += n
	}
	return oks, nil
}
