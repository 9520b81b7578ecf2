package pg_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/pg"
)

// setNames returns n distinct names for the test.
func setNames(t *testing.T, n int) []string {
	base := uniq(t)
	ns := make([]string, n)
	for i := range ns {
		ns[i] = fmt.Sprintf("%s/%02d", base, i)
	}
	return ns
}

// mustAllNil fails unless every error of errs is nil and there is one per
// lease.
func mustAllNil(t *testing.T, errs []error, n int) {
	t.Helper()
	if len(errs) != n {
		t.Fatalf("ReleaseAll returned %d errors for %d leases", len(errs), n)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
}

// freeFrom checks that every name is free for another backend (another
// pool, hence other sessions), as a mutex.
func freeFrom(t *testing.T, o *pg.Backend, names []string) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	for _, n := range names {
		l, ok, err := o.TryLock(ctx, n)
		mustTry(t, ok, err)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// ReleaseAll of a set taken by TryLockAll (one connection) releases every
// lease, with and without the fencing and holder tables; the names are
// free for another pool afterwards, no holder record is left, and a second
// ReleaseAll finds every lease released already.
func TestReleaseAll(t *testing.T) {
	url := testURL(t)
	for _, tc := range []struct {
		name string
		opts []pg.Option
	}{
		{"plain", nil},
		{"fencing", []pg.Option{pg.WithFencing("dlock_test_fencing")}},
		{"holders", []pg.Option{pg.WithHolderTable("dlock_test_holders_ra")}},
		{"both", []pg.Option{pg.WithFencing("dlock_test_fencing"), pg.WithHolderTable("dlock_test_holders_ra")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, poolA := newBackend(t, url, tc.opts...)
			o, _ := newBackend(t, url)
			ctx := ctxT(t, 20*time.Second)
			names := setNames(t, 6)
			ls, busy, err := a.TryLockAll(ctx, names)
			if err != nil || busy != -1 {
				t.Fatalf("TryLockAll: busy %d, %v", busy, err)
			}
			pid := ls[0].PID()
			for _, l := range ls {
				if l.PID() != pid {
					t.Fatal("a set's leases on several sessions")
				}
			}
			mustAllNil(t, a.ReleaseAll(ctx, ls), len(ls))
			for _, l := range ls {
				if !isClosed(l.Lost()) {
					t.Fatal("a released lease's Lost channel is open")
				}
			}
			freeFrom(t, o, names)
			if s := a.Stats(); s.Leases != 0 || s.LockConns != 0 {
				t.Fatalf("after ReleaseAll: %+v", s)
			}
			if len(tc.opts) > 0 && tc.name != "fencing" {
				if n := scalar[int64](t, url, "SELECT count(*) FROM dlock_test_holders_ra WHERE pid = $1", int64(pid)); n != 0 {
					t.Fatalf("%d holder records left", n)
				}
			}
			for i, err := range a.ReleaseAll(ctx, ls) {
				if !errors.Is(err, backend.ErrNotHeld) {
					t.Fatalf("lease %d released twice: %v, want ErrNotHeld", i, err)
				}
			}
			assertPoolClean(t, poolA)
		})
	}
}

// ReleaseAll of leases of every kind on one connection (mutexes, readers,
// writers, an upgradeable reader, semaphore tickets) releases them all in
// one statement: every name is free afterwards for another pool's writer,
// and the semaphores give all their tickets.
func TestReleaseAllMixed(t *testing.T) {
	url := testURL(t)
	a, poolA := newBackend(t, url, pg.WithMaxLockConns(1), pg.WithHolderTable("dlock_test_holders_ra"))
	o, _ := newBackend(t, url)
	ctx := ctxT(t, 20*time.Second)
	mus, rs, ws, sems := setNames(t, 3), setNames(t, 3), setNames(t, 2), setNames(t, 3)
	for i := range rs {
		rs[i] += "/r"
	}
	for i := range ws {
		ws[i] += "/w"
	}
	for i := range sems {
		sems[i] += "/s"
	}
	uname := uniq(t) + "/u"
	var all []*pg.Lease
	add := func(ls []*pg.Lease, busy int, err error) {
		t.Helper()
		if err != nil || busy != -1 {
			t.Fatalf("busy %d, %v", busy, err)
		}
		all = append(all, ls...)
	}
	add(a.TryLockAll(ctx, mus))
	add(a.TryRLockAll(ctx, rs))
	add(a.TryWLockAll(ctx, ws))
	add(a.TryAcquireAll(ctx, sems, 2))
	u, ok, err := a.TryULock(ctx, uname)
	mustTry(t, ok, err)
	all = append(all, u)
	pid := all[0].PID()
	for _, l := range all {
		if l.PID() != pid {
			t.Fatal("leases on several sessions despite WithMaxLockConns(1)")
		}
	}
	if n := scalar[int64](t, url, "SELECT count(*) FROM dlock_test_holders_ra WHERE pid = $1", int64(pid)); n == 0 {
		t.Fatal("no holder records while held")
	}
	mustAllNil(t, a.ReleaseAll(ctx, all), len(all))
	freeFrom(t, o, mus)
	for _, n := range append(append(rs, ws...), uname) {
		l, ok, err := o.TryWLock(ctx, n)
		mustTry(t, ok, err)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range sems {
		l1, ok, err := o.TryAcquire(ctx, n, 2)
		mustTry(t, ok, err)
		l2, ok, err := o.TryAcquire(ctx, n, 2)
		mustTry(t, ok, err)
		if errs := o.ReleaseAll(ctx, []*pg.Lease{l1, l2}); errs[0] != nil || errs[1] != nil {
			t.Fatal(errs)
		}
	}
	if n := scalar[int64](t, url, "SELECT count(*) FROM dlock_test_holders_ra WHERE pid = $1", int64(pid)); n != 0 {
		t.Fatalf("%d holder records left", n)
	}
	if s := a.Stats(); s.Leases != 0 {
		t.Fatalf("after ReleaseAll: %+v", s)
	}
	assertPoolClean(t, poolA)
}

// ReleaseAll of leases on several connections, one of whose sessions was
// terminated: that lease's error matches dlock.ErrLockLost, the others are
// released (nil) and their names free; a set on one terminated session
// reports every lease lost.
func TestReleaseAllLost(t *testing.T) {
	url := testURL(t)
	a, poolA := newBackend(t, url, pg.WithMaxLeasesPerConn(1))
	o, _ := newBackend(t, url)
	ctx := ctxT(t, 20*time.Second)
	names := setNames(t, 3)
	ls := make([]*pg.Lease, len(names))
	pids := map[uint32]bool{}
	for i, n := range names {
		l, ok, err := a.TryLock(ctx, n)
		mustTry(t, ok, err)
		ls[i] = l
		pids[l.PID()] = true
	}
	if len(pids) != len(ls) {
		t.Fatalf("%d sessions for %d leases despite WithMaxLeasesPerConn(1)", len(pids), len(ls))
	}
	terminate(t, url, ls[1].PID())
	select {
	case <-ls[1].Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("loss not noticed in 10s")
	}
	errs := a.ReleaseAll(ctx, ls)
	if errs[0] != nil || errs[2] != nil {
		t.Fatalf("live leases: %v, %v", errs[0], errs[2])
	}
	if !errors.Is(errs[1], dlock.ErrLockLost) {
		t.Fatalf("lost lease: %v, want ErrLockLost", errs[1])
	}
	freeFrom(t, o, names)

	// A lease of another Backend in the list is released by its own.
	ol, ok, err := o.TryLock(ctx, names[0])
	mustTry(t, ok, err)
	al, ok, err := a.TryLock(ctx, names[1])
	mustTry(t, ok, err)
	mustAllNil(t, a.ReleaseAll(ctx, []*pg.Lease{ol, al}), 2)
	if s := o.Stats(); s.Leases != 0 {
		t.Fatalf("the other Backend after ReleaseAll: %+v", s)
	}
	freeFrom(t, a, names[:1])
	freeFrom(t, o, names[1:2])

	set, busy, err := a.TryLockAll(ctx, names)
	if err != nil || busy != -1 {
		t.Fatalf("TryLockAll: busy %d, %v", busy, err)
	}
	terminate(t, url, set[0].PID())
	for i, err := range a.ReleaseAll(ctx, set) { // the loss may not be noticed yet: the unlock finds it
		if !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("lease %d of a terminated set: %v, want ErrLockLost", i, err)
		}
	}
	freeFrom(t, o, names)
	if s := a.Stats(); s.Leases != 0 || s.LockConns != 0 {
		t.Fatalf("after ReleaseAll: %+v", s)
	}
	assertPoolClean(t, poolA)
}
