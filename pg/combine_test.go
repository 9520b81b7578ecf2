package pg_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/pg"
)

// privateDB creates a database of its own for t on the test server,
// dropped at cleanup (after the pools t made on it are closed), runs
// setup in it, and returns its URL.
func privateDB(t *testing.T, setup ...string) string {
	t.Helper()
	base := testURL(t)
	name := fmt.Sprintf("dlock_test_%d", time.Now().UnixNano())
	admin(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() { admin(t, base, "DROP DATABASE "+name+" WITH (FORCE)") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	for _, s := range setup {
		admin(t, u.String(), s)
	}
	return u.String()
}

// sharedPool returns a pool on dbURL whose connections use searchPath
// ("" for the server's), closed at cleanup.
func sharedPool(t *testing.T, dbURL, searchPath string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	if searchPath != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = searchPath
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// shadow returns the statement that creates, in schema hostile, a
// function fn(k bigint) that does act when k is key and then calls
// pg_catalog's fn: a pool whose search_path is "hostile, pg_catalog"
// (hostileBackend) runs it instead of the server's.
func shadow(fn string, key int, act string) string {
	return "CREATE FUNCTION hostile." + fn + "(k bigint) RETURNS boolean LANGUAGE plpgsql AS $$\n" +
		"BEGIN\n\tIF k = " + strconv.Itoa(key) + " THEN " + act + "; END IF;\n" +
		"\tRETURN pg_catalog." + fn + "(k);\nEND $$"
}

// hostileBackend returns a backend with one lock connection over a
// private database whose functions fns (made by shadow) shadow the
// server's advisory lock functions, and the database's URL.
func hostileBackend(t *testing.T, fns ...string) (*pg.Backend, string) {
	t.Helper()
	db := privateDB(t, append([]string{"CREATE SCHEMA hostile"}, fns...)...)
	return newOn(t, sharedPool(t, db, "hostile, pg_catalog"), pg.WithMaxLockConns(1)), db
}

// churn runs goroutines that each take and release, rounds times, keys
// of their own (TryLock through b.Keys(), bigint keys from
// base+goroutine*rounds), and reports the first unexpected outcome.
func churn(ctx context.Context, b *pg.Backend, goroutines, rounds int, base int64) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				k := strconv.FormatInt(base+int64(g*rounds+i), 10)
				l, ok, err := b.Keys().TryLock(ctx, k)
				if err == nil && !ok {
					err = errors.New("not acquired: nobody else takes it")
				}
				if err == nil {
					if l.IsLost() {
						err = errors.New("lost before its release")
					} else {
						err = l.Release(ctx)
					}
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("key %s: %w", k, err)
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// TestSharedConnectionCombines: goroutines sharing one lock connection
// have their tries and unlocks sent together, so the server runs fewer
// transactions than statements; and every lock is still taken and
// released exactly as asked (each goroutine's keys are its own).
func TestSharedConnectionCombines(t *testing.T) {
	db := privateDB(t)
	base := testURL(t)
	pool := sharedPool(t, db, "")
	b, err := pg.New(pool, pg.WithMaxLockConns(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const goroutines, rounds = 32, 60
	if err := churn(ctx, b, goroutines, rounds, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	pool.Close() // its sessions report their counts as they exit
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	dbName := u.Path[1:]
	var commits int64
	for deadline := time.Now().Add(10 * time.Second); ; {
		n := scalar[int64](t, base, "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", dbName)
		if n == commits && n > 0 {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		commits = n
		time.Sleep(300 * time.Millisecond)
	}
	ops := int64(goroutines * rounds)
	t.Logf("%d locks taken and released in %d transactions (one per statement: %d)", ops, commits, 2*ops)
	if commits == 0 || commits >= ops {
		t.Fatalf("%d transactions for %d locks: want fewer than one per lock (statements of a shared connection sent together)", commits, ops)
	}
}

// TestCombinedStatementFails: a combined statement that fails halfway on
// a session that lives on (here a try of a poisoned key: the pool's
// search_path puts a pg_try_advisory_lock that raises for it before
// pg_catalog's) costs the other calls nothing: each still gets the
// outcome it would have had alone, no lease is lost, and the session
// holds no lock afterwards.
func TestCombinedStatementFails(t *testing.T) {
	const poison = -4242
	b, db := hostileBackend(t, shadow("pg_try_advisory_lock", poison, "RAISE EXCEPTION 'poisoned key'"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	stop := make(chan struct{})
	var poisoned, refused int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			l, ok, err := b.Keys().TryLock(ctx, strconv.Itoa(poison))
			poisoned++
			switch {
			case err != nil:
				refused++
			case ok:
				_ = l.Release(ctx)
				t.Error("the poisoned key was granted")
			default:
				t.Error("the poisoned key's try reported no error")
			}
		}
	}()
	err := churn(ctx, b, 16, 80, -1_000_000)
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if refused != poisoned || poisoned == 0 {
		t.Fatalf("%d of %d poisoned tries failed", refused, poisoned)
	}
	held := scalar[int64](t, db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
	if held != 0 {
		t.Fatalf("%d advisory locks still held after every lease was released", held)
	}
	t.Logf("%d poisoned tries, all refused; 1280 other locks taken and released", poisoned)
}

// TestSharedConnectionTerminated: the server ends a lock connection that
// goroutines share while their tries and unlocks are in flight together
// (pg_terminate_backend, again and again): every lease on it reports the
// loss or was released before, nothing panics, and tries succeed again
// on a new connection.
func TestSharedConnectionTerminated(t *testing.T) {
	db := privateDB(t)
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	pool := sharedPool(t, db, "")
	b := newOn(t, pool, pg.WithMaxLockConns(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	outcomes := map[string]int{}
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := strconv.Itoa(g*1_000_000 + i)
				l, ok, err := b.Keys().TryLock(ctx, k)
				what := "granted"
				switch {
				case err != nil:
					what = "try failed"
				case !ok:
					t.Errorf("key %s: not acquired, and nobody else takes it", k)
					return
				default:
					if err := l.Release(ctx); errors.Is(err, dlock.ErrLockLost) {
						what = "lost"
					} else if err != nil {
						t.Errorf("key %s: release: %v", k, err)
						return
					}
				}
				mu.Lock()
				outcomes[what]++
				mu.Unlock()
			}
		}()
	}
	for range 10 {
		time.Sleep(30 * time.Millisecond)
		admin(t, testURL(t), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", u.Path[1:])
	}
	close(stop)
	wg.Wait()
	t.Logf("outcomes: %v", outcomes)
	l, ok, err := b.Keys().TryLock(ctx, "-1")
	if err != nil || !ok {
		t.Fatalf("a try after the terminations: %v, %v", ok, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if held := scalar[int64](t, db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"); held != 0 {
		t.Fatalf("%d advisory locks held after every lease ended", held)
	}
}

// TestQueuedTryGivesUp: a try queued behind a slow statement on its lock
// connection (a pg_try_advisory_lock that the pool's search_path makes
// sleep 2s for one key) ends with its ctx, matching dlock.ErrNotAcquired and
// the ctx's error, and is never sent afterwards: once the slow statement
// returns, the session holds only the slow key; a try queued with time to
// spare is then run.
func TestQueuedTryGivesUp(t *testing.T) {
	const slow = 777
	b, db := hostileBackend(t, shadow("pg_try_advisory_lock", slow, "PERFORM pg_sleep(2)"))
	ctx := ctxT(t, time.Minute)
	slowDone := make(chan error, 1)
	var slowLease *pg.Lease
	go func() {
		l, ok, err := b.Keys().TryLock(ctx, strconv.Itoa(slow))
		if err == nil && !ok {
			err = errors.New("the slow key was not acquired")
		}
		slowLease = l
		slowDone <- err
	}()
	time.Sleep(200 * time.Millisecond) // the slow try is in flight
	later := make(chan error, 1)
	go func() {
		l, ok, err := b.Keys().TryLock(ctx, "779")
		if err == nil && !ok {
			err = errors.New("779 was not acquired")
		}
		if err == nil {
			err = l.Release(ctx)
		}
		later <- err
	}()
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, ok, err := b.Keys().TryLock(tctx, "778")
	took := time.Since(start)
	if ok || !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a try queued past its ctx: ok %v, err %v; want ErrNotAcquired and DeadlineExceeded", ok, err)
	}
	if took > 1200*time.Millisecond {
		t.Fatalf("a try queued behind a slow statement returned after %v, past its ctx (200ms)", took)
	}
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}
	if err := <-later; err != nil {
		t.Fatalf("a try queued with time to spare: %v", err)
	}
	keys := scalar[string](t, db, "SELECT coalesce(string_agg(objid::text, ','), '') FROM pg_locks WHERE locktype = 'advisory'")
	if keys != strconv.Itoa(slow) {
		t.Fatalf("advisory locks held: %q, want only %d", keys, slow)
	}
	if err := slowLease.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestShortDeadlineRunsAlone: a release due soon, queued with tries on
// its lock connection, runs alone, so that when its statement overruns
// its deadline (a pg_advisory_unlock that the search_path makes sleep 2s
// for its key) and the connection is ended, the tries queued with it are
// not cut short: they run again on a new connection and succeed.
func TestShortDeadlineRunsAlone(t *testing.T) {
	const held, slow = 801, 802
	b, _ := hostileBackend(t,
		shadow("pg_try_advisory_lock", slow, "PERFORM pg_sleep(1)"),
		shadow("pg_advisory_unlock", held, "PERFORM pg_sleep(2)"))
	ctx := ctxT(t, time.Minute)
	l, ok, err := b.Keys().TryLock(ctx, strconv.Itoa(held))
	if err != nil || !ok {
		t.Fatalf("TryLock: %v, %v", ok, err)
	}
	slowDone := make(chan error, 1)
	go func() { // occupies the connection for 1s
		_, _, err := b.Keys().TryLock(ctx, strconv.Itoa(slow))
		slowDone <- err
	}()
	time.Sleep(200 * time.Millisecond)
	const tries = 3
	tried := make(chan error, tries)
	for i := range tries {
		go func() {
			l, ok, err := b.Keys().TryLock(ctx, strconv.Itoa(900+i))
			if err == nil && !ok {
				err = errors.New("not acquired")
			}
			if err == nil {
				err = l.Release(ctx)
			}
			tried <- err
		}()
	}
	time.Sleep(100 * time.Millisecond) // the tries queue first
	rctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = l.Release(rctx)
	took := time.Since(start)
	if !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("a release that overran its deadline: %v, want ErrLockLost", err)
	}
	if took > 2500*time.Millisecond {
		t.Fatalf("a release with 1.5s left returned after %v", took)
	}
	for range tries {
		if err := <-tried; err != nil {
			t.Fatalf("a try queued with a release due soon: %v", err)
		}
	}
	<-slowDone
}
