package pg_test

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/pg"
)

func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DLOCK_TEST_PG_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	b, err := pg.New(pool)
	if err != nil {
		panic(err)
	}
	defer b.Close()

	mu := dlock.NewMutex(b)
	err = mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
		// At most one process runs this at a time. ctx is cancelled, with
		// cause dlock.ErrLockLost, if the lock is lost meanwhile.
		return nil
	})
	fmt.Println(err)
}

// Numeric advisory keys interoperate with SQL that calls
// pg_advisory_lock(42) directly.
func ExampleBackend_Keys() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DLOCK_TEST_PG_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	b, err := pg.New(pool)
	if err != nil {
		panic(err)
	}
	defer b.Close()

	mu := dlock.NewMutex(b.Keys())
	err = mu.Do(ctx, pg.Int64Key(42).String(), func(ctx context.Context) error {
		return nil // excludes pg_advisory_lock(42) elsewhere
	})
	fmt.Println(err)
}

// A transaction-scoped lock is released by the transaction's end, so the
// work under it commits together with the release.
func ExampleLockTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DLOCK_TEST_PG_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	tx, err := pool.Begin(ctx)
	if err != nil {
		panic(err)
	}
	defer tx.Rollback(ctx)
	if err := pg.LockTx(ctx, tx, pg.MutexKey("invoice-numbers")); err != nil {
		panic(err)
	}
	// ... read and write under the lock ...
	fmt.Println(tx.Commit(ctx)) // also releases the lock
}

// Fencing tokens let a downstream store refuse a stale holder's writes.
func ExampleWithFencing() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DLOCK_TEST_PG_URL"))
	if err != nil {
		panic(err)
	}
	defer pool.Close()
	b, err := pg.New(pool, pg.WithFencing(""))
	if err != nil {
		panic(err)
	}
	defer b.Close()

	lk, err := dlock.NewMutex(b).Acquire(ctx, "leader")
	if err != nil {
		panic(err)
	}
	defer lk.Release(ctx)
	token, _ := lk.Token()
	_ = token // send with every write; the store keeps the largest seen
}
