package pg_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/pg"
)

// appURL returns url with application_name set, so a test can find its
// backend's sessions in pg_stat_activity.
func appURL(url, app string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "application_name=" + app
}

// Waiters of a full semaphore share one listener connection (not one
// connection each), each release hands a ticket to a waiter, the limit
// holds throughout, and the listener goes away when no one waits.
func TestSemaphoreWaitersShareOneListener(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	url := testURL(t)
	pool := newPool(t, url, 4)
	b := newOn(t, pool, pg.WithLossInterval(100*time.Millisecond))
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	const limit, waiters = 2, 8
	var hs []*pg.Lease
	for range limit {
		h, ok, err := other.TryAcquire(ctx, name, limit)
		mustTry(t, ok, err)
		hs = append(hs, h)
	}
	var (
		wg      sync.WaitGroup
		holding atomic.Int32
		most    atomic.Int32
		got     atomic.Int32
	)
	for range waiters {
		wg.Go(func() {
			l, err := b.Acquire(ctx, name, limit)
			if err != nil {
				t.Error(err)
				return
			}
			n := holding.Add(1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			time.Sleep(5 * time.Millisecond)
			holding.Add(-1)
			got.Add(1)
			if err := l.Release(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	// All wait: one listener connection, and at most a try in flight.
	time.Sleep(300 * time.Millisecond)
	if n := pool.Stat().AcquiredConns(); n > 2 {
		t.Errorf("%d waiters hold %d pool connections; want the listener and at most one try", waiters, n)
	}
	if got.Load() != 0 {
		t.Fatal("a waiter acquired a full semaphore")
	}
	for _, h := range hs {
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if got.Load() != waiters || most.Load() > limit {
		t.Fatalf("%d of %d waiters acquired, at most %d at once (limit %d)", got.Load(), waiters, most.Load(), limit)
	}
	// No waiter: the listener gives its connection back.
	for end := time.Now().Add(5 * time.Second); pool.Stat().AcquiredConns() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d pool connections still acquired after the waits ended", pool.Stat().AcquiredConns())
		}
	}
	assertPoolClean(t, pool)
}

// A ticket freed without a notification (its holder's session died) goes
// to a waiter by the fallback poll; a listener whose session is killed
// comes back, and waiters are still woken by releases.
func TestSemaphoreWaitWithoutNotification(t *testing.T) {
	url := testURL(t)
	app := fmt.Sprintf("dlock-semtest-%d", time.Now().UnixNano())
	b, _ := newBackend(t, appURL(url, app), pg.WithLossInterval(200*time.Millisecond))
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)

	// 1. The holder's session is terminated: no notification.
	h, ok, err := other.TryAcquire(ctx, name, 1)
	mustTry(t, ok, err)
	done := make(chan *pg.Lease, 1)
	go func() {
		l, err := b.Acquire(ctx, name, 1)
		if err != nil {
			t.Error(err)
		}
		done <- l
	}()
	time.Sleep(100 * time.Millisecond)
	terminate(t, url, h.PID())
	select {
	case l := <-done:
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a ticket freed by a dead session never reached the waiter")
	}

	// 2. The listener's session is killed while a waiter waits.
	waitLost(t, h, 5*time.Second) // other forgets the ticket of the dead session
	_ = h.Release(ctx)
	h, ok, err = other.TryAcquire(ctx, name, 1)
	mustTry(t, ok, err)
	go func() {
		l, err := b.Acquire(ctx, name, 1)
		if err != nil {
			t.Error(err)
		}
		done <- l
	}()
	var pid int64
	for end := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no listener session")
		}
		pid = scalar[int64](t, url, "SELECT coalesce(max(pid), 0) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN %'", app)
	}
	terminate(t, url, uint32(pid))
	time.Sleep(100 * time.Millisecond)
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-done:
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not woken after its listener was killed")
	}
}
