package pg_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/pg"
)

// A writer that queued before an upgrade began never gets in before it:
// the upgrade goes first once the readers leave, new readers wait while it
// waits, and the writer gets the name when the upgraded lease lets go.
func TestUpgradeBeforeQueuedWriter(t *testing.T) {
	url := testURL(t)
	a, poolA := newBackend(t, url)
	b, _ := newBackend(t, url)
	c, _ := newBackend(t, url)
	ctx := ctxT(t, 30*time.Second)
	name := uniq(t)

	u, ok, err := a.TryULock(ctx, name)
	mustTry(t, ok, err)
	r, ok, err := c.TryRLock(ctx, name)
	mustTry(t, ok, err)
	wrote := make(chan *pg.Lease, 1)
	go func() {
		w, err := b.WLock(ctx, name)
		if err != nil {
			t.Errorf("WLock: %v", err)
		}
		wrote <- w
	}()
	time.Sleep(100 * time.Millisecond)
	upgraded := make(chan error, 1)
	go func() { upgraded <- u.Upgrade(ctx) }()
	// New readers wait once the upgrade queues.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r2, ok, err := c.TryRLock(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		_ = r2.Release(ctx)
		if time.Now().After(deadline) {
			t.Fatal("readers still got in 10s after the upgrade began")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case w := <-wrote:
		t.Fatalf("a writer got in while an upgradeable reader and a reader held the name (%v)", w)
	case err := <-upgraded:
		t.Fatalf("Upgrade returned while a reader held the name: %v", err)
	default:
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-upgraded:
		if err != nil {
			t.Fatalf("Upgrade: %v", err)
		}
	case w := <-wrote:
		t.Fatalf("the queued writer got in before the upgrade (%v)", w)
	case <-time.After(5 * time.Second):
		t.Fatal("the upgrade did not complete within 5s of the reader's release")
	}
	time.Sleep(50 * time.Millisecond)
	select {
	case <-wrote:
		t.Fatal("the writer got in while the upgraded lease held the name")
	default:
	}
	if err := u.Upgrade(ctx); err != nil {
		t.Fatalf("a second Upgrade: %v", err)
	}
	r3, ok, err := c.TryRLock(ctx, name)
	mustFail(t, r3, ok, err)
	if err := u.Release(ctx); err != nil {
		t.Fatalf("Release of the upgraded lease: %v", err)
	}
	select {
	case w := <-wrote:
		if w == nil {
			t.FailNow()
		}
		if err := w.Release(ctx); err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer did not get the name within 5s of the upgraded lease's release")
	}
	if s := a.Stats(); s.Leases != 0 || s.LockConns != 0 {
		t.Errorf("after every release: %+v", s)
	}
	assertPoolClean(t, poolA)
}

// An upgrade whose ctx ends leaves the lease the upgradeable reader: its
// session holds the shared lock and the upgrade key again, writers and
// other upgradeable readers stay out, and its Release lets go of both.
func TestUpgradeCancelledKeepsReadLock(t *testing.T) {
	url := testURL(t)
	a, poolA := newBackend(t, url)
	b, _ := newBackend(t, url)
	ctx := ctxT(t, 30*time.Second)
	name := uniq(t)
	u, err := a.ULock(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	r, ok, err := b.TryRLock(ctx, name)
	mustTry(t, ok, err)
	if ok, err := u.TryUpgrade(ctx); ok || err != nil {
		t.Fatalf("TryUpgrade while a reader holds: %v, %v", ok, err)
	}
	for _, d := range []time.Duration{time.Millisecond, 150 * time.Millisecond} {
		uctx, cancel := context.WithTimeout(ctx, d)
		err = u.Upgrade(uctx)
		cancel()
		if !errors.Is(err, backend.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Upgrade with a reader in (ctx %v): %v", d, err)
		}
		held := scalar[int64](t, url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1", int64(u.PID()))
		if held != 2 {
			t.Fatalf("after a failed upgrade the lease's session holds %d advisory locks, want 2 (shared and upgrade key)", held)
		}
		for _, try := range []func(context.Context, string) (*pg.Lease, bool, error){b.TryWLock, b.TryULock} {
			l, ok, err := try(ctx, name)
			mustFail(t, l, ok, err)
		}
		r2, ok, err := b.TryRLock(ctx, name)
		mustTry(t, ok, err)
		_ = r2.Release(ctx)
	}
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := u.Release(ctx); err != nil {
		t.Fatal(err)
	}
	w, ok, err := b.TryWLock(ctx, name)
	mustTry(t, ok, err)
	_ = w.Release(ctx)
	assertPoolClean(t, poolA)
}
