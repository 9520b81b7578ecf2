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

// Several names in one statement (backend.MultiLocker, MultiRWLocker).
//
// TryLockAll and friends take every name of a set in one statement on one
// lock connection (whose session holds none of the set's keys): first a
// look at pg_locks, which finds any name of the set that another session
// holds or waits for in a conflicting mode (for a writer, also its upgrade
// key), and then, only when there is none, a pg_try_advisory_lock of each
// name in turn, nested so that a failure lets go of those taken before it
// in the same statement. So a set that is busy because a name is held or
// awaited takes nothing, not even for a moment, and a try never jumps
// queued waiters (each try refuses a key others wait for). Only a
// competitor that takes a name of the set between the look and the tries
// (the same statement, microseconds later) can see another name held for
// that moment. Fencing tokens and holder records of every name are
// written in the same statement.

var (
	_ backend.MultiLocker[*Lease]   = (*Backend)(nil)
	_ backend.MultiRWLocker[*Lease] = (*Backend)(nil)
)

// TryLockAll makes one attempt to take every mutex of names in one
// statement (see above). It implements backend.MultiLocker.
func (b *Backend) TryLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return b.tryAll(ctx, reqsOf(names, func(n string) req {
		k := MutexKey(n)
		return req{kind: "mutex", name: n, key: k, mode: exclusive, fence: k}
	}))
}

// TryRLockAll makes one attempt to read-lock every name of names in one
// statement. It implements backend.MultiRWLocker.
func (b *Backend) TryRLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return b.tryAll(ctx, reqsOf(names, func(n string) req {
		k := RWKey(n)
		return req{kind: "rwmutex", name: n, key: k, mode: shared, fence: k}
	}))
}

// TryWLockAll makes one attempt to write-lock every name of names in one
// statement. It implements backend.MultiRWLocker.
func (b *Backend) TryWLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return b.tryAll(ctx, reqsOf(names, wReq))
}

// reqsOf is the request mk makes of each name.
func reqsOf(names []string, mk func(string) req) []req {
	rs := make([]req, len(names))
	for i, n := range names {
		rs[i] = mk(n)
	}
	return rs
}

func (b *Backend) tryAll(ctx context.Context, rs []req) ([]*Lease, int, error) {
	ls, busy, err := b.tryAll1(ctx, rs)
	return ls, busy, permanent(err)
}

func (b *Backend) tryAll1(ctx context.Context, rs []req) ([]*Lease, int, error) {
	seen := make(map[Key]struct{}, len(rs))
	for _, r := range rs {
		if _, dup := seen[r.key]; dup {
			// Two names of the set share a key (a hash collision): a
			// session would take it twice. One by one, they exclude each
			// other as they should.
			return nil, -1, fmt.Errorf("%w: two names of the set share an advisory key", errors.ErrUnsupported)
		}
		seen[r.key] = struct{}{}
	}
	if err := b.begin(ctx, &rs[0]); err != nil {
		return nil, -1, err
	}
	for i := range rs[1:] {
		rs[i+1].rec = rs[0].rec
	}
	keys := make([]Key, len(rs))
	for i, r := range rs {
		keys[i] = r.key
	}
	var last error
	for range b.maxAttempts() {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, -1, fmt.Errorf("%w", errClosed)
		}
		for i, r := range rs {
			if b.busyLocked(r) {
				b.mu.Unlock()
				return nil, i, nil // held here, or awaited by a wait of this backend
			}
		}
		lc, fresh := b.pickLocked(keys...)
		lc.pending++
		for _, k := range keys {
			lc.keys[k] = struct{}{}
		}
		b.mu.Unlock()
		unreserve := func() {
			b.mu.Lock()
			if !lc.gone {
				for _, k := range keys {
					delete(lc.keys, k)
				}
			}
			b.mu.Unlock()
		}
		if err := b.take(ctx, lc, Key{}, false, fresh); err != nil {
			unreserve()
			if errors.Is(err, errRetry) {
				last = err
				continue
			}
			return nil, -1, err
		}
		ls, busy, err, retry := b.tryAllOn(ctx, lc, rs, unreserve)
		if !retry {
			return ls, busy, err
		}
		last = err
	}
	return nil, -1, fmt.Errorf("try: %w", last)
}

// tryAllOn runs the statement of rs on lc, which the caller took with the
// keys of rs reserved; unreserve undoes the reservation.
func (b *Backend) tryAllOn(ctx context.Context, lc *lockConn, rs []req, unreserve func()) (ls []*Lease, busy int, err error, retry bool) {
	defer b.done(lc)
	pgc := lc.pc.Conn().PgConn()
	bound := lc.boundStmt(time.Now().Add(b.cfg.opTimeout)) // see boundStmt
	qctx := b.stmtCtx(ctx)
	row, qerr := b.runMulti(qctx, lc, rs)
	qerr = lc.endStmt(qerr, bound)
	busy = -1
	if qerr == nil {
		if len(row) == 0 || row[0] == nil {
			qerr = errors.New("no result")
		} else if busy, qerr = strconv.Atoi(string(row[0])); qerr == nil && (busy < -1 || busy >= len(rs)) {
			qerr = fmt.Errorf("index %d out of range", busy)
		}
	}
	if qerr == nil && busy < 0 {
		ls, qerr = b.leasesFrom(rs, row)
	}
	if qerr != nil {
		// What the statement took is unknown: undo every key, or end the
		// session.
		ended := sessionEnded(pgc, qerr)
		for _, r := range rs {
			b.undoOrFail(lc, r.key, r.mode, qerr)
			if r.ukind != uNone {
				b.undoOrFail(lc, r.upgrade, exclusive, qerr)
			}
		}
		unreserve()
		b.mu.Lock()
		lc.pending--
		b.mu.Unlock()
		return nil, -1, fmt.Errorf("try: %w", qerr), ended && ctx.Err() == nil
	}
	if busy >= 0 {
		unreserve()
		b.mu.Lock()
		lc.pending--
		b.mu.Unlock()
		return nil, busy, nil, false
	}
	b.mu.Lock()
	lc.pending--
	for _, l := range ls {
		b.attachLocked(lc, l)
	}
	b.mu.Unlock()
	return ls, -1, nil, false
}

// leasesFrom makes the leases of a set taken by multiSQL, from its row
// (value, "key:token,..." with fencing on).
func (b *Backend) leasesFrom(rs []req, row [][]byte) ([]*Lease, error) {
	var tokens map[int64]string
	if b.cfg.fenceTable != "" {
		if len(row) < 2 || row[1] == nil {
			return nil, errors.New("no fencing tokens in the result")
		}
		tokens = make(map[int64]string, len(rs))
		for kt := range strings.SplitSeq(string(row[1]), ",") {
			k, t, _ := strings.Cut(kt, ":")
			v, err := strconv.ParseInt(k, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("fencing tokens: %w", err)
			}
			tokens[v] = t
		}
	}
	ls := make([]*Lease, len(rs))
	for i, r := range rs {
		one := [][]byte{row[0], nil}
		if tokens != nil {
			t, ok := tokens[r.fence.v]
			if !ok {
				return nil, fmt.Errorf("no fencing token for %s", r.fence)
			}
			one[1] = []byte(t)
		}
		l, err := b.leaseFrom(r, one, true)
		if err != nil {
			return nil, err
		}
		ls[i] = l
	}
	return ls, nil
}

// multiSQL builds the statement of a set: its value is the index in rs of
// a name found busy, or -1 when it took them all. With param, the keys
// are the statement's parameters ($1: the keys, $2: the upgrade keys or
// NULL, as bigint arrays; see multiParams), so that it can be prepared
// once per kind and size; else they are literals.
func (b *Backend) multiSQL(rs []req, param bool) string {
	key := func(i int) string {
		if param {
			return "($1::bigint[])[" + strconv.Itoa(i+1) + "]"
		}
		return rs[i].key.String()
	}
	ukey := func(i int) string {
		if param {
			return "($2::bigint[])[" + strconv.Itoa(i+1) + "]"
		}
		return rs[i].upgrade.String()
	}
	var s strings.Builder
	// The look at pg_locks (read once): the first name that another
	// session holds or awaits in a conflicting mode.
	s.WriteString("(SELECT CASE WHEN c.b IS NOT NULL THEN c.b ELSE ")
	// Then the tries, nested: level i tries rs[i] and, if a later one
	// fails, lets it go again.
	var tail []string
	for i, r := range rs {
		is := strconv.Itoa(i)
		k := key(i)
		unlock, try := "pg_advisory_unlock("+k+")", "pg_try_advisory_lock("+k+")"
		if r.mode == shared {
			unlock, try = "pg_advisory_unlock_shared("+k+")", "pg_try_advisory_lock_shared("+k+")"
		}
		if r.ukind == uWriter { // as req.tryExpr
			u := ukey(i)
			try = "CASE WHEN pg_try_advisory_lock(" + u + ") THEN CASE WHEN " + try + " THEN pg_advisory_unlock(" + u +
				") ELSE NOT pg_advisory_unlock(" + u + ") END ELSE false END"
		}
		s.WriteString("(SELECT CASE WHEN s.r <= " + is + " THEN s.r WHEN " + unlock + " THEN s.r ELSE s.r END FROM (SELECT CASE WHEN " + try + " THEN ")
		tail = append(tail, " ELSE "+is+" END AS r) s)")
	}
	s.WriteString("-1")
	for i := len(tail) - 1; i >= 0; i-- {
		s.WriteString(tail[i])
	}
	s.WriteString(" END FROM (SELECT (WITH lk AS MATERIALIZED (SELECT ((p.classid::bigint << 32) | p.objid::bigint) AS k, p.mode FROM pg_locks p" +
		" WHERE p.locktype = 'advisory' AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database())" +
		" AND p.objsubid = 1 AND p.pid <> pg_backend_pid()) SELECT min(u.i) - 1 FROM unnest(")
	if param {
		s.WriteString("$1::bigint[], $2::bigint[]")
	} else {
		k, u := multiParams(rs)
		s.WriteString("'" + k + "'::bigint[], '" + u + "'::bigint[]")
	}
	s.WriteString(") WITH ORDINALITY AS u(k, uk, i) WHERE EXISTS (SELECT 1 FROM lk WHERE lk.k IN (u.k, u.uk)")
	if rs[0].mode == shared {
		s.WriteString(" AND lk.mode = 'ExclusiveLock'")
	}
	s.WriteString(")) AS b) c)")
	expr := s.String()
	if b.cfg.fenceTable == "" && b.cfg.holderTable == "" {
		return "SELECT " + expr
	}
	keys := make([]string, len(rs))
	for i, r := range rs {
		keys[i] = strconv.FormatInt(r.key.v, 10)
	}
	arr := "unnest(ARRAY[" + strings.Join(keys, ",") + "]::bigint[]) AS k"
	var q strings.Builder
	q.WriteString(b.relaxed())
	q.WriteString("WITH l AS (SELECT " + expr + " AS v)")
	if t := b.cfg.fenceTable; t != "" {
		q.WriteString(", t AS (INSERT INTO " + t + " (space, key, token) SELECT 1, k, 1 FROM l, " + arr +
			" WHERE l.v = -1 ON CONFLICT (space, key) DO UPDATE SET token = " + t + ".token + 1 RETURNING key, token)")
	}
	if t := b.cfg.holderTable; t != "" {
		q.WriteString(", h AS (INSERT INTO " + t + " (space, key, pid, shared, rec) SELECT 1, k, pg_backend_pid(), " +
			strconv.FormatBool(rs[0].mode == shared) + ", " + dollarQuote(rs[0].rec) + " FROM l, " + arr +
			" WHERE l.v = -1 ON CONFLICT (space, key, pid) DO UPDATE SET shared = EXCLUDED.shared, rec = EXCLUDED.rec)")
	}
	q.WriteString(" SELECT l.v")
	if b.cfg.fenceTable != "" {
		q.WriteString(", (SELECT string_agg(key::text || ':' || token::text, ',') FROM t)")
	}
	q.WriteString(" FROM l")
	return q.String()
}

// multiParams returns the keys and the upgrade keys (NULL where none) of
// rs as bigint array literals.
func multiParams(rs []req) (keys, ukeys string) {
	var k, u strings.Builder
	k.WriteString("{")
	u.WriteString("{")
	for i, r := range rs {
		if i > 0 {
			k.WriteString(",")
			u.WriteString(",")
		}
		k.WriteString(strconv.FormatInt(r.key.v, 10))
		if r.ukind != uNone {
			u.WriteString(strconv.FormatInt(r.upgrade.v, 10))
		} else {
			u.WriteString("NULL")
		}
	}
	k.WriteString("}")
	u.WriteString("}")
	return k.String(), u.String()
}

// runMulti runs the statement of rs: prepared (once per connection, kind
// and size) when neither fencing nor holder records are on, else as
// literal text. It returns the first row.
func (b *Backend) runMulti(ctx context.Context, lc *lockConn, rs []req) ([][]byte, error) {
	if b.cfg.fenceTable != "" || b.cfg.holderTable != "" {
		return query(ctx, lc.pc.Conn().PgConn(), b.multiSQL(rs, false))
	}
	kind := "m"
	switch {
	case rs[0].ukind == uWriter:
		kind = "w"
	case rs[0].mode == shared:
		kind = "r"
	}
	name := "dlock_all_" + kind + strconv.Itoa(len(rs))
	k, u := multiParams(rs)
	var first [][]byte
	err := runStmt(ctx, lc.pc.Conn().PgConn(), name, b.multiSQL(rs, true), [][]byte{[]byte(k), []byte(u)}, func(vals [][]byte) {
		if first == nil {
			first = make([][]byte, len(vals))
			for i, v := range vals {
				if v != nil {
					first[i] = append([]byte{}, v...)
				}
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return first, nil
}

var _ backend.MultiSemaphore[*Lease] = (*Backend)(nil)

// TryAcquireAll makes one attempt to take a ticket of every semaphore of
// names, each of limit limit, in one statement (see above: the look at
// pg_locks finds a semaphore with waiters, or with every slot taken,
// before any slot is tried). It implements backend.MultiSemaphore.
func (b *Backend) TryAcquireAll(ctx context.Context, names []string, limit int) ([]*Lease, int, error) {
	ls, busy, err := b.trySemAll(ctx, names, limit)
	return ls, busy, permanent(err)
}

// semSet is one semaphore of a set: its request, slots, and the slots a
// try may take (those no lease of this backend holds).
type semSet struct {
	r     req
	slots []Key
	idx   []int
}

func (b *Backend) trySemAll(ctx context.Context, names []string, limit int) ([]*Lease, int, error) {
	if err := checkLimit(semReq(names[0]), limit); err != nil {
		return nil, -1, err
	}
	ss := make([]semSet, len(names))
	seen := make(map[Key]struct{}, len(names)*limit)
	for i, n := range names {
		ss[i] = semSet{r: semReq(n), slots: semSlots(n, limit)}
		for _, k := range append(ss[i].slots, ss[i].r.queue) {
			if _, dup := seen[k]; dup {
				return nil, -1, fmt.Errorf("%w: two semaphores of the set share an advisory key", errors.ErrUnsupported)
			}
			seen[k] = struct{}{}
		}
	}
	if err := b.begin(ctx, &ss[0].r); err != nil {
		return nil, -1, err
	}
	var last error
	for range b.maxAttempts() {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, -1, fmt.Errorf("%w", errClosed)
		}
		var cands []Key
		for i := range ss {
			s := &ss[i]
			s.idx = s.idx[:0]
			for j, k := range s.slots {
				if b.held[k] == nil {
					s.idx = append(s.idx, j)
					cands = append(cands, k)
				}
			}
			if b.queued[s.r.queue] > 0 || len(s.idx) == 0 {
				b.mu.Unlock()
				return nil, i, nil // awaited by a wait of this backend, or all held here
			}
		}
		lc, fresh := b.pickLocked(cands...)
		lc.pending++
		for _, k := range cands {
			lc.keys[k] = struct{}{}
		}
		b.mu.Unlock()
		unreserve := func(keep map[Key]bool) {
			b.mu.Lock()
			if !lc.gone {
				for _, k := range cands {
					if !keep[k] {
						delete(lc.keys, k)
					}
				}
			}
			b.mu.Unlock()
		}
		if err := b.take(ctx, lc, Key{}, false, fresh); err != nil {
			unreserve(nil)
			if errors.Is(err, errRetry) {
				last = err
				continue
			}
			return nil, -1, err
		}
		ls, busy, err, retry := b.trySemAllOn(ctx, lc, ss, cands, unreserve)
		if !retry {
			return ls, busy, err
		}
		last = err
	}
	return nil, -1, fmt.Errorf("try: %w", last)
}

// trySemAllOn runs the statement of the set ss on lc, which the caller
// took with the candidate slots cands reserved.
func (b *Backend) trySemAllOn(ctx context.Context, lc *lockConn, ss []semSet, cands []Key, unreserve func(keep map[Key]bool)) (ls []*Lease, busy int, err error, retry bool) {
	defer b.done(lc)
	pgc := lc.pc.Conn().PgConn()
	bound := lc.boundStmt(time.Now().Add(b.cfg.opTimeout)) // see boundStmt
	qctx := b.stmtCtx(ctx)
	row, qerr := query(qctx, pgc, b.semAllSQL(ss))
	qerr = lc.endStmt(qerr, bound)
	busy = -1
	var got []int // the slot taken of each, a position in its idx
	if qerr == nil {
		if len(row) == 0 || row[0] == nil {
			qerr = errors.New("no result")
		} else if v := string(row[0]); strings.HasPrefix(v, "!") {
			if busy, qerr = strconv.Atoi(v[1:]); qerr == nil && (busy < 0 || busy >= len(ss)) {
				qerr = fmt.Errorf("index %d out of range", busy)
			}
		} else {
			for p := range strings.SplitSeq(strings.TrimSuffix(v, ","), ",") {
				j, err := strconv.Atoi(p)
				if err != nil || j < 0 || len(got) >= len(ss) || j >= len(ss[len(got)].idx) {
					qerr = fmt.Errorf("bad result %q", v)
					break
				}
				got = append(got, j)
			}
			if qerr == nil && len(got) != len(ss) {
				qerr = fmt.Errorf("bad result %q", v)
			}
		}
	}
	if qerr == nil && busy < 0 {
		rs := make([]req, len(ss))
		for i, s := range ss {
			rs[i] = s.r
			rs[i].key, rs[i].mode = s.slots[s.idx[got[i]]], exclusive
		}
		ls, qerr = b.leasesFrom(rs, row)
	}
	if qerr != nil {
		ended := sessionEnded(pgc, qerr)
		for _, k := range cands {
			b.undoOrFail(lc, k, exclusive, qerr)
		}
		unreserve(nil)
		b.mu.Lock()
		lc.pending--
		b.mu.Unlock()
		return nil, -1, fmt.Errorf("try: %w", qerr), ended && ctx.Err() == nil
	}
	if busy >= 0 {
		unreserve(nil)
		b.mu.Lock()
		lc.pending--
		b.mu.Unlock()
		return nil, busy, nil, false
	}
	keep := make(map[Key]bool, len(ls))
	for _, l := range ls {
		keep[l.key] = true
	}
	unreserve(keep)
	b.mu.Lock()
	lc.pending--
	for _, l := range ls {
		b.attachLocked(lc, l)
	}
	b.mu.Unlock()
	return ls, -1, nil, false
}

// semAllSQL builds the statement of a set of semaphores: its value is
// "!<index>" of a semaphore found busy, or the slot each took (a position
// in its idx), comma-separated.
func (b *Backend) semAllSQL(ss []semSet) string {
	var s strings.Builder
	// The look at pg_locks: the first semaphore with a waiter (its queue
	// key held or awaited) or with no candidate slot free.
	s.WriteString("(SELECT CASE WHEN c.b IS NOT NULL THEN '!' || c.b ELSE ")
	var tail []string
	for i, x := range ss {
		is := strconv.Itoa(i)
		q := x.r.queue.String()
		s.WriteString("(SELECT CASE WHEN s.x < 0 THEN '!" + is + "' WHEN left(s.rest, 1) <> '!' THEN s.x::text || ',' || s.rest WHEN pg_advisory_unlock(")
		s.WriteString("(" + slotList(x.slots, x.idx) + ")[s.x + 1]")
		s.WriteString(") THEN s.rest ELSE s.rest END FROM (SELECT t.x, CASE WHEN t.x < 0 THEN NULL ELSE ")
		tail = append(tail, " END AS rest FROM (SELECT CASE WHEN pg_try_advisory_lock_shared("+q+") THEN CASE WHEN pg_advisory_unlock_shared("+q+") THEN "+
			slotCase(x.slots, x.idx)+" END ELSE -1 END AS x) t) s)")
	}
	s.WriteString("''")
	for i := len(tail) - 1; i >= 0; i-- {
		s.WriteString(tail[i])
	}
	s.WriteString(" END FROM (SELECT (WITH lk AS (SELECT ((p.classid::bigint << 32) | p.objid::bigint) AS k FROM pg_locks p" +
		" WHERE p.locktype = 'advisory' AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database())" +
		" AND p.objsubid = 1 AND p.pid <> pg_backend_pid()) SELECT min(u.i) FROM (VALUES ")
	for i, x := range ss {
		if i > 0 {
			s.WriteString(", ")
		}
		s.WriteString("(" + strconv.Itoa(i) + ", " + x.r.queue.String() + "::bigint, ")
		s.WriteString(slotList(x.slots, x.idx))
		s.WriteString(")")
	}
	s.WriteString(") AS u(i, q, c) WHERE EXISTS (SELECT 1 FROM lk WHERE lk.k = u.q)" +
		" OR (SELECT count(DISTINCT lk.k) FROM lk WHERE lk.k = ANY (u.c)) >= cardinality(u.c)) AS b) c)")
	expr := s.String()
	if b.cfg.fenceTable == "" && b.cfg.holderTable == "" {
		return "SELECT " + expr
	}
	ok := " WHERE left(l.v, 1) <> '!'"
	var q strings.Builder
	q.WriteString(b.relaxed())
	q.WriteString("WITH l AS (SELECT " + expr + " AS v)")
	if t := b.cfg.fenceTable; t != "" {
		fences := make([]string, len(ss))
		for i, x := range ss {
			fences[i] = strconv.FormatInt(x.r.fence.v, 10)
		}
		q.WriteString(", t AS (INSERT INTO " + t + " (space, key, token) SELECT 1, k, 1 FROM l, unnest(ARRAY[" + strings.Join(fences, ",") +
			"]::bigint[]) AS k" + ok + " ON CONFLICT (space, key) DO UPDATE SET token = " + t + ".token + 1 RETURNING key, token)")
	}
	if t := b.cfg.holderTable; t != "" {
		q.WriteString(", h AS (INSERT INTO " + t + " (space, key, pid, shared, rec) SELECT 1, n.c[split_part(l.v, ',', n.i)::int + 1], pg_backend_pid(), false, " +
			dollarQuote(ss[0].r.rec) + " FROM l, (VALUES ")
		for i, x := range ss {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(" + strconv.Itoa(i+1) + ", " + slotList(x.slots, x.idx) + ")")
		}
		q.WriteString(") AS n(i, c)" + ok + " ON CONFLICT (space, key, pid) DO UPDATE SET shared = EXCLUDED.shared, rec = EXCLUDED.rec)")
	}
	q.WriteString(" SELECT l.v")
	if b.cfg.fenceTable != "" {
		q.WriteString(", (SELECT string_agg(key::text || ':' || token::text, ',') FROM t)")
	}
	q.WriteString(" FROM l")
	return q.String()
}

// slotCase is writeSlotCase's CASE as a string.
func slotCase(slots []Key, idx []int) string {
	var s strings.Builder
	writeSlotCase(&s, slots, idx)
	return s.String()
}
