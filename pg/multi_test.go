package pg_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/dlock-go/dlock/pg"
)

// TryLockAll takes a free set in one statement, one lease per name, each
// released on its own; a set with a busy name takes none and says which;
// with fencing each name gets its own increasing token.
func TestTryLockAll(t *testing.T) {
	url := testURL(t)
	a, poolA := newBackend(t, url, pg.WithFencing("dlock_test_fencing"))
	b, _ := newBackend(t, url)
	ctx := ctxT(t, 20*time.Second)
	base := uniq(t)
	names := make([]string, 5)
	for i := range names {
		names[i] = fmt.Sprintf("%s/%d", base, i)
	}
	ls, busy, err := a.TryLockAll(ctx, names)
	if err != nil || busy != -1 || len(ls) != len(names) {
		t.Fatalf("TryLockAll of free names: %d leases, busy %d, %v", len(ls), busy, err)
	}
	first := make([]uint64, len(ls))
	for i, l := range ls {
		if l.Token() == 0 {
			t.Fatalf("lease %d has no fencing token", i)
		}
		first[i] = l.Token()
		o, ok, err := b.TryLock(ctx, names[i])
		mustFail(t, o, ok, err)
	}
	for i := len(ls) - 1; i >= 0; i-- { // each released on its own
		if err := ls[i].Release(ctx); err != nil {
			t.Fatal(err)
		}
		o, ok, err := b.TryLock(ctx, names[i])
		mustTry(t, ok, err)
		if i != 2 {
			if err := o.Release(ctx); err != nil {
				t.Fatal(err)
			}
			continue
		}
		// names[2] stays held elsewhere: the set is busy there.
		defer o.Release(ctx)
	}
	got, busy, err := a.TryLockAll(ctx, names)
	if err != nil || busy != 2 || got != nil {
		t.Fatalf("TryLockAll with names[2] held elsewhere: %v, busy %d, %v", got, busy, err)
	}
	for _, i := range []int{0, 1, 3, 4} {
		o, ok, err := b.TryLock(ctx, names[i])
		mustTry(t, ok, err)
		_ = o.Release(ctx)
	}
	rest := []string{names[0], names[1], names[3]}
	ls, busy, err = a.TryLockAll(ctx, rest)
	if err != nil || busy != -1 {
		t.Fatalf("TryLockAll of free names again: busy %d, %v", busy, err)
	}
	for j, l := range ls {
		i := []int{0, 1, 3}[j]
		if l.Token() <= first[i] {
			t.Fatalf("%s: token %d after %d", names[i], l.Token(), first[i])
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s := a.Stats(); s.Leases != 0 {
		t.Fatalf("leases left: %+v", s)
	}
	assertPoolClean(t, poolA)
}

// TryRLockAll shares with readers and fails on a name a writer holds;
// TryWLockAll fails while an upgradeable reader holds a name.
func TestTryRWLockAll(t *testing.T) {
	url := testURL(t)
	a, _ := newBackend(t, url)
	b, _ := newBackend(t, url)
	ctx := ctxT(t, 20*time.Second)
	base := uniq(t)
	names := []string{base + "/a", base + "/b", base + "/c"}
	r, ok, err := b.TryRLock(ctx, names[0])
	mustTry(t, ok, err)
	rs, busy, err := a.TryRLockAll(ctx, names)
	if err != nil || busy != -1 {
		t.Fatalf("TryRLockAll beside a reader: busy %d, %v", busy, err)
	}
	for _, l := range rs {
		_ = l.Release(ctx)
	}
	_ = r.Release(ctx)
	w, ok, err := b.TryWLock(ctx, names[1])
	mustTry(t, ok, err)
	if _, busy, err := a.TryRLockAll(ctx, names); err != nil || busy != 1 {
		t.Fatalf("TryRLockAll with a writer on names[1]: busy %d, %v", busy, err)
	}
	_ = w.Release(ctx)
	u, ok, err := b.TryULock(ctx, names[2])
	mustTry(t, ok, err)
	if _, busy, err := a.TryWLockAll(ctx, names); err != nil || busy != 2 {
		t.Fatalf("TryWLockAll with an upgradeable reader on names[2]: busy %d, %v", busy, err)
	}
	_ = u.Release(ctx)
	ws, busy, err := a.TryWLockAll(ctx, names)
	if err != nil || busy != -1 {
		t.Fatalf("TryWLockAll of free names: busy %d, %v", busy, err)
	}
	for i, l := range ws {
		o, ok, err := b.TryRLock(ctx, names[i])
		mustFail(t, o, ok, err)
		_ = l.Release(ctx)
	}
}

// TryAcquireAll takes a ticket of each semaphore of a set in one
// statement, skipping slots taken elsewhere; a semaphore with every slot
// taken makes the set busy there; holder records name the slot taken.
func TestTryAcquireAll(t *testing.T) {
	url := testURL(t)
	a, poolA := newBackend(t, url, pg.WithFencing("dlock_test_fencing"), pg.WithHolderTable(testHolders))
	b, _ := newBackend(t, url)
	ctx := ctxT(t, 20*time.Second)
	base := uniq(t)
	names := []string{base + "/a", base + "/b", base + "/c"}
	const limit = 2
	x, ok, err := b.TryAcquire(ctx, names[0], limit) // one of two slots taken
	mustTry(t, ok, err)
	y1, ok, err := b.TryAcquire(ctx, names[2], limit)
	mustTry(t, ok, err)
	y2, ok, err := b.TryAcquire(ctx, names[2], limit) // all taken
	mustTry(t, ok, err)
	if ls, busy, err := a.TryAcquireAll(ctx, names, limit); err != nil || busy != 2 || ls != nil {
		t.Fatalf("TryAcquireAll with names[2] full: %v, busy %d, %v", ls, busy, err)
	}
	_ = y2.Release(ctx)
	_ = y1.Release(ctx)
	ls, busy, err := a.TryAcquireAll(ctx, names, limit)
	if err != nil || busy != -1 || len(ls) != len(names) {
		t.Fatalf("TryAcquireAll: %d leases, busy %d, %v", len(ls), busy, err)
	}
	for i, l := range ls {
		if l.Token() == 0 {
			t.Fatalf("lease %d: no token", i)
		}
		hs, err := b.DescribeSemaphore(ctx, names[i], limit)
		if err != nil {
			t.Fatal(err)
		}
		want := 1
		if i == 0 {
			want = 2 // x too
		}
		if len(hs) != want {
			t.Fatalf("%s: %d holders (%+v), want %d", names[i], len(hs), hs, want)
		}
	}
	// names[0] is now full: x and the set's ticket.
	o, ok, err := b.TryAcquire(ctx, names[0], limit)
	mustFail(t, o, ok, err)
	for _, l := range ls {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_ = x.Release(ctx)
	assertPoolClean(t, poolA)
}
