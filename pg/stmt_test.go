package pg_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/pg"
)

// deallocateAll drops every prepared statement of every connection of
// pool behind pgx's back (raw DEALLOCATE ALL: pgx still believes them
// prepared).
func deallocateAll(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	conns := pool.AcquireAllIdle(ctx)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	if len(conns) == 0 {
		t.Fatal("no idle connection")
	}
	for _, c := range conns {
		if _, err := c.Conn().PgConn().Exec(ctx, "DEALLOCATE ALL").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestForgottenStatements checks that tries, unlocks and waits (whose
// statements the backend prepares once per connection) still work after
// the sessions forgot them: they prepare them again.
func TestForgottenStatements(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 2)
	warm(t, pool, 2)
	b := newOn(t, pool)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, 30*time.Second)
	for _, k := range []pg.Key{pg.Int64Key(7_000_001), pg.PairKey(7, 2)} {
		name := k.String()
		mu, rw := dlock.NewMutex(b.Keys()), dlock.NewRWMutex(b.Keys())
		wait := func(what string) {
			t.Helper()
			h, ok, err := other.Keys().TryLock(ctx, name)
			mustTry(t, ok, err)
			got := make(chan error, 1)
			go func() {
				// The backend's own wait: dlock's would ride out an error.
				l, err := b.Keys().Lock(ctx, name)
				if err == nil {
					err = l.Release(ctx)
				}
				got <- err
			}()
			time.Sleep(50 * time.Millisecond)
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatalf("key %s: wait %s: %v", name, what, err)
			}
		}
		// Prepare everything on both connections: a try and a wait on
		// each.
		for range 2 {
			l, err := mu.TryAcquire(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			wait("to prepare")
		}
		deallocateAll(t, pool)
		wait("after DEALLOCATE ALL")
		deallocateAll(t, pool)
		for i, g := range []*dlock.Guard[*pg.Lease]{mu, rw.Read(), rw.Write()} {
			l, err := g.TryAcquire(ctx, name)
			if err != nil {
				t.Fatalf("guard %d, key %s: try after DEALLOCATE ALL: %v", i, name, err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatalf("guard %d, key %s: release after DEALLOCATE ALL: %v", i, name, err)
			}
			deallocateAll(t, pool)
		}
	}
	assertPoolClean(t, pool)
}
