package pg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/pg"
)

// maxTotal samples the pool's connection count until stop closes and
// returns the largest seen.
func maxTotal(pool *pgxpool.Pool, stop <-chan struct{}) <-chan int32 {
	out := make(chan int32, 1)
	go func() {
		var most int32
		t := time.NewTicker(200 * time.Microsecond)
		defer t.Stop()
		for {
			most = max(most, pool.Stat().TotalConns())
			select {
			case <-stop:
				out <- most
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// TestBurst: 64 goroutines on one backend over a pool of two connections
// (and over a default pool) take distinct free names at once, with tries
// and with waits, and hold them all: none waits for a connection (issue
// 10, item 1). It logs the slowest acquisition and the connections used:
//
//	go test -run 'TestBurst' -v ./pg/
func TestBurst(t *testing.T) {
	url := testURL(t)
	for _, tc := range []struct {
		mode     string
		maxConns int32 // 0: pgxpool's default, max(4, GOMAXPROCS)
	}{{"TryLock", 2}, {"Lock", 2}, {"TryAcquire", 2}, {"Acquire", 2}, {"TryRLock", 2}, {"TryLock", 0}, {"Lock", 0}} {
		mode := tc.mode
		t.Run(fmt.Sprintf("%s/MaxConns%d", mode, tc.maxConns), func(t *testing.T) {
			pool := newPool(t, url, tc.maxConns)
			b := newOn(t, pool)
			ctx := ctxT(t, time.Minute)
			base := uniq(t)
			const n = 64
			stop := make(chan struct{})
			most := maxTotal(pool, stop)
			var (
				wg      sync.WaitGroup
				mu      sync.Mutex
				slowest time.Duration
				leases  []*pg.Lease
			)
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					name := fmt.Sprint(base, i)
					<-start
					t0 := time.Now()
					var l *pg.Lease
					var ok bool
					var err error
					switch mode {
					case "TryLock":
						l, ok, err = b.TryLock(ctx, name)
					case "Lock":
						l, err = b.Lock(ctx, name)
						ok = err == nil
					case "TryAcquire":
						l, ok, err = b.TryAcquire(ctx, name, 2)
					case "Acquire":
						l, err = b.Acquire(ctx, name, 2)
						ok = err == nil
					case "TryRLock":
						l, ok, err = b.TryRLock(ctx, name)
					}
					d := time.Since(t0)
					if err != nil || !ok {
						t.Errorf("%s %d: ok=%v err=%v after %v", mode, i, ok, err, d)
						return
					}
					mu.Lock()
					slowest = max(slowest, d)
					leases = append(leases, l)
					mu.Unlock()
				})
			}
			close(start)
			wg.Wait()
			close(stop)
			conns := <-most
			t.Logf("%d concurrent %s of free names, pool MaxConns %d: slowest %v, pool connections used %d, backend %+v",
				n, mode, pool.Config().MaxConns, slowest, conns, b.Stats())
			if slowest > 5*time.Second { // generous: not a timing test
				t.Errorf("slowest acquisition took %v", slowest)
			}
			for _, l := range leases {
				if err := l.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			assertPoolClean(t, pool)
		})
	}
}

// The application's own work holds every connection of the pool: a try
// fails at once with an error that says so, a wait keeps trying until its
// ctx ends (then it says why), and acquires once a connection is free.
func TestUserExhaustsPool(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 2)
	b := newOn(t, pool)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	c1, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var once1, once2 sync.Once
	t.Cleanup(func() { once1.Do(c1.Release); once2.Do(c2.Release) }) // before pool.Close
	start := time.Now()
	_, _, err = b.TryLock(ctx, name)
	if !errors.Is(err, pg.ErrNoConnection) || backend.IsPermanent(err) {
		t.Fatalf("try with the pool exhausted: %v, want ErrNoConnection (not permanent)", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the try took %v", d)
	}
	t.Logf("try: %v (after %v)", err, time.Since(start))
	_, _, err = b.TryAcquire(ctx, name, 2)
	if !errors.Is(err, pg.ErrNoConnection) {
		t.Fatalf("semaphore try with the pool exhausted: %v", err)
	}
	for _, sem := range []bool{false, true} {
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		if sem {
			_, err = b.Acquire(wctx, name, 2)
		} else {
			_, err = b.Lock(wctx, name)
		}
		cancel()
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, pg.ErrNoConnection) {
			t.Fatalf("wait with the pool exhausted: %v", err)
		}
	}
	t.Logf("wait: %v", err)
	// A wait acquires once the application gives a connection back.
	time.AfterFunc(200*time.Millisecond, func() { once1.Do(c1.Release) })
	l, err := b.Lock(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	once2.Do(c2.Release)
	assertPoolClean(t, pool)
}

// Waits of one backend for locks held elsewhere, more of them than the
// pool has connections, while the backend's own leases hold connections:
// every wait gets its lock when it is released (waits that find no
// connection for a server-side wait poll), none waits for a connection.
func TestWaitsNeverWaitForOwnConnections(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 2)
	b := newOn(t, pool)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	base := uniq(t)
	mine, ok, err := b.TryLock(ctx, base+"mine")
	mustTry(t, ok, err)
	const n = 6
	var held []*pg.Lease
	for i := range n {
		h, ok, err := other.TryLock(ctx, fmt.Sprint(base, i))
		mustTry(t, ok, err)
		held = append(held, h)
	}
	got := make(chan *pg.Lease, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var l *pg.Lease
			var err error
			if i%2 == 0 {
				l, err = b.Lock(ctx, fmt.Sprint(base, i))
			} else {
				l, err = b.WLock(ctx, fmt.Sprint(base, i)) // another key: RWKey
				if err == nil {
					_ = l.Release(ctx)
					l, err = b.Lock(ctx, fmt.Sprint(base, i))
				}
			}
			if err != nil {
				t.Error(err)
				return
			}
			got <- l
		})
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	for _, h := range held {
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(got)
	t.Logf("%d waits got their locks %v after the releases (pool MaxConns 2, one lease held)", n, time.Since(start))
	for l := range got {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := mine.Release(ctx); err != nil {
		t.Fatal(err)
	}
	assertPoolClean(t, pool)
}

// A try that lands on a pooled connection whose session the server ended
// while it sat idle in the pool retries on another connection: after
// pg_terminate_backend of every idle session of the pool, no try fails.
func TestTryAfterIdleSessionsTerminated(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 4)
	b := newOn(t, pool)
	ctx := ctxT(t, time.Minute)
	base := uniq(t)
	for round := range 5 {
		// Fill the pool with idle connections, then end their sessions.
		var cs []*pgxpool.Conn
		for range 4 {
			c, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		var pids []uint32
		for _, c := range cs {
			pids = append(pids, c.Conn().PgConn().PID())
			c.Release()
		}
		for _, pid := range pids {
			terminate(t, url, pid)
		}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				name := fmt.Sprint(base, round, i)
				var l *pg.Lease
				var ok bool
				var err error
				if i%2 == 0 {
					l, ok, err = b.TryLock(ctx, name)
				} else {
					l, ok, err = b.TryAcquire(ctx, name, 3)
				}
				if err != nil || !ok {
					t.Errorf("round %d try %d after the idle sessions were terminated: ok=%v err=%v", round, i, ok, err)
					return
				}
				if err := l.Release(ctx); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
}

// A server that accepts TCP connections and never answers: a try and a
// wait end with their ctx, and the error names the server's host:port.
func TestConnectHonoursContext(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) }) // after the pool closes
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.Map
	var accepts sync.WaitGroup
	accepts.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true) // never answered
		}
	})
	t.Cleanup(func() {
		ln.Close()
		accepts.Wait()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
	})
	addr := ln.Addr().String()
	url := "postgres://postgres@" + addr + "/postgres?sslmode=disable"
	pool := newPool(t, url, 2)
	b := newOn(t, pool)
	mu := dlock.NewMutex(b)
	for _, c := range []struct {
		name string
		do   func(ctx context.Context) error
	}{
		{"TryLock", func(ctx context.Context) error { _, _, err := b.TryLock(ctx, "x"); return err }},
		{"Lock", func(ctx context.Context) error { _, err := b.Lock(ctx, "x"); return err }},
		{"TryAcquire", func(ctx context.Context) error { _, _, err := b.TryAcquire(ctx, "x", 2); return err }},
		{"Acquire", func(ctx context.Context) error { _, err := b.Acquire(ctx, "x", 2); return err }},
		{"Mutex.TryAcquire", func(ctx context.Context) error { _, err := mu.TryAcquire(ctx, "x"); return err }},
		{"Mutex.Acquire", func(ctx context.Context) error { _, err := mu.Acquire(ctx, "x"); return err }},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		err := c.do(ctx)
		d := time.Since(start)
		cancel()
		t.Logf("%s: %v after %v", c.name, err, d)
		try := strings.Contains(c.name, "Try")
		switch {
		case err == nil:
			t.Fatalf("%s against a silent server: no error", c.name)
		case try && errors.Is(err, pg.ErrNoConnection):
			// The pool is full of connections still connecting to the
			// silent server (the pool's own, left by earlier calls): a
			// try says so at once.
		case !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded):
			t.Errorf("%s against a silent server: %v, want ErrNotAcquired and DeadlineExceeded", c.name, err)
		}
		// (The engine reports a call that its ctx ended with the last
		// error a wait rode out, not with the backend's final error, so
		// the Mutex's errors do not name the server: the backend's do.)
		if !strings.Contains(err.Error(), addr) && !strings.HasPrefix(c.name, "Mutex.") {
			t.Errorf("%s: the error does not name %s: %v", c.name, addr, err)
		}
		if d > 3*time.Second { // 300ms; generous
			t.Errorf("%s held for %v past a 300ms ctx", c.name, d)
		}
	}
}

// The revocation window of an idle lock connection: the time from the
// server freeing the lock of a terminated session (seen by a prober that
// tries the lock in a loop on a connection of its own: the start of its
// first successful try) to the lease reporting the loss; and, as an upper
// bound, from pg_terminate_backend being called. The lock connection's
// watcher watches the socket while it is idle, so this is about a
// millisecond, not a loss interval (which is set to an hour here so that
// pings cannot help). Issue 12 asks for p99 within 50ms:
//
//	go test -run 'TestRevocationWindow' -v ./pg/
func TestRevocationWindow(t *testing.T) {
	url := testURL(t)
	b, _ := newBackend(t, url, pg.WithLossInterval(time.Hour))
	ctx := ctxT(t, 2*time.Minute)
	adminPool := newPool(t, url, 1)
	probe, err := adminPool.Acquire(ctx) // stays the prober's
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Release()
	killer := newPool(t, url, 1)
	base := uniq(t)
	const rounds = 100
	var fromCall, fromFree []time.Duration
	told := 0 // losses reported before the prober had the lock
	for i := range rounds {
		name := fmt.Sprint(base, i)
		key, _ := pg.MutexKey(name).Int64()
		l, ok, err := b.TryLock(ctx, name)
		mustTry(t, ok, err)
		l2, ok, err := b.TryLock(ctx, name+"b")
		mustTry(t, ok, err)
		time.Sleep(2 * time.Millisecond) // idle
		freed := make(chan time.Time, 1)
		go func() {
			for {
				at := time.Now()
				var got bool
				if err := probe.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil {
					t.Error(err)
					freed <- time.Time{}
					return
				}
				if got {
					freed <- at
					return
				}
			}
		}()
		start := time.Now()
		var done bool
		if err := killer.QueryRow(ctx, "SELECT pg_terminate_backend($1)", int64(l.PID())).Scan(&done); err != nil || !done {
			t.Fatalf("terminate: %v %v", done, err)
		}
		var lostAt time.Time
		select {
		case <-l.Lost():
			lostAt = time.Now()
		case <-time.After(10 * time.Second):
			<-freed // the prober is done with its connection
			t.Fatalf("round %d: loss not reported 10s after the session was terminated", i)
		}
		freeAt := <-freed
		if freeAt.IsZero() {
			t.FailNow()
		}
		<-l2.Lost()
		fromCall = append(fromCall, lostAt.Sub(start))
		w := lostAt.Sub(freeAt)
		if w < 0 {
			told++
			w = 0
		}
		fromFree = append(fromFree, w)
		if _, err := probe.Exec(ctx, "SELECT pg_advisory_unlock($1)", key); err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("release after loss: %v", err)
		}
		_ = l2.Release(ctx)
	}
	pct := func(ds []time.Duration) string {
		slices.Sort(ds)
		p := func(q float64) time.Duration { return ds[int(q*float64(len(ds)-1))] }
		return fmt.Sprintf("p50 %v, p99 %v, max %v", p(0.5), p(0.99), ds[len(ds)-1])
	}
	t.Logf("revocation window over %d terminations of an idle lock connection: from the lock free to another client to Lost closed: %s (%d told before the other client had it); from pg_terminate_backend called: %s",
		rounds, pct(fromFree), told, pct(fromCall))
	if p99 := fromFree[len(fromFree)*99/100-1]; p99 > 2*time.Second { // generous: the figure is in the log
		t.Errorf("p99 %v", p99)
	}
}

// Release honours its ctx's deadline: against a server that stopped
// answering it returns when dlock's release timeout ends (here ±50%), says
// ErrLockLost, and the connection is destroyed, never pooled.
func TestReleaseTimeout(t *testing.T) {
	base := testURL(t)
	timeouts := []time.Duration{100 * time.Millisecond, 8 * time.Second}
	if testing.Short() {
		timeouts = timeouts[:1]
	}
	for _, d := range timeouts {
		t.Run(d.String(), func(t *testing.T) {
			px := newProxy(t, base)
			pool := newPool(t, px.url, 2)
			b := newOn(t, pool, pg.WithLossInterval(time.Hour), pg.WithOpTimeout(time.Minute))
			t.Cleanup(px.close) // first: nothing may wait on the black hole
			ctx := ctxT(t, time.Minute)
			mu := dlock.NewMutex(b, dlock.WithReleaseTimeout(d))
			name := uniq(t)
			lk, err := mu.Acquire(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			px.freeze()
			start := time.Now()
			err = lk.Release(ctx)
			took := time.Since(start)
			t.Logf("release timeout %v: Release returned after %v: %v", d, took, err)
			if !errors.Is(err, dlock.ErrLockLost) {
				t.Fatalf("Release against a silent server: %v, want ErrLockLost", err)
			}
			slack := 50 * time.Millisecond // scheduling, on a loaded machine
			if took < d/2 || took > d*3/2+slack {
				t.Fatalf("Release took %v with a release timeout of %v", took, d)
			}
			// The connection was closed, not pooled: its session ends on
			// the server (pgx's pool may count it for a while: its
			// destructor waits for a cancel request into the black hole).
			waitGone(t, base, lk.Lease().PID())
			if st := pool.Stat(); st.IdleConns() != 0 {
				t.Fatalf("%d idle connections: the connection of the unconfirmed unlock went back to the pool", st.IdleConns())
			}
		})
	}
}

// A Release whose connection is busy with another statement (a try into a
// server that stopped answering) past the release's deadline still
// returns by the deadline, with ErrLockLost: it closes the connection,
// which ends the statement in flight too.
func TestReleaseTimeoutBusyConnection(t *testing.T) {
	base := testURL(t)
	px := newProxy(t, base)
	pool := newPool(t, px.url, 2)
	b := newOn(t, pool, pg.WithLossInterval(time.Hour), pg.WithOpTimeout(time.Minute))
	t.Cleanup(px.close)
	ctx := ctxT(t, time.Minute)
	const d = 200 * time.Millisecond
	mu := dlock.NewMutex(b, dlock.WithReleaseTimeout(d))
	name := uniq(t)
	lk, err := mu.Acquire(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	px.freeze()
	tried := make(chan error, 1)
	go func() {
		// On the same connection; once that is closed, it tries again on
		// a new one (which the black hole holds until its ctx ends).
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, _, err := b.TryLock(tctx, name+"other")
		tried <- err
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	err = lk.Release(ctx)
	took := time.Since(start)
	t.Logf("Release behind a stuck statement: %v after %v", err, took)
	if !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release: %v, want ErrLockLost", err)
	}
	if took > d*3/2+100*time.Millisecond {
		t.Fatalf("Release took %v with a release timeout of %v", took, d)
	}
	select {
	case err := <-tried:
		if err == nil {
			t.Fatal("the stuck try succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the stuck try did not end with its ctx")
	}
	waitGone(t, base, lk.Lease().PID())
}

// A Release whose ctx is already cancelled still unlocks (bounded by the
// op timeout), and returns nil.
func TestReleaseAfterCancel(t *testing.T) {
	url := testURL(t)
	b, pool := newBackend(t, url)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	for _, viaGuard := range []bool{false, true} {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		var err error
		if viaGuard {
			lk, aerr := dlock.NewMutex(b).TryAcquire(ctx, name)
			if aerr != nil {
				t.Fatal(aerr)
			}
			err = lk.Release(cctx)
		} else {
			l, ok, terr := b.TryLock(ctx, name)
			mustTry(t, ok, terr)
			err = l.Release(cctx)
		}
		if err != nil {
			t.Fatalf("Release with a cancelled ctx: %v", err)
		}
		l, ok, err := other.TryLock(ctx, name)
		mustTry(t, ok, err)
		_ = l.Release(ctx)
	}
	assertPoolClean(t, pool)
}

// Errors that retrying cannot heal are marked permanent, so a wait ends
// at once: a closed backend, a nil pool, an invalid key, an unknown
// database, a failed authentication.
func TestPermanentErrors(t *testing.T) {
	url := testURL(t)
	ctx := ctxT(t, time.Minute)
	b, _ := newBackend(t, url)
	b.Close()
	_, _, err := b.TryLock(ctx, "x")
	if !backend.IsPermanent(err) {
		t.Errorf("closed backend: %v not permanent", err)
	}
	var zero pg.Backend // not made by New: no pool
	if _, _, err := zero.TryLock(ctx, "x"); !backend.IsPermanent(err) {
		t.Errorf("zero Backend: %v not permanent", err)
	}
	b2, _ := newBackend(t, url)
	if _, err := b2.Keys().Lock(ctx, "not a key"); !backend.IsPermanent(err) || !errors.Is(err, dlock.ErrInvalidName) {
		t.Errorf("invalid key: %v", err)
	}
	var missingDB atomic.Value
	u := strings.Replace(url, "/postgres?", "/dlock_no_such_db?", 1)
	if u == url {
		t.Skip("cannot derive a URL of a missing database from " + url)
	}
	bad := newOn(t, newPool(t, u, 2))
	start := time.Now()
	_, err = dlock.NewMutex(bad).Acquire(ctxT(t, 20*time.Second), "x")
	missingDB.Store(err)
	if !backend.IsPermanent(err) && !strings.Contains(fmt.Sprint(err), "3D000") {
		t.Errorf("unknown database: %v", err)
	}
	if _, _, err := bad.TryLock(ctx, "x"); !backend.IsPermanent(err) {
		t.Errorf("unknown database: %v not permanent", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a wait on an unknown database lasted %v", d)
	}
	t.Logf("unknown database: %v", missingDB.Load())
}

// The fencing table is created on a connection taken like any other: with
// the application holding the whole pool, a fenced try fails at once, and
// a burst of first fenced tries on a fresh table all succeed.
func TestFencingTableNeverWaits(t *testing.T) {
	url := testURL(t)
	table := fmt.Sprintf("dlock_test_fence_%d", time.Now().UnixNano())
	t.Cleanup(func() { admin(t, url, "DROP TABLE IF EXISTS "+table) })
	pool := newPool(t, url, 2)
	b := newOn(t, pool, pg.WithFencing(table))
	ctx := ctxT(t, time.Minute)
	base := uniq(t)
	c1, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := pool.Acquire(ctx)
	if err != nil {
		c1.Release()
		t.Fatal(err)
	}
	start := time.Now()
	_, _, err = b.TryLock(ctx, base)
	c1.Release()
	c2.Release()
	if !errors.Is(err, pg.ErrNoConnection) || time.Since(start) > 2*time.Second {
		t.Fatalf("fenced try with the pool exhausted: %v after %v, want ErrNoConnection at once", err, time.Since(start))
	}
	var wg sync.WaitGroup
	ls := make([]*pg.Lease, 64)
	for i := range ls {
		wg.Go(func() {
			l, ok, err := b.TryLock(ctx, fmt.Sprint(base, i))
			if err != nil || !ok || l.Token() == 0 {
				t.Errorf("fenced try %d: ok=%v err=%v", i, ok, err)
				return
			}
			ls[i] = l
		})
	}
	wg.Wait()
	t.Logf("64 first fenced tries on a fresh table, pool MaxConns 2: %v", time.Since(start))
	for _, l := range ls {
		if l != nil {
			_ = l.Release(ctx)
		}
	}
}

// silentServer is the set-up of a wait that a server answering nothing
// cuts off: a pool through a proxy that can freeze, and a name that
// another Backend, straight on the server, holds.
type silentServer struct {
	base  string
	px    *proxy
	pool  *pgxpool.Pool
	other *pg.Backend
	name  string
	held  *pg.Lease
}

func newSilentServer(t *testing.T, ctx context.Context) *silentServer {
	s := &silentServer{base: testURL(t), name: uniq(t)}
	s.px = newProxy(t, s.base)
	s.pool = newPool(t, s.px.url, 2)
	t.Cleanup(s.px.close) // first: nothing may wait on the black hole
	s.other, _ = newBackend(t, s.base)
	h, ok, err := s.other.TryLock(ctx, s.name)
	mustTry(t, ok, err)
	s.held = h
	return s
}

// queued waits until a session waits on the server for s.name, and
// returns its pid.
func (s *silentServer) queued(t *testing.T) uint32 {
	key, _ := pg.MutexKey(s.name).Int64()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if pid := scalar[int64](t, s.base, "SELECT coalesce(max(pid), 0) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1::bigint & 4294967295 AND classid = ($1::bigint >> 32) & 4294967295", key); pid != 0 {
			return uint32(pid)
		}
	}
	t.Fatal("the wait never queued on the server")
	return 0
}

// cut freezes the proxy, ends the wait's ctx with cancel, and returns the
// time the wait's error (from done) took to come, and that error.
func (s *silentServer) cut(t *testing.T, cancel context.CancelFunc, done <-chan error) (took time.Duration, err error) {
	s.px.freeze()
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(time.Minute):
		t.Fatal("the cancelled wait did not return")
		return 0, nil
	}
}

// freed lets go of s.name and checks that the cut session pid ends and the
// lock is free. The server never heard of the cancellation: the session
// waits on (PostgreSQL does not look at the socket of a waiting session)
// until it is granted the lock, finds its client gone and ends, which
// frees the lock.
func (s *silentServer) freed(t *testing.T, ctx context.Context, pid uint32) {
	if err := s.held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitGone(t, s.base, pid)
	h, ok, err := s.other.TryLock(ctx, s.name)
	mustTry(t, ok, err)
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// A wait whose ctx ends while the server answers nothing, not even the
// cancel request, returns within about twice WithOpTimeout (the cancel
// request's bound, then the statement's) with ErrNotAcquired, and its
// connection is closed, never pooled: the wait may still be queued on the
// server, and a pooled session would take the lock for nobody.
func TestCancelWaitSilentServer(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	s := newSilentServer(t, ctx)
	const grace = 300 * time.Millisecond
	b := newOn(t, s.pool, pg.WithLossInterval(time.Hour), pg.WithOpTimeout(grace))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		l, err := b.Lock(wctx, s.name)
		if err == nil {
			err = errors.Join(errors.New("the wait was granted"), l.Release(ctx))
		}
		done <- err
	}()
	pid := s.queued(t)
	took, err := s.cut(t, cancel, done)
	t.Logf("wait cancelled against a silent server: returned after %v: %v", took, err)
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		t.Fatalf("wait: %v, want ErrNotAcquired and context.Canceled", err)
	}
	if slack := time.Second; took > 2*grace+slack { // scheduling, on a loaded machine
		t.Fatalf("the wait returned %v after its ctx ended, with WithOpTimeout %v", took, grace)
	}
	if st := s.pool.Stat(); st.IdleConns() != 0 {
		t.Fatalf("%d idle connections: the connection of the cut wait went back to the pool", st.IdleConns())
	}
	s.freed(t, ctx, pid)
}

// LockTx whose ctx ends while the server answers nothing, not even the
// cancel request, returns ErrNotAcquired and ctx's error within about
// twice the default op timeout, and says that the transaction's
// connection was closed; the session ends once it would have been granted
// the lock, which is then free.
func TestLockTxCancelSilentServer(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	s := newSilentServer(t, ctx)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pg.LockTx(wctx, tx, pg.MutexKey(s.name)) }()
	pid := s.queued(t)
	if pid != tx.Conn().PgConn().PID() {
		t.Fatalf("session %d waits, not the transaction's %d", pid, tx.Conn().PgConn().PID())
	}
	took, err := s.cut(t, cancel, done)
	t.Logf("LockTx cancelled against a silent server: returned after %v: %v", took, err)
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "connection was closed") {
		t.Fatalf("LockTx: %v, want ErrNotAcquired, context.Canceled and the closed connection", err)
	}
	if bound := 2*5*time.Second + 5*time.Second; took > bound { // the default op timeout, twice, and slack
		t.Fatalf("LockTx returned %v after its ctx ended", took)
	}
	_ = tx.Rollback(context.Background())
	s.freed(t, ctx, pid)
}

// TestBurstOfWaitsTriesOnce: waits of one name that start together, while
// another backend holds it, send one try between them, not one each: the
// others see a try of the key in flight and queue at once. Each try of a
// key it tries already would need a lock connection of its own (a session
// must not try a key twice), so a burst of 32 waits took about 64 pool
// connections before (32 for the tries, then 32 for the waits), and takes
// about 32 now.
func TestBurstOfWaitsTriesOnce(t *testing.T) {
	url := testURL(t)
	const waits = 32
	pool := newPool(t, url, waits+8)
	b, err := pg.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	other, err := pg.New(newPool(t, url, 2))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := fmt.Sprintf("burst-%d", time.Now().UnixNano())
	holder, err := dlock.NewMutex(other).Acquire(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	warm(t, pool, waits+4) // the count below is of acquisitions, not of connections opened
	before := pool.Stat().AcquireCount()
	mu := dlock.NewMutex(b)
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, waits)
	for range waits {
		wg.Go(func() {
			<-start
			lk, err := mu.Acquire(ctx, name)
			if err == nil {
				err = lk.Release(ctx)
			}
			errs <- err
		})
	}
	close(start)
	key, _ := pg.MutexKey(name).Int64()
	for {
		n := scalar[int64](t, url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND NOT granted"+
			" AND ((classid::bigint << 32) | objid::bigint) = $1", key)
		if n >= waits {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("only %d waits queued", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	queued := pool.Stat().AcquireCount() - before
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d waits queued after %d pool acquisitions", waits, queued)
	if queued > waits+waits/4 {
		t.Fatalf("%d waits of one name took %d pool connections to queue: want about one each (one try for the burst)", waits, queued)
	}
}
