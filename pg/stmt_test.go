package pg_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
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

// TestWaitOutlivesStatementTimeout checks the promise that a wait in the
// server's queue is not cut short by a statement_timeout of the pool's
// connections, however the session got it (the connection string, or a
// SET on a pooled connection after the backend's first wait on it), that
// it is still bounded by ctx, and that nothing the wait sets outlives it.
func TestWaitOutlivesStatementTimeout(t *testing.T) {
	url := testURL(t)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	const stmtTimeout = 100 * time.Millisecond
	type waitFn func(b *pg.Backend, ctx context.Context, name string) (*pg.Lease, error)
	kinds := []struct {
		what       string
		hold, wait waitFn
		name       string
	}{
		{"mutex", (*pg.Backend).Lock, (*pg.Backend).Lock, uniq(t) + "m"},
		{"pair key", keysLock, keysLock, pg.PairKey(71, 3).String()},
		{"pair key reader", keysLock, keysRLock, pg.PairKey(71, 4).String()},
		{"reader", (*pg.Backend).WLock, (*pg.Backend).RLock, uniq(t) + "r"},
		{"writer", (*pg.Backend).RLock, (*pg.Backend).WLock, uniq(t) + "w"},
	}
	check := func(t *testing.T, b *pg.Backend) {
		for _, k := range kinds {
			h, err := k.hold(other, ctx, k.name)
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan error, 1)
			start := time.Now()
			go func() {
				l, err := k.wait(b, ctx, k.name)
				if err == nil {
					err = l.Release(ctx)
				}
				got <- err
			}()
			time.Sleep(3 * stmtTimeout)
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-got; err != nil {
				t.Fatalf("%s: a wait of %v on sessions with statement_timeout %v: %v", k.what, time.Since(start), stmtTimeout, err)
			}
			// Still bounded by ctx.
			h, err = k.hold(other, ctx, k.name)
			if err != nil {
				t.Fatal(err)
			}
			dctx, cancel := context.WithTimeout(ctx, 2*stmtTimeout)
			_, err = k.wait(b, dctx, k.name)
			cancel()
			if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%s: a wait past its deadline: %v", k.what, err)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// settings reports what the idle connections of pool have (those
	// whose sessions are in pids, unless pids is nil).
	settings := func(t *testing.T, pool *pgxpool.Pool, pids map[uint32]bool) map[string]bool {
		conns := pool.AcquireAllIdle(ctx)
		defer func() {
			for _, c := range conns {
				c.Release()
			}
		}()
		seen := map[string]bool{}
		for _, c := range conns {
			if pids != nil && !pids[c.Conn().PgConn().PID()] {
				continue // a new session (a cancelled wait may close one)
			}
			var st, lt string
			if err := c.QueryRow(ctx, "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')").Scan(&st, &lt); err != nil {
				t.Fatal(err)
			}
			seen[st+" "+lt] = true
		}
		return seen
	}
	t.Run("connection string", func(t *testing.T) {
		pool := newPoolWith(t, url, 3, func(c *pgxpool.Config) {
			c.ConnConfig.RuntimeParams["statement_timeout"] = strconv.Itoa(int(stmtTimeout.Milliseconds()))
		})
		b := newOn(t, pool)
		check(t, b)
		check(t, b) // the sessions are now known to have one
		if got := settings(t, pool, nil); len(got) != 1 || !got["100ms 0"] {
			t.Fatalf("the sessions' settings after the waits: %v, want only 100ms 0", got)
		}
	})
	t.Run("SET after the first wait", func(t *testing.T) {
		pool := newPool(t, url, 3)
		warm(t, pool, 3)
		b := newOn(t, pool)
		check(t, b) // these waits ran as the one statement: nothing marked
		conns := pool.AcquireAllIdle(ctx)
		pids := map[uint32]bool{}
		for _, c := range conns {
			if _, err := c.Exec(ctx, "SET statement_timeout = 100"); err != nil {
				t.Fatal(err)
			}
			pids[c.Conn().PgConn().PID()] = true
			c.Release()
		}
		check(t, b)
		if got := settings(t, pool, pids); len(got) != 1 || !got["100ms 0"] {
			t.Fatalf("the sessions' settings after the waits: %v, want only 100ms 0", got)
		}
	})
}

// TestWaitBoundedOnServer checks that a wait leaves the server's queue by
// itself at ctx's deadline (its lock_timeout), when the cancel request
// cannot reach the server: new connections are refused once the wait has
// its connection. Otherwise the session, which the server does not see
// closed while it waits, would stay queued and be granted the lock after
// the caller had given up.
func TestWaitBoundedOnServer(t *testing.T) {
	url := testURL(t)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	// On a session with a statement_timeout the wait runs as the batch.
	for _, stmtTimeout := range []string{"0", "100"} {
		t.Run("statement_timeout="+stmtTimeout, func(t *testing.T) {
			var refuse atomic.Bool
			pool := newPoolWith(t, url, 3, func(c *pgxpool.Config) {
				c.ConnConfig.RuntimeParams["statement_timeout"] = stmtTimeout
				dial := c.ConnConfig.DialFunc
				c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
					if refuse.Load() {
						return nil, errors.New("test: new connections refused")
					}
					return dial(ctx, network, addr)
				}
			})
			warm(t, pool, 3)
			b := newOn(t, pool)
			k := time.Now().UnixNano()
			name := pg.Int64Key(k).String()
			h, err := other.Keys().Lock(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = h.Release(ctx) }()
			refuse.Store(true)
			wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			_, err = b.Keys().Lock(wctx, name)
			cancel()
			if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("a wait past its deadline: %v", err)
			}
			const queued = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND NOT granted " +
				"AND ((classid::bigint << 32) | objid::bigint) = $1"
			for end := time.Now().Add(2 * time.Second); scalar[int64](t, url, queued, k) > 0; {
				if time.Now().After(end) {
					t.Fatal("2s after its deadline, the wait is still in the server's queue")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// keysLock and keysRLock wait for name, a key's name, on b's Keys.
func keysLock(b *pg.Backend, ctx context.Context, name string) (*pg.Lease, error) {
	return b.Keys().Lock(ctx, name)
}

func keysRLock(b *pg.Backend, ctx context.Context, name string) (*pg.Lease, error) {
	return b.Keys().RLock(ctx, name)
}

// TestFirstRunOneRoundTrip checks that a statement's first run on a
// connection costs one round trip, like every later run: it is prepared
// in the same flight of messages. A statement prepared first in a round
// trip of its own cost a fresh pool up to three round trips per
// connection, one of them while the lock was held (the first unlock).
// Counted: the writes to the server (one per flight of messages).
func TestFirstRunOneRoundTrip(t *testing.T) {
	url := testURL(t)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	var counting atomic.Bool
	var writes atomic.Int64
	pool := newPoolWith(t, url, 2, func(c *pgxpool.Config) {
		c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
		dial := c.ConnConfig.DialFunc
		c.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: nc, on: &counting, writes: &writes}, nil
		}
	})
	warm(t, pool, 2)
	b := newOn(t, pool)
	count := func(what string, want int64, f func()) {
		t.Helper()
		writes.Store(0)
		counting.Store(true)
		f()
		counting.Store(false)
		if got := writes.Load(); got != want {
			t.Fatalf("%s on fresh connections: %d flights of messages to the server, want %d (one per statement)", what, got, want)
		}
	}
	name := uniq(t)
	// A try and its unlock.
	count("a try and a release", 2, func() {
		l, ok, err := b.TryLock(ctx, name)
		mustTry(t, ok, err)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	})
	// A wait: its try fails, it waits on a connection of its own, and
	// unlocks there.
	h, err := other.Lock(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	count("a wait and a release", 3, func() {
		got := make(chan error, 1)
		go func() {
			l, err := b.Lock(ctx, name)
			if err == nil {
				err = l.Release(ctx)
			}
			got <- err
		}()
		for end := time.Now().Add(10 * time.Second); writes.Load() < 2; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("the wait did not reach the server")
			}
		}
		time.Sleep(50 * time.Millisecond)
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	})
	assertPoolClean(t, pool)
}

// countingConn counts its writes while on is set.
type countingConn struct {
	net.Conn
	on     *atomic.Bool
	writes *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.on.Load() {
		c.writes.Add(1)
	}
	return c.Conn.Write(p)
}
