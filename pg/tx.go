package pg

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dlock-go/dlock/backend"
)

// Transaction-scoped locks.
//
// LockTx and its relatives take an advisory lock inside the caller's own
// transaction (pg_advisory_xact_lock): the lock is released by the
// transaction's commit or rollback, never by the caller, so work that must
// be atomic with the lock commits together with its release. They need no
// Backend. Keys come from MutexKey, RWKey (which exclude the Backend's
// locks of the same name), Int64Key or PairKey.
//
// PostgreSQL's advisory locks are re-entrant within one session: a
// transaction that takes one key twice holds it twice (until its end); two
// different transactions, or a transaction and a Backend's lease, exclude
// each other.
//
// A wait that ctx ends is cancelled on the server (a cancel request), inside
// a savepoint that is rolled back, so the transaction stays usable and
// holds nothing new. If the lock was granted at the same moment as ctx
// ended, LockTx returns nil: the lock is held, and reported so.

// TryLockTx makes one attempt to take key exclusively in tx
// (pg_try_advisory_xact_lock).
func TryLockTx(ctx context.Context, tx pgx.Tx, key Key) (bool, error) {
	return tryTx(ctx, tx, key, exclusive)
}

// TryRLockTx makes one attempt to take key shared in tx
// (pg_try_advisory_xact_lock_shared).
func TryRLockTx(ctx context.Context, tx pgx.Tx, key Key) (bool, error) {
	return tryTx(ctx, tx, key, shared)
}

// LockTx takes key exclusively in tx (pg_advisory_xact_lock), waiting until
// it is free or ctx is done. When ctx ends first it returns an error
// matching backend.ErrNotAcquired and ctx.Err().
func LockTx(ctx context.Context, tx pgx.Tx, key Key) error { return lockTx(ctx, tx, key, exclusive) }

// RLockTx takes key shared in tx (pg_advisory_xact_lock_shared), waiting
// until it is free or ctx is done.
func RLockTx(ctx context.Context, tx pgx.Tx, key Key) error { return lockTx(ctx, tx, key, shared) }

func tryTx(ctx context.Context, tx pgx.Tx, key Key, m mode) (bool, error) {
	if tx == nil {
		return false, errors.New("pg: nil transaction")
	}
	if ctx.Err() != nil {
		return false, fmt.Errorf("pg: key %s: %w: %w", key, backend.ErrNotAcquired, ctx.Err())
	}
	fn := "pg_try_advisory_xact_lock"
	if m == shared {
		fn = "pg_try_advisory_xact_lock_shared"
	}
	var ok bool
	if err := tx.QueryRow(ctx, "SELECT "+fn+"("+key.String()+")").Scan(&ok); err != nil {
		return false, fmt.Errorf("pg: key %s: try in transaction: %w", key, err)
	}
	return ok, nil
}

func lockTx(ctx context.Context, tx pgx.Tx, key Key, m mode) error {
	ok, err := tryTx(ctx, tx, key, m)
	if err != nil || ok {
		return err
	}
	sp, err := tx.Begin(ctx) // a savepoint, to undo a cancelled wait
	if err != nil {
		return fmt.Errorf("pg: key %s: savepoint: %w", key, err)
	}
	fn := "pg_advisory_xact_lock"
	if m == shared {
		fn = "pg_advisory_xact_lock_shared"
	}
	pgc := tx.Conn().PgConn()
	sql := "SELECT " + fn + "(" + key.String() + ")"
	_, sent, err := runCancellable(ctx, pgc, func(qctx context.Context) ([][]byte, error) { return query(qctx, pgc, sql) }, defaultOpTimeout)
	uctx := context.WithoutCancel(ctx)
	if err == nil {
		if err := sp.Commit(uctx); err != nil {
			return fmt.Errorf("pg: key %s: release savepoint: %w", key, err)
		}
		return nil
	}
	var pgErr *pgconn.PgError
	// Cancelled by the request sent for ctx, or cut when it got no answer.
	cancelled := errors.As(err, &pgErr) && pgErr.Code == "57014" || sent && pgc.IsClosed()
	if rerr := sp.Rollback(uctx); rerr != nil {
		err = errors.Join(err, fmt.Errorf("rollback to savepoint: %w", rerr))
	}
	if cancelled && ctx.Err() != nil && pgc.IsClosed() {
		return fmt.Errorf("pg: key %s: %w: %w (the server did not answer the cancel request in time: the transaction's connection was closed: %w)", key, backend.ErrNotAcquired, ctx.Err(), err)
	}
	if cancelled && ctx.Err() != nil {
		return fmt.Errorf("pg: key %s: %w: %w", key, backend.ErrNotAcquired, ctx.Err())
	}
	return fmt.Errorf("pg: key %s: lock in transaction: %w", key, err)
}
