package pg

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/holder"
)

// Holder records: who holds a lock, told without taking it.
//
// The server knows which session holds each advisory lock (pg_locks) and
// what each session calls itself (pg_stat_activity.application_name); it
// knows nothing of the client process. So with no setup Holders lists one
// entry per session holding the lock, Shared from its mode, and the host,
// pid and process start of the client when the session's
// application_name is ApplicationName's. With WithHolderTable every
// acquisition also writes its holder record (holder.Encode: host, pid,
// process start, owner text, since) into a row keyed by (key space, key,
// session pid), in the statement that takes the lock, and its release
// deletes it in the statement of the unlock. Holders reads pg_locks left
// joined with that table: a row is shown only while its session holds the
// lock, so a dead holder (a killed process, a terminated session: the
// server frees its locks at once) is never listed, and a row it left
// behind is overwritten by the next holder on a session of the same pid.

var (
	_ backend.LockDescriber      = (*Backend)(nil)
	_ backend.RWDescriber        = (*Backend)(nil)
	_ backend.SemaphoreDescriber = (*Backend)(nil)
)

// DescribeLock returns the holder of the mutex name (see the package
// doc, Holders). It implements backend.LockDescriber.
func (b *Backend) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	return b.describe(ctx, MutexKey(name))
}

// DescribeRW returns the holders of the RWMutex name: its readers (its
// upgradeable reader among them) or its writer. It implements
// backend.RWDescriber.
func (b *Backend) DescribeRW(ctx context.Context, name string) ([]backend.Holder, error) {
	return b.describe(ctx, RWKey(name))
}

// DescribeSemaphore returns the holders of the tickets of the semaphore
// name of limit limit, one per ticket. It implements
// backend.SemaphoreDescriber.
func (b *Backend) DescribeSemaphore(ctx context.Context, name string, limit int) ([]backend.Holder, error) {
	if err := checkLimit(semReq(name), limit); err != nil {
		return nil, err
	}
	return b.describe(ctx, semSlots(name, limit)...)
}

// holderRec returns the holder record of an acquisition with ctx when the
// holder table is on; else "".
func (b *Backend) holderRec(ctx context.Context) string {
	if b.cfg.holderTable == "" {
		return ""
	}
	return string(holder.Encode(holder.Self(backend.OwnerFromContext(ctx), time.Now())))
}

// callRecorded runs, prepared, the try (try) or the unlock of the bigint
// key k in mode m that also writes (with rec) or deletes the session's
// holder record of k, with synchronous_commit off (see relaxed: fencing
// must be off); it reports whether the advisory function returned true.
// The statements name the holder table, so their names carry a hash of
// their text: backends with different tables may share a pooled
// connection.
func (b *Backend) callRecorded(ctx context.Context, conn *pgx.Conn, k Key, m mode, try bool, rec string) (bool, error) {
	i := 0
	if m == shared {
		i = 1
	}
	if !try {
		i += 2
	}
	st := &b.recStmts[i]
	st.once.Do(func() {
		t := b.cfg.holderTable
		fn := [...]string{"pg_try_advisory_lock", "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared"}[i]
		if try {
			st.sql = "WITH l AS (SELECT " + fn + "($1::bigint) AS v, set_config('synchronous_commit', 'off', true) AS sc), h AS (INSERT INTO " + t +
				" (space, key, pid, shared, rec) SELECT 1, $1::bigint, pg_backend_pid(), " + strconv.FormatBool(m == shared) +
				", $2::text FROM l WHERE v ON CONFLICT (space, key, pid) DO UPDATE SET shared = EXCLUDED.shared, rec = EXCLUDED.rec) SELECT v FROM l"
		} else {
			st.sql = "WITH hd AS (DELETE FROM " + t + " WHERE space = 1 AND key = $1::bigint AND pid = pg_backend_pid()) SELECT " + fn +
				"($1::bigint), set_config('synchronous_commit', 'off', true)"
		}
		h := fnv.New64a()
		h.Write([]byte(st.sql))
		st.name = "dlock_rec_" + strconv.FormatUint(h.Sum64(), 36)
	})
	var buf [20]byte
	ps := [][]byte{strconv.AppendInt(buf[:0], k.v, 10)}
	if try {
		ps = append(ps, []byte(rec))
	}
	return callPrepared(ctx, conn, st.name, st.sql, ps)
}

// recStmt is one of callRecorded's statements, made once per Backend.
type recStmt struct {
	once      sync.Once
	name, sql string
}

// dollarQuote returns s as a dollar-quoted SQL literal whose tag s does not
// contain (s is JSON: valid UTF-8, no NUL byte).
func dollarQuote(s string) string {
	tag := "$d$"
	for n := 0; strings.Contains(s, tag); n++ {
		tag = "$d" + strconv.Itoa(n) + "$"
	}
	return tag + s + tag
}

// relaxed starts the statements that write holder records but no
// fencing token: their commit need not wait for the disk. A record lost
// in a crash does no harm: the crash ends every session, and with them
// their locks, so no such record is shown. A fencing token must be
// durable (a token given twice would let a stale holder through): with
// fencing on, commits wait as the server's settings say.
func (b *Backend) relaxed() string {
	if b.cfg.holderTable == "" || b.cfg.fenceTable != "" {
		return ""
	}
	return "SET LOCAL synchronous_commit = off; "
}

// holderDel is the start of an unlock statement of k that also deletes
// the session's holder record of k (holder table on; else "").
func (b *Backend) holderDel(k Key) string {
	if b.cfg.holderTable == "" {
		return ""
	}
	return "WITH hd AS (DELETE FROM " + b.cfg.holderTable + " WHERE space = " + keySpace(k) + " AND key = " +
		strconv.FormatInt(k.v, 10) + " AND pid = pg_backend_pid()) "
}

// describe lists the sessions that hold keys (all of one key space), on a
// lock connection taken as a try takes one.
func (b *Backend) describe(ctx context.Context, keys ...Key) ([]backend.Holder, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if b.pool == nil {
		return nil, backend.Permanent(errNilPool)
	}
	if err := b.ensureTables(ctx); err != nil {
		return nil, err
	}
	var sql strings.Builder
	sql.WriteString("SELECT l.mode = 'ShareLock', coalesce(a.application_name, ''), ")
	if b.cfg.holderTable != "" {
		sql.WriteString("h.rec")
	} else {
		sql.WriteString("NULL")
	}
	sql.WriteString(" FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid")
	if t := b.cfg.holderTable; t != "" {
		sql.WriteString(" LEFT JOIN " + t + " h ON h.space = l.objsubid AND h.key = ((l.classid::bigint << 32) | l.objid::bigint) AND h.pid = l.pid")
	}
	sql.WriteString(" WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.objsubid = ")
	sql.WriteString(keySpace(keys[0]))
	sql.WriteString(" AND ((l.classid::bigint << 32) | l.objid::bigint) IN (")
	for i, k := range keys {
		if i > 0 {
			sql.WriteString(", ")
		}
		sql.WriteString(strconv.FormatInt(k.v, 10))
	}
	sql.WriteString(")")

	var last error
	for range b.maxAttempts() {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, backend.Permanent(errClosed)
		}
		lc, fresh := b.pickLocked()
		lc.pending++
		b.mu.Unlock()
		if err := b.take(ctx, lc, Key{}, false, fresh); err != nil {
			if errors.Is(err, errRetry) {
				last = err
				continue
			}
			return nil, err
		}
		pgc := lc.pc.Conn().PgConn()
		qctx, cancel := context.WithTimeout(ctx, b.cfg.opTimeout)
		res, err := pgc.Exec(qctx, sql.String()).ReadAll()
		cancel()
		b.mu.Lock()
		lc.pending--
		b.mu.Unlock()
		if err != nil {
			ended := sessionEnded(pgc, err)
			if pgc.IsClosed() {
				b.fail(lc, fmt.Errorf("describe: %w", err))
				lc.unlock()
			} else {
				b.done(lc)
			}
			if ended && ctx.Err() == nil {
				last = err
				continue
			}
			return nil, fmt.Errorf("describe: %w", err)
		}
		b.done(lc)
		var hs []backend.Holder
		for _, r := range res {
			for _, row := range r.Rows {
				hs = append(hs, holderOf(row))
			}
		}
		return hs, nil
	}
	return nil, fmt.Errorf("describe: %w", last)
}

// holderOf reads a row of describe: shared, application_name, record.
func holderOf(row [][]byte) backend.Holder {
	var h backend.Holder
	if len(row) == 3 && row[2] != nil {
		if d, err := holder.Decode(row[2]); err == nil {
			h = d
		}
	}
	if h.PID == 0 && len(row) >= 2 {
		h.Host, h.PID, h.ProcessStart = parseApplicationName(string(row[1]))
	}
	h.Shared = len(row) > 0 && string(row[0]) == "t"
	return h
}

// appPrefix starts ApplicationName's form.
const appPrefix = "dlock "

// ApplicationName returns an application_name that tells Holders, without
// a holder table, the host, pid and start of the process behind a
// session: "dlock <pid> <start, Unix seconds> <host>", cut to PostgreSQL's
// 63 bytes (so a long host name is cut). Set it in the pool's
// configuration (cfg.ConnConfig.RuntimeParams["application_name"]).
func ApplicationName() string {
	self := holder.Self("", time.Time{})
	s := appPrefix + strconv.Itoa(self.PID) + " " + strconv.FormatInt(self.ProcessStart.Unix(), 10) + " " + self.Host
	if len(s) > maxIdentLen {
		s = s[:maxIdentLen]
	}
	return s
}

// parseApplicationName reads ApplicationName's form; zero values when s is
// not one.
func parseApplicationName(s string) (host string, pid int, start time.Time) {
	rest, ok := strings.CutPrefix(s, appPrefix)
	if !ok {
		return "", 0, time.Time{}
	}
	f := strings.SplitN(rest, " ", 3)
	if len(f) != 3 {
		return "", 0, time.Time{}
	}
	p, err1 := strconv.Atoi(f[0])
	st, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || p <= 0 {
		return "", 0, time.Time{}
	}
	return f[2], p, time.Unix(st, 0)
}

// unlockRecorded is the unlock of l (not an upgradeable reader) that also
// deletes its holder record, in one statement on its connection (the
// caller holds it); ok reports that l's session held the lock.
func (l *Lease) unlockRecorded(ctx context.Context) (bool, error) {
	fn := "pg_advisory_unlock("
	if l.mode == shared {
		fn = "pg_advisory_unlock_shared("
	}
	if l.topic == "" && !l.key.pair && l.b.cfg.fenceTable == "" {
		return l.b.callRecorded(ctx, l.lc.pc.Conn(), l.key, l.mode, false, "")
	}
	sql := l.b.relaxed() + l.b.holderDel(l.key) + "SELECT " + fn + l.key.String() + ")"
	if l.topic != "" {
		sql += ", pg_notify('" + semChannel + "', '" + l.topic + "')"
	}
	row, err := query(ctx, l.lc.pc.Conn().PgConn(), sql)
	if err != nil {
		return false, err
	}
	return len(row) > 0 && string(row[0]) == "t", nil
}
