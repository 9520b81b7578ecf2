package pg_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/pg"
)

// Without a holder table, Holders lists the sessions that hold a lock,
// with the client's host and pid when the pool's application_name is
// pg.ApplicationName(); no owner text, no Since.
func TestHoldersWithoutTable(t *testing.T) {
	url := testURL(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = pg.ApplicationName()
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	b := newOn(t, pool)
	other, _ := newBackend(t, url) // its sessions do not say who they are
	ctx := ctxT(t, 20*time.Second)
	name := uniq(t)
	host, _ := os.Hostname()

	rw := dlock.NewRWMutex(b)
	r1, err := rw.Read().TryAcquire(dlock.ContextWithOwner(ctx, "not recorded"), name)
	if err != nil {
		t.Fatal(err)
	}
	r2, ok, err := other.TryRLock(ctx, name)
	mustTry(t, ok, err)
	hs, err := dlock.NewRWMutex(other).Write().Holders(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	var mine, anon int
	for _, h := range hs {
		switch {
		case !h.Shared || h.Owner != "" || !h.Since.IsZero():
			t.Errorf("holder %+v: want Shared, no owner, no Since", h)
		case h.PID == os.Getpid() && h.Host == host && !h.ProcessStart.IsZero():
			mine++
		case h.PID == 0 && h.Host == "":
			anon++
		default:
			t.Errorf("holder %+v: want this process or an anonymous one", h)
		}
	}
	if mine != 1 || anon != 1 {
		t.Fatalf("Holders = %+v: want one reader of this process and one anonymous", hs)
	}
	_ = r2.Release(ctx)
	if err := r1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if hs, err := rw.Read().Holders(ctx, name); err != nil || len(hs) != 0 {
		t.Fatalf("Holders of a free name: %+v, %v", hs, err)
	}
}

// A holder whose session ended (terminated by an administrator, or its
// process killed: the server frees its locks the same way) is never
// listed, though its record is still in the table.
func TestHoldersDeadHolder(t *testing.T) {
	url := testURL(t)
	const table = "dlock_test_holders_dead"
	a, _ := newBackend(t, url, pg.WithHolderTable(table))
	b, _ := newBackend(t, url, pg.WithHolderTable(table))
	ctx := ctxT(t, 20*time.Second)
	name := uniq(t)
	mu := dlock.NewMutex(a)
	lk, err := mu.TryAcquire(dlock.ContextWithOwner(ctx, "doomed"), name)
	if err != nil {
		t.Fatal(err)
	}
	describe := func() []backend.Holder {
		t.Helper()
		hs, err := b.DescribeLock(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return hs
	}
	if hs := describe(); len(hs) != 1 || hs[0].Owner != "doomed" || hs[0].PID != os.Getpid() {
		t.Fatalf("Holders = %+v, want the owner doomed", hs)
	}
	terminate(t, url, lk.Lease().PID())
	if n := scalar[int64](t, url, "SELECT count(*) FROM "+table+" WHERE pid = $1", int64(lk.Lease().PID())); n != 1 {
		t.Fatalf("%d records of the dead session, want its stale one", n)
	}
	if hs := describe(); len(hs) != 0 {
		t.Fatalf("Holders after the holder's session ended = %+v, want none", hs)
	}
	select {
	case <-lk.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("no loss reported")
	}
	_ = lk.Release(ctx)
}

// An upgrade keeps the lease's record, now a writer's, whether it is
// granted on the lease's session or on a connection of its own.
func TestHoldersUpgrade(t *testing.T) {
	url := testURL(t)
	a, _ := newBackend(t, url, pg.WithHolderTable(testHolders))
	b, _ := newBackend(t, url, pg.WithHolderTable(testHolders))
	ctx := ctxT(t, 20*time.Second)
	for _, readerIn := range []bool{false, true} {
		name := uniq(t)
		u, ok, err := a.TryULock(backend.ContextWithOwner(ctx, "upgrader"), name)
		mustTry(t, ok, err)
		if readerIn {
			r, ok, err := b.TryRLock(ctx, name)
			mustTry(t, ok, err)
			time.AfterFunc(100*time.Millisecond, func() { _ = r.Release(ctx) })
		}
		if err := u.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
		hs, err := b.DescribeRW(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 1 || hs[0].Owner != "upgrader" || hs[0].Shared || hs[0].PID != os.Getpid() {
			t.Fatalf("reader in: %v: Holders after the upgrade = %+v, want the writer upgrader", readerIn, hs)
		}
		if err := u.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if hs, err := b.DescribeRW(ctx, name); err != nil || len(hs) != 0 {
			t.Fatalf("Holders after the release: %+v, %v", hs, err)
		}
	}
}

// Backends with different holder tables may share a pool (and so a
// pooled connection, with its prepared statements).
func TestHoldersTablesShareAPool(t *testing.T) {
	url := testURL(t)
	pool := newPool(t, url, 1)
	ctx := ctxT(t, 20*time.Second)
	for round := range 2 {
		for _, table := range []string{testHolders, "dlock_test_holders_other"} {
			b := newOn(t, pool, pg.WithHolderTable(table))
			name := uniq(t)
			l, ok, err := b.TryLock(backend.ContextWithOwner(ctx, table), name)
			mustTry(t, ok, err)
			hs, err := b.DescribeLock(ctx, name)
			if err != nil || len(hs) != 1 || hs[0].Owner != table {
				t.Fatalf("round %d, table %s: Holders = %+v, %v", round, table, hs, err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			_ = b.Close()
		}
	}
}
