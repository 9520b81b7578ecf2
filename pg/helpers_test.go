package pg_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/pg"
)

// testURL returns the test server's URL, skipping (or failing under
// DLOCK_REQUIRE_SERVERS=1) when there is none.
func testURL(t testing.TB) string {
	t.Helper()
	return dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
}

// newPool returns a pool on the test server, closed at cleanup.
func newPool(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	return newPoolWith(t, url, maxConns, nil)
}

// newPoolWith is newPool with set, when not nil, changing the pool's
// configuration first.
func newPoolWith(t testing.TB, url string, maxConns int32, set func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	if set != nil {
		set(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// newOn returns a backend over pool, closed at cleanup (before the pool,
// whose Close was registered first).
func newOn(t testing.TB, pool *pgxpool.Pool, opts ...pg.Option) *pg.Backend {
	t.Helper()
	b, err := pg.New(pool, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// newBackend returns a backend over a pool of its own, both closed at
// cleanup.
func newBackend(t testing.TB, url string, opts ...pg.Option) (*pg.Backend, *pgxpool.Pool) {
	t.Helper()
	pool := newPool(t, url, 0)
	b := newOn(t, pool, opts...)
	return b, pool
}

// admin runs one statement on a connection of its own.
func admin(t testing.TB, url, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// terminate kills the session with process ID pid and waits (up to 10s)
// until it has ended: its locks are free when terminate returns.
func terminate(t testing.TB, url string, pid uint32) {
	t.Helper()
	admin(t, url, "SELECT pg_terminate_backend($1, 10000)", int64(pid))
}

// scalar runs a one-value query on a connection of its own.
func scalar[T any](t testing.TB, url, sql string, args ...any) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var v T
	if err := c.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}
