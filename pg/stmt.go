package pg

import (
	"context"
	"errors"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The statements of the uncontended path — a try and an unlock, of a key in
// either mode — and of a wait in the server's queue are prepared on each
// connection the first time it runs them, in the same round trip as that
// first run (runStmt), and then run with the extended protocol, the key as
// a text parameter: the server neither parses nor plans them again, which
// is about a third of a round trip's cost on loopback. The statement names
// begin with "dlock_"; they live as long as the session, like those pgx
// prepares for the application. A connection's statements are kept in its
// CustomData (stmtsKey), not in pgx's statement cache, whose Prepare costs
// a round trip of its own: with a pool of n connections, that was up to 3n
// extra round trips, many of them while a lock was held (the first unlock
// on each connection), before the backend ran at its pace.

// keyFn is one of the advisory lock functions of one key space (bigint,
// or a pair of integers).
type keyFn uint8

const (
	fnTry keyFn = iota
	fnTryShared
	fnUnlock
	fnUnlockShared
	fnLock
	fnLockShared
	numKeyFns
)

// keyFnSQL[pair][fn] is the statement (and keyFnName its name) that calls
// fn on the key in parameters $1 (bigint) or $1, $2 (pair).
var keyFnSQL, keyFnName = func() (sql, name [2][numKeyFns]string) {
	fns := [numKeyFns]string{"pg_try_advisory_lock", "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared",
		"pg_advisory_lock", "pg_advisory_lock_shared"}
	for f, fn := range fns {
		sql[0][f] = "SELECT " + fn + "($1::bigint)"
		name[0][f] = "dlock_" + fn
		sql[1][f] = "SELECT " + fn + "($1::integer, $2::integer)"
		name[1][f] = "dlock_" + fn + "2"
	}
	return sql, name
}()

// keyParams encodes k as the text parameters of a keyFn statement, in
// buf; pair selects the statement.
func keyParams(k Key, buf *[24]byte, params *[2][]byte) (pair int, ps [][]byte) {
	if k.pair {
		a, b, _ := k.Pair()
		params[0] = strconv.AppendInt(buf[:0:12], int64(a), 10)
		params[1] = strconv.AppendInt(buf[12:12], int64(b), 10)
		return 1, params[:2]
	}
	params[0] = strconv.AppendInt(buf[:0], k.v, 10)
	return 0, params[:1]
}

// forgotten reports that err is the server's refusal of a prepared
// statement that the session no longer knows (invalid_sql_statement_name:
// the application ran DEALLOCATE ALL or DISCARD ALL behind the backend's
// back). The server refused it before running anything.
func forgotten(pgc *pgconn.PgConn, err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "26000" && !pgc.IsClosed()
}

// stmtsKey keys, in a connection's CustomData, the statements this
// package prepared on its session (a stmts).
const stmtsKey = "github.com/dlock-go/dlock/pg.stmts"

// stmts maps the names of the statements prepared on a session to their
// descriptions.
type stmts map[string]*pgconn.StatementDescription

// stmtsOf returns the statements prepared on pgc's session (nil if pgc
// keeps no CustomData: every run then prepares).
func stmtsOf(pgc *pgconn.PgConn) stmts {
	cd := pgc.CustomData()
	if cd == nil {
		return nil
	}
	s, _ := cd[stmtsKey].(stmts)
	if s == nil {
		s = make(stmts)
		cd[stmtsKey] = s
	}
	return s
}

// runStmt runs the statement name (sql) with the text parameters ps on
// pgc and calls row with the values of each row of its result (valid
// only during the call). On pgc's first run of it, the statement is
// prepared in the same round trip (prepareRun). A statement the session
// forgot is prepared again and run once more.
func runStmt(ctx context.Context, pgc *pgconn.PgConn, name, sql string, ps [][]byte, row func([][]byte)) error {
	for attempt := 0; ; attempt++ {
		s := stmtsOf(pgc)
		var err error
		if sd := s[name]; sd != nil && sd.SQL == sql {
			err = readRows(pgc.ExecStatement(ctx, sd, ps, nil, nil), row)
		} else {
			err = prepareRun(ctx, pgc, s, name, sql, ps, row)
		}
		if attempt == 0 && forgotten(pgc, err) {
			delete(s, name)
			continue
		}
		return err
	}
}

// readRows calls row with the values of each row of rr and closes it.
func readRows(rr *pgconn.ResultReader, row func([][]byte)) error {
	for rr.NextRow() {
		row(rr.Values())
	}
	_, err := rr.Close()
	return err
}

// prepareRun prepares sql as name on pgc's session and, unless ps is nil,
// runs it with ps, calling row with each row's values, in one round trip:
// a pipeline of the Close of any statement of that name the session may
// still have (harmless when there is none), the Parse and Describe of the
// statement, then its Bind and Execute, and one Sync. The statement is
// recorded in s once the server has it, whatever became of its run.
func prepareRun(ctx context.Context, pgc *pgconn.PgConn, s stmts, name, sql string, ps [][]byte, row func([][]byte)) error {
	p := pgc.StartPipeline(ctx)
	p.SendDeallocate(name)
	p.SendPrepare(name, sql, nil)
	if ps != nil {
		p.SendQueryPrepared(name, ps, nil, nil)
	}
	err := p.Sync()
	for err == nil {
		var res any
		res, err = p.GetResults()
		switch res := res.(type) {
		case *pgconn.StatementDescription:
			res.Name, res.SQL = name, sql // the pipeline leaves them empty
			if s != nil {
				s[name] = res
			}
		case *pgconn.ResultReader:
			err = readRows(res, row)
		case *pgconn.PipelineSync, nil:
			if err == nil {
				return p.Close()
			}
		}
	}
	_ = p.Close() // reads what is left up to the Sync
	return err
}

// prepare returns the description of the statement name (sql) on pgc's
// session, preparing it (one round trip) if the session has not.
func prepare(ctx context.Context, pgc *pgconn.PgConn, name, sql string) (*pgconn.StatementDescription, error) {
	s := stmtsOf(pgc)
	if sd := s[name]; sd != nil && sd.SQL == sql {
		return sd, nil
	}
	if s == nil {
		s = make(stmts)
	}
	if err := prepareRun(ctx, pgc, s, name, sql, nil, nil); err != nil {
		return nil, err
	}
	return s[name], nil
}

// callKeyFn runs fn of k on conn's session, prepared (see above), and
// reports whether it returned true. A statement the session forgot is
// prepared again and run once more.
func callKeyFn(ctx context.Context, conn *pgx.Conn, fn keyFn, k Key) (bool, error) {
	var buf [24]byte // on the stack (keyParams would move it to the heap)
	if k.pair {
		a, b, _ := k.Pair()
		ps := [2][]byte{strconv.AppendInt(buf[:0:12], int64(a), 10), strconv.AppendInt(buf[12:12], int64(b), 10)}
		return callPrepared(ctx, conn, keyFnName[1][fn], keyFnSQL[1][fn], ps[:])
	}
	ps := [1][]byte{strconv.AppendInt(buf[:0], k.v, 10)}
	return callPrepared(ctx, conn, keyFnName[0][fn], keyFnSQL[0][fn], ps[:])
}

// The tries of an RWMutex's writer and upgradeable reader, which take the
// name's upgrade key ($1) too (see upgrade.go and req.tryExpr), prepared
// like the key functions: a writer lets it go once it holds the name's
// key ($2), an upgradeable reader keeps it.
const (
	tryWriterName = "dlock_try_writer"
	tryWriterSQL  = "SELECT CASE WHEN pg_try_advisory_lock($1::bigint) THEN CASE WHEN pg_try_advisory_lock($2::bigint) " +
		"THEN pg_advisory_unlock($1::bigint) ELSE NOT pg_advisory_unlock($1::bigint) END ELSE false END"
	tryUReaderName = "dlock_try_ureader"
	tryUReaderSQL  = "SELECT CASE WHEN pg_try_advisory_lock($1::bigint) THEN CASE WHEN pg_try_advisory_lock_shared($2::bigint) " +
		"THEN true ELSE NOT pg_advisory_unlock($1::bigint) END ELSE false END"
)

// callTryUpgradeKey runs the try of r (an RWMutex's writer or upgradeable
// reader: both keys are of the bigint space), prepared.
func callTryUpgradeKey(ctx context.Context, conn *pgx.Conn, r req) (bool, error) {
	var buf [40]byte
	ps := [][]byte{strconv.AppendInt(buf[:0:20], r.upgrade.v, 10), strconv.AppendInt(buf[20:20], r.key.v, 10)}
	if r.ukind == uReader {
		return callPrepared(ctx, conn, tryUReaderName, tryUReaderSQL, ps)
	}
	return callPrepared(ctx, conn, tryWriterName, tryWriterSQL, ps)
}

// callPrepared runs sql, prepared as name, with the text parameters ps,
// and reports whether the first column of its first row was true.
func callPrepared(ctx context.Context, conn *pgx.Conn, name, sql string, ps [][]byte) (bool, error) {
	var v byte
	err := runStmt(ctx, conn.PgConn(), name, sql, ps, func(vals [][]byte) {
		if v == 0 && len(vals) > 0 && len(vals[0]) > 0 {
			v = vals[0][0]
		}
	})
	return v == 't', err
}

// A wait in the server's queue is bounded by lock_timeout from the
// caller's deadline (0 for none) and must not be cut short by a
// statement_timeout of the pool's connections; both settings are local to
// the implicit transaction the wait runs in, so they never outlive it.
//
// waitSQL[pair][shared] is that wait in one statement, for a session whose
// statement_timeout is 0 (the usual case): it sets lock_timeout ($1, in
// ms) and then waits for the key ($2, or $2, $3), returning true. A
// session with a statement_timeout would cut the wait short, since its
// timer runs from the statement's start; the statement then returns false
// at once, without queueing, and the wait runs as two statements in one
// batch (the timeouts statement, then the lock function), which the
// session's connection remembers (waitBatchKey).
var waitSQL, waitName = func() (sql, name [2][2]string) {
	fns := [2]string{"pg_advisory_lock", "pg_advisory_lock_shared"}
	args := [2]string{"$2::bigint", "$2::integer, $3::integer"}
	for pair := range 2 {
		for sh, fn := range fns {
			sql[pair][sh] = "SELECT CASE WHEN current_setting('statement_timeout') <> '0' THEN false " +
				"WHEN set_config('lock_timeout', $1, true) IS NULL THEN false " +
				"ELSE " + fn + "(" + args[pair] + ") IS NOT NULL END"
			name[pair][sh] = "dlock_wait_" + fn + [2]string{"", "2"}[pair]
		}
	}
	return sql, name
}()

// The timeouts statement of the batched wait.
const (
	timeoutsName = "dlock_wait_timeouts"
	timeoutsSQL  = "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true)"
)

// waitBatchKey marks, in a connection's CustomData, a session found with a
// statement_timeout: its waits run as the batch. The mark can only cost a
// round trip saved, never correctness: the batch bounds a wait on any
// session.
const waitBatchKey = "github.com/dlock-go/dlock/pg.waitBatch"

// lockBlocking waits in the server's queue for k in mode m on conn's
// session, prepared: as waitSQL's one statement, or, on a session with a
// statement_timeout, as the timeouts statement and the lock function sent
// together and run in one implicit transaction (one Sync), so the timeouts
// bound the lock's wait and end with it. Either costs one round trip
// besides the wait (the first wait on a session with a statement_timeout,
// two).
func lockBlocking(ctx context.Context, conn *pgx.Conn, lockTimeoutMS int64, k Key, m mode) error {
	sh := 0
	fn := fnLock
	if m == shared {
		sh, fn = 1, fnLockShared
	}
	var buf [44]byte
	var params [3][]byte
	params[0] = strconv.AppendInt(buf[:0:20], lockTimeoutMS, 10)
	pair, ps := keyParams(k, (*[24]byte)(buf[20:]), (*[2][]byte)(params[1:]))
	cd := conn.PgConn().CustomData()
	if cd[waitBatchKey] == nil {
		ok, err := callPrepared(ctx, conn, waitName[pair][sh], waitSQL[pair][sh], params[:1+len(ps)])
		if err != nil || ok {
			return err
		}
		if cd != nil {
			cd[waitBatchKey] = true
		}
	}
	pgc := conn.PgConn()
	for attempt := 0; ; attempt++ {
		sdT, err := prepare(ctx, pgc, timeoutsName, timeoutsSQL)
		if err != nil {
			return err
		}
		sdL, err := prepare(ctx, pgc, keyFnName[pair][fn], keyFnSQL[pair][fn])
		if err != nil {
			return err
		}
		batch := &pgconn.Batch{}
		batch.ExecStatement(sdT, params[:1], nil, nil)
		batch.ExecStatement(sdL, ps, nil, nil)
		err = drain(pgc.ExecBatch(ctx, batch))
		if attempt == 0 && forgotten(pgc, err) {
			s := stmtsOf(pgc)
			delete(s, timeoutsName)
			delete(s, keyFnName[pair][fn])
			continue
		}
		return err
	}
}

// drain reads every result of mrr without copying them (ReadAll would
// copy each row) and returns the first error.
func drain(mrr *pgconn.MultiResultReader) error {
	for mrr.NextResult() {
		_, _ = mrr.ResultReader().Close()
	}
	return mrr.Close()
}
