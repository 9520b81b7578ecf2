package pg

import (
	"context"
	"errors"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The statements of the uncontended path — a try and an unlock, of a key in
// either mode — are prepared on each connection the first time it runs
// them (pgx's Conn.Prepare, which remembers them per connection: later
// calls cost no round trip) and then run with the extended protocol, the
// key as a text parameter: the server neither parses nor plans them again,
// which is about a third of a round trip's cost on loopback. The statement
// names begin with "dlock_"; they live as long as the session, like those
// pgx prepares for the application.

// keyFn is one of the advisory lock functions of one key space (bigint,
// or a pair of integers).
type keyFn uint8

const (
	fnTry keyFn = iota
	fnTryShared
	fnUnlock
	fnUnlockShared
	numKeyFns
)

// keyFnSQL[pair][fn] is the statement (and keyFnName its name) that calls
// fn on the key in parameters $1 (bigint) or $1, $2 (pair).
var keyFnSQL, keyFnName = func() (sql, name [2][numKeyFns]string) {
	fns := [numKeyFns]string{"pg_try_advisory_lock", "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared"}
	for f, fn := range fns {
		sql[0][f] = "SELECT " + fn + "($1::bigint)"
		name[0][f] = "dlock_" + fn
		sql[1][f] = "SELECT " + fn + "($1::integer, $2::integer)"
		name[1][f] = "dlock_" + fn + "2"
	}
	return sql, name
}()

// callKeyFn runs fn of k on conn's session, prepared (see above), and
// reports whether it returned true. A statement the session no longer
// knows (the application ran DEALLOCATE ALL or DISCARD ALL behind pgx's
// back) is prepared again and run once more: the server refused it before
// running it.
func callKeyFn(ctx context.Context, conn *pgx.Conn, fn keyFn, k Key) (bool, error) {
	pair := 0
	if k.pair {
		pair = 1
	}
	var buf [24]byte
	var params [2][]byte
	n := 1
	if k.pair {
		a, b, _ := k.Pair()
		params[0] = strconv.AppendInt(buf[:0:12], int64(a), 10)
		params[1] = strconv.AppendInt(buf[12:12], int64(b), 10)
		n = 2
	} else {
		params[0] = strconv.AppendInt(buf[:0], k.v, 10)
	}
	for attempt := 0; ; attempt++ {
		sd, err := conn.Prepare(ctx, keyFnName[pair][fn], keyFnSQL[pair][fn])
		if err != nil {
			return false, err
		}
		rr := conn.PgConn().ExecStatement(ctx, sd, params[:n], nil, nil)
		var v byte
		for rr.NextRow() {
			if vals := rr.Values(); len(vals) > 0 && len(vals[0]) > 0 {
				v = vals[0][0]
			}
		}
		_, err = rr.Close()
		var pgErr *pgconn.PgError
		if attempt == 0 && errors.As(err, &pgErr) && pgErr.Code == "26000" && !conn.PgConn().IsClosed() {
			// invalid_sql_statement_name: forget it, prepare it again.
			_ = conn.Deallocate(ctx, keyFnName[pair][fn])
			continue
		}
		return v == 't', err
	}
}
