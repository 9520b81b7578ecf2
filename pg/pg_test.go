package pg_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/pg"
)

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func uniq(t testing.TB) string { return fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano()) }

// sessionLocks counts the advisory locks held or awaited by every idle
// connection of pool, taking them all: a pooled connection must never
// carry a session lock.
func assertPoolClean(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	conns := pool.AcquireAllIdle(ctx)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for _, c := range conns {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").Scan(&n); err != nil {
			t.Fatalf("pooled connection unusable: %v", err)
		}
		if n != 0 {
			t.Fatalf("a pooled connection (pid %d) holds %d advisory locks", c.Conn().PgConn().PID(), n)
		}
		if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_listening_channels()").Scan(&n); err != nil {
			t.Fatalf("pooled connection unusable: %v", err)
		}
		if n != 0 {
			t.Fatalf("a pooled connection (pid %d) listens on %d channels", c.Conn().PgConn().PID(), n)
		}
	}
}

func mustTry(t *testing.T, ok bool, err error) {
	t.Helper()
	if err != nil || !ok {
		t.Fatalf("try: ok=%v err=%v", ok, err)
	}
}

func mustFail(t *testing.T, l *pg.Lease, ok bool, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		_ = l.Release(context.Background())
		t.Fatal("acquired a lock that is held elsewhere")
	}
}

func waitLost(t *testing.T, l *pg.Lease, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-l.Lost():
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("Lost() not closed within %v", within)
		return 0
	}
}

func TestLossAfterTerminate(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) }) // after the pools close
	url := testURL(t)
	b, _ := newBackend(t, url, pg.WithLossInterval(300*time.Millisecond))
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	base := uniq(t)
	// Three leases on one idle lock connection, all lost at once.
	var ls []*pg.Lease
	for i := range 3 {
		l, ok, err := b.TryLock(ctx, fmt.Sprint(base, i))
		mustTry(t, ok, err)
		ls = append(ls, l)
	}
	if ls[0].PID() != ls[2].PID() {
		t.Fatalf("uncontended leases are spread over connections %d and %d", ls[0].PID(), ls[2].PID())
	}
	time.Sleep(100 * time.Millisecond) // the connection is idle
	terminate(t, url, ls[0].PID())
	for _, l := range ls {
		d := waitLost(t, l, 2*time.Second)
		t.Logf("loss reported after %v", d)
	}
	for i, l := range ls {
		if err := l.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Release of a lost lease: %v", err)
		}
		l2, ok, err := other.TryLock(ctx, fmt.Sprint(base, i))
		mustTry(t, ok, err)
		if err := l2.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s := b.Stats(); s.LockConns != 0 || s.Leases != 0 {
		t.Fatalf("stats after loss: %+v", s)
	}
}

func TestManyLocksFewConnections(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 10)
	b := newOn(t, pool)
	ctx := ctxT(t, 2*time.Minute)
	const n = 5000
	base := uniq(t)
	ls := make([]*pg.Lease, 0, n)
	for i := range n {
		l, ok, err := b.TryLock(ctx, fmt.Sprint(base, i))
		mustTry(t, ok, err)
		ls = append(ls, l)
	}
	s := b.Stats()
	ps := pool.Stat()
	t.Logf("%d leases: backend %+v, pool total %d acquired %d", n, s, ps.TotalConns(), ps.AcquiredConns())
	most := n/pg.DefaultMaxLeasesPerConn + 1
	if s.Leases != n || s.LockConns > most || ps.TotalConns() > int32(most) {
		t.Fatalf("%d leases use %d lock connections, pool has %d connections", s.Leases, s.LockConns, ps.TotalConns())
	}
	got := scalar[int64](t, url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1", int64(ls[0].PID()))
	if got == 0 {
		t.Fatal("the server shows no advisory locks for the lock connection")
	}
	// A waiter sharing nothing blocks; releases on the shared connection go on.
	other, _ := newBackend(t, url)
	done := make(chan error, 1)
	go func() {
		l, err := other.Lock(ctx, fmt.Sprint(base, 0))
		if err == nil {
			err = l.Release(ctx)
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	for _, l := range ls {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.LockConns != 0 || s.Leases != 0 {
		t.Fatalf("stats after release: %+v", s)
	}
	assertPoolClean(t, pool)
}

// A blocking wait of a backend never stalls releases of its other leases.
func TestWaitDoesNotStallRelease(t *testing.T) {
	url := testURL(t)
	a, _ := newBackend(t, url)
	b, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	held, ok, err := a.TryLock(ctx, name+"held")
	mustTry(t, ok, err)
	mine, ok, err := b.TryLock(ctx, name+"mine")
	mustTry(t, ok, err)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := b.Lock(wctx, name+"held"); done <- err }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := mine.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("release took %v while a wait was in progress", d)
	}
	cancel()
	if err := <-done; !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	_ = held.Release(ctx)
}

func TestCancelMidWait(t *testing.T) {
	url := testURL(t)
	a, _ := newBackend(t, url)
	pool := newPool(t, url, 2)
	b := newOn(t, pool)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	key, _ := pg.MutexKey(name).Int64()
	h, ok, err := a.TryLock(ctx, name)
	mustTry(t, ok, err)
	for _, deadline := range []bool{false, true} {
		var wctx context.Context
		var cancel context.CancelFunc
		if deadline {
			wctx, cancel = context.WithTimeout(ctx, 150*time.Millisecond)
		} else {
			wctx, cancel = context.WithCancel(ctx)
			time.AfterFunc(150*time.Millisecond, cancel)
		}
		_, err := b.Lock(wctx, name)
		cancel()
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, wctx.Err()) {
			t.Fatalf("wait ended by ctx: %v", err)
		}
		// The server-side wait is gone at once.
		waiting := scalar[int64](t, url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1::bigint & 4294967295 AND classid = ($1::bigint >> 32) & 4294967295", key)
		if waiting != 0 {
			t.Fatalf("%d server-side waits remain after the cancellation", waiting)
		}
		assertPoolClean(t, pool)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := b.Lock(ctx, name) // the connections are still good
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if st := pool.Stat(); st.TotalConns() == 0 {
		t.Fatal("no connections left: the cancellations destroyed them")
	}
	assertPoolClean(t, pool)
}

func TestNoLockReturnsToPool(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 3)
	b := newOn(t, pool)
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	rw := dlock.NewRWMutex(b)
	sem := dlock.NewSemaphore(b, 2)
	mu := dlock.NewMutex(b)
	for i := range 20 {
		n := fmt.Sprint(name, i%3)
		var hold *pg.Lease
		if i%2 == 0 { // contended: waits, cancels and races
			var ok bool
			var err error
			hold, ok, err = other.TryLock(ctx, n)
			mustTry(t, ok, err)
			time.AfterFunc(time.Duration(i)*3*time.Millisecond, func() { _ = hold.Release(ctx) })
		}
		wctx, cancel := context.WithTimeout(ctx, time.Duration(20-i)*3*time.Millisecond)
		_ = mu.Do(wctx, n, func(context.Context) error { return nil })
		_ = rw.Read().Do(wctx, n, func(context.Context) error { return nil })
		_ = rw.Write().Do(wctx, n, func(context.Context) error { return nil })
		_ = sem.Do(wctx, n, func(context.Context) error { return nil })
		cancel()
		if hold != nil {
			_ = hold.Release(ctx)
		}
	}
	if s := b.Stats(); s.LockConns != 0 {
		t.Fatalf("lock connections kept after every lease was released: %+v", s)
	}
	assertPoolClean(t, pool)
}

func TestNotReentrantOnSharedConnection(t *testing.T) {
	url := testURL(t)
	b, _ := newBackend(t, url, pg.WithMaxLockConns(1))
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	l1, ok, err := b.TryLock(ctx, name)
	mustTry(t, ok, err)
	l2, ok, err := b.TryLock(ctx, name)
	mustFail(t, l2, ok, err)
	// Two readers of one backend take separate sessions, never stacking.
	r1, ok, err := b.TryRLock(ctx, name)
	mustTry(t, ok, err)
	r2, ok, err := b.TryRLock(ctx, name)
	mustTry(t, ok, err)
	if r1.PID() == r2.PID() {
		t.Fatal("two read leases of one name share a session")
	}
	// A semaphore never stacks a slot.
	s1, ok, err := b.TryAcquire(ctx, name, 1)
	mustTry(t, ok, err)
	s2, ok, err := b.TryAcquire(ctx, name, 1)
	mustFail(t, s2, ok, err)
	for _, l := range []*pg.Lease{l1, r1, r2, s1} {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestKeys(t *testing.T) {
	url := testURL(t)
	b, pool := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	kv := time.Now().UnixNano()
	k := pg.Int64Key(kv)
	mu := dlock.NewMutex(b.Keys())
	lk, err := mu.TryAcquire(ctx, k.String())
	if err != nil {
		t.Fatal(err)
	}
	// Plain SQL on the same key is excluded, and the pair space is separate.
	a, c := int32(uint64(kv)>>32), int32(uint32(uint64(kv)))
	var got, pair bool
	if err := pool.QueryRow(ctx, "SELECT pg_try_advisory_lock($1::bigint), pg_try_advisory_lock($2::int, $3::int)", kv, a, c).Scan(&got, &pair); err != nil {
		t.Fatal(err)
	}
	if got || !pair {
		t.Fatalf("SQL try of the held key: %v, of the pair: %v", got, pair)
	}
	if _, err := pool.Exec(ctx, "SELECT pg_advisory_unlock($1::int, $2::int)", a, c); err != nil {
		t.Fatal(err)
	}
	if err := lk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "01", "+1", " 1", "1, 2", "x", "99999999999999999999", "1,2,3", "3000000000,1"} {
		if _, err := mu.TryAcquire(ctx, bad); !errors.Is(err, dlock.ErrInvalidName) {
			t.Errorf("name %q: %v, want ErrInvalidName", bad, err)
		}
	}
	for _, key := range []pg.Key{pg.Int64Key(-5), pg.PairKey(-1, 7), pg.MutexKey("x")} {
		if back, err := pg.ParseKey(key.String()); err != nil || back != key {
			t.Errorf("ParseKey(%q) = %v, %v", key.String(), back, err)
		}
	}
	assertPoolClean(t, pool)
}

func TestTransactionLocks(t *testing.T) {
	url := testURL(t)
	b, pool := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	for _, end := range []string{"commit", "rollback"} {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := pg.LockTx(ctx, tx, pg.MutexKey(name)); err != nil {
			t.Fatal(err)
		}
		l, ok, err := b.TryLock(ctx, name)
		mustFail(t, l, ok, err)
		if end == "commit" {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		l, ok, err = b.TryLock(ctx, name)
		mustTry(t, ok, err)
		// Now the backend holds it: a transaction waits, and its wait ends
		// with ctx while the transaction stays usable.
		tx, err = pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := pg.TryLockTx(ctx, tx, pg.MutexKey(name)); err != nil || ok {
			t.Fatalf("TryLockTx of a held lock: %v %v", ok, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err = pg.LockTx(wctx, tx, pg.MutexKey(name))
		cancel()
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("LockTx ended by ctx: %v", err)
		}
		var one int
		if err := tx.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("transaction unusable after a cancelled LockTx: %v", err)
		}
		done := make(chan error, 1)
		go func() { done <- pg.LockTx(ctx, tx, pg.MutexKey(name)) }()
		time.Sleep(50 * time.Millisecond)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("LockTx after the release: %v", err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Shared transaction locks admit the backend's readers.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := pg.RLockTx(ctx, tx, pg.RWKey(name)); err != nil {
		t.Fatal(err)
	}
	r, ok, err := b.TryRLock(ctx, name)
	mustTry(t, ok, err)
	w, ok, err := b.TryWLock(ctx, name)
	mustFail(t, w, ok, err)
	// A second transaction's shared try succeeds beside them; a shared try
	// against a writer's lease fails.
	tx2, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(ctx)
	if ok, err := pg.TryRLockTx(ctx, tx2, pg.RWKey(name)); err != nil || !ok {
		t.Fatalf("TryRLockTx beside readers: %v %v", ok, err)
	}
	_ = r.Release(ctx)
	_ = tx.Rollback(ctx)
	_ = tx2.Rollback(ctx)
	w, ok, err = b.TryWLock(ctx, name)
	mustTry(t, ok, err)
	defer w.Release(ctx)
	tx3, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx3.Rollback(ctx)
	if ok, err := pg.TryRLockTx(ctx, tx3, pg.RWKey(name)); err != nil || ok {
		t.Fatalf("TryRLockTx against a writer: %v %v", ok, err)
	}
}

func TestFencingTokens(t *testing.T) {
	url := testURL(t)
	table := "dlock_test_tokens"
	a, _ := newBackend(t, url, pg.WithFencing(table))
	b, _ := newBackend(t, url, pg.WithFencing(table))
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	var last uint64
	for i := range 10 {
		be := a
		if i%2 == 1 {
			be = b
		}
		var l *pg.Lease
		var err error
		switch i % 3 {
		case 0:
			l, err = be.Lock(ctx, name)
		case 1:
			var ok bool
			l, ok, err = be.TryLock(ctx, name)
			if err == nil && !ok {
				err = errors.New("not acquired")
			}
		case 2:
			l, err = be.Lock(ctx, name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if l.Token() <= last {
			t.Fatalf("token %d after %d", l.Token(), last)
		}
		last = l.Token()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	nf, _ := newBackend(t, url)
	l, ok, err := nf.TryLock(ctx, name)
	mustTry(t, ok, err)
	if l.Token() != 0 {
		t.Fatalf("token %d with fencing off", l.Token())
	}
	_ = l.Release(ctx)
}

// Every invalid argument of New is an error wrapping ErrInvalidOption,
// never a value clamped or ignored; the limits themselves are accepted.
func TestNewInvalid(t *testing.T) {
	pool := newPool(t, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable", 2) // never dialled
	long := strings.Repeat("t", 64)
	for _, c := range []struct {
		name string
		pool *pgxpool.Pool
		opts []pg.Option
	}{
		{"nil pool", nil, nil},
		{"loss interval below 20ms", pool, []pg.Option{pg.WithLossInterval(19 * time.Millisecond)}},
		{"loss interval 0", pool, []pg.Option{pg.WithLossInterval(0)}},
		{"loss interval negative", pool, []pg.Option{pg.WithLossInterval(-time.Second)}},
		{"op timeout below 100ms", pool, []pg.Option{pg.WithOpTimeout(99 * time.Millisecond)}},
		{"op timeout 0", pool, []pg.Option{pg.WithOpTimeout(0)}},
		{"max lock conns 0", pool, []pg.Option{pg.WithMaxLockConns(0)}},
		{"max lock conns negative", pool, []pg.Option{pg.WithMaxLockConns(-1)}},
		{"max leases per conn 0", pool, []pg.Option{pg.WithMaxLeasesPerConn(0)}},
		{"max leases per conn negative", pool, []pg.Option{pg.WithMaxLeasesPerConn(-5)}},
		{"fencing table with three parts", pool, []pg.Option{pg.WithFencing("a.b.c")}},
		{"fencing table with an empty part", pool, []pg.Option{pg.WithFencing("locks.")}},
		{"fencing table with a leading dot", pool, []pg.Option{pg.WithFencing(".fencing")}},
		{"fencing table with a NUL byte", pool, []pg.Option{pg.WithFencing("fen\x00cing")}},
		{"fencing table name too long", pool, []pg.Option{pg.WithFencing(long)}},
		{"fencing schema name too long", pool, []pg.Option{pg.WithFencing(long + ".t")}},
		{"a bad option after a good one", pool, []pg.Option{pg.WithOpTimeout(time.Second), pg.WithMaxLockConns(0)}},
	} {
		b, err := pg.New(c.pool, c.opts...)
		if !errors.Is(err, dlock.ErrInvalidOption) || !errors.Is(err, backend.ErrInvalidOption) || b != nil {
			t.Errorf("%s: New = %v, %v; want nil, an error matching ErrInvalidOption", c.name, b, err)
		}
	}
	for _, o := range []pg.Option{
		pg.WithLossInterval(20 * time.Millisecond), pg.WithOpTimeout(100 * time.Millisecond),
		pg.WithMaxLockConns(1), pg.WithMaxLeasesPerConn(1), pg.WithFencing(""),
		pg.WithFencing("s.t"), pg.WithFencing(long[:63]), pg.WithLogger(nil), nil,
	} {
		b, err := pg.New(pool, o)
		if err != nil {
			t.Errorf("a valid option: %v", err)
			continue
		}
		_ = b.Close()
	}
}

func TestBadInput(t *testing.T) {
	url := testURL(t)
	b, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	for _, limit := range []int{0, -1, pg.MaxSemaphoreLimit + 1} {
		if _, _, err := b.TryAcquire(ctx, "x", limit); !errors.Is(err, dlock.ErrInvalidLimit) {
			t.Errorf("limit %d: %v", limit, err)
		}
	}
	var zero pg.Backend // not made by New
	if _, _, err := zero.TryLock(ctx, "x"); err == nil {
		t.Error("zero Backend: no error")
	}
	b.Close()
	if _, _, err := b.TryLock(ctx, "x"); err == nil {
		t.Error("closed backend: no error")
	}
}
