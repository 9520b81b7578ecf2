package pg_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/internal/golden"
	"github.com/dlock-go/dlock/pg"
)

// pgErrors hides what varies between machines and runs: addresses.
type pgErrors struct{ error }

var addrRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)

func (e pgErrors) Error() string { return addrRE.ReplaceAllString(e.error.Error(), "$$ADDR") }

// hide wraps err so that its message hides addresses (nil stays nil).
func hide(err error) error {
	if err == nil {
		return nil
	}
	return pgErrors{err}
}

// The messages of the PostgreSQL backend's error paths, through the
// engine: the kind and name once, then the backend's bare cause.
func TestErrorMessages(t *testing.T) {
	url := testURL(t)
	ctx := context.Background()
	b, _ := newBackend(t, url)
	mu := dlock.NewMutex(b)
	pool := newPool(t, url, 2)
	golden.Check(t, "testdata/errors.golden", []golden.Case{
		golden.C("a try of a held lock", func(t *testing.T) error {
			lk, err := mu.TryAcquire(ctx, "job")
			if err != nil {
				t.Fatal(err)
			}
			defer lk.Release(ctx)
			_, err = mu.TryAcquire(ctx, "job")
			return err
		}),
		golden.C("a wait ended by its deadline", func(t *testing.T) error {
			lk, err := mu.TryAcquire(ctx, "job")
			if err != nil {
				t.Fatal(err)
			}
			defer lk.Release(ctx)
			wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			_, err = mu.Acquire(wctx, "job")
			return err
		}),
		golden.C("a numeric key that does not parse", func(t *testing.T) error {
			_, err := dlock.NewMutex(b.Keys()).TryAcquire(ctx, "not-a-key")
			return err
		}),
		golden.C("a semaphore limit of 0", func(t *testing.T) error {
			_, err := dlock.NewSemaphore(b, 0).TryAcquire(ctx, "job")
			return err
		}),
		golden.C("a second release", func(t *testing.T) error {
			lk, err := mu.TryAcquire(ctx, "job")
			if err != nil {
				t.Fatal(err)
			}
			_ = lk.Release(ctx)
			return lk.Release(ctx)
		}),
		golden.C("a release after the session was terminated", func(t *testing.T) error {
			lk, err := mu.TryAcquire(ctx, "job")
			if err != nil {
				t.Fatal(err)
			}
			admin(t, url, "SELECT pg_terminate_backend($1)", int64(lk.Lease().PID()))
			<-lk.Lost()
			return hide(lk.Release(ctx))
		}),
		golden.C("a try after Close", func(t *testing.T) error {
			closed, _ := newBackend(t, url)
			_ = closed.Close()
			_, err := dlock.NewMutex(closed).TryAcquire(ctx, "job")
			return hide(err)
		}),
		golden.C("a try with the server down", func(t *testing.T) error {
			pool := newPool(t, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2", 2)
			down := newOn(t, pool)
			_, err := dlock.NewMutex(down).TryAcquire(ctx, "job")
			return hide(err)
		}),
		// New's invalid arguments: the option and the value.
		golden.C("New with a nil pool", newErr(nil)),
		golden.C("New with a loss interval below 20ms", newErr(pool, pg.WithLossInterval(10*time.Millisecond))),
		golden.C("New with an op timeout below 100ms", newErr(pool, pg.WithOpTimeout(0))),
		golden.C("New with no lock connections", newErr(pool, pg.WithMaxLockConns(0))),
		golden.C("New with no leases per connection", newErr(pool, pg.WithMaxLeasesPerConn(-1))),
		golden.C("New with a fencing table of three parts", newErr(pool, pg.WithFencing("db.locks.fencing"))),
		golden.C("New with a fencing table with an empty part", newErr(pool, pg.WithFencing("locks."))),
		golden.C("New with a fencing table with a NUL byte", newErr(pool, pg.WithFencing("fen\x00cing"))),
		golden.C("New with a fencing table name too long", newErr(pool, pg.WithFencing(strings.Repeat("t", 64)))),
	})
}

// newErr returns New's error for pool and opts.
func newErr(pool *pgxpool.Pool, opts ...pg.Option) func(*testing.T) error {
	return func(*testing.T) error {
		b, err := pg.New(pool, opts...)
		if b != nil {
			_ = b.Close()
		}
		return err
	}
}
