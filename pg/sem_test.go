package pg_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
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

// Waiters of a full semaphore queue on the server, each on a pool
// connection of its own; each release hands a ticket to a waiter, the
// limit holds throughout, and every connection goes back to the pool
// clean (no lock, not listening) when the waits end.
func TestSemaphoreWaitersQueue(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
	url := testURL(t)
	const limit, waiters = 2, 8
	pool := newPool(t, url, waiters+1)
	b := newOn(t, pool, pg.WithLossInterval(100*time.Millisecond))
	other, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
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
	// All wait, each on its own connection in the server's queue.
	for end := time.Now().Add(10 * time.Second); pool.Stat().AcquiredConns() != waiters; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d waiters hold %d pool connections; want one each", waiters, pool.Stat().AcquiredConns())
		}
	}
	if got.Load() != 0 {
		t.Fatal("a waiter acquired a full semaphore")
	}
	if _, ok, err := other.TryAcquire(ctx, name, limit+1); ok || err != nil {
		t.Fatalf("a try of a free slot jumped the queue: %v %v", ok, err)
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
	for end := time.Now().Add(5 * time.Second); pool.Stat().AcquiredConns() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d pool connections still acquired after the waits ended", pool.Stat().AcquiredConns())
		}
	}
	assertPoolClean(t, pool)
}

// A ticket freed without a notification (its holder's session died) goes
// to the head of the queue by the fallback poll; a head whose session is
// killed leaves the queue at once, and the next waiter is served.
func TestSemaphoreWaitWithoutNotification(t *testing.T) {
	url := testURL(t)
	b, _ := newBackend(t, url, pg.WithLossInterval(200*time.Millisecond))
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

	// 2. The head's session is killed while it waits; the waiter behind
	// it becomes the head.
	waitLost(t, h, 5*time.Second) // other forgets the ticket of the dead session
	_ = h.Release(ctx)
	h, ok, err = other.TryAcquire(ctx, name, 1)
	mustTry(t, ok, err)
	app := fmt.Sprintf("dlock-semhead-%d", time.Now().UnixNano())
	head, _ := newBackend(t, appURL(url, app))
	headErr := make(chan error, 1)
	go func() {
		l, err := head.Acquire(ctx, name, 1)
		if err == nil {
			_ = l.Release(ctx)
		}
		headErr <- err
	}()
	time.Sleep(200 * time.Millisecond)
	go func() {
		l, err := b.Acquire(ctx, name, 1)
		if err != nil {
			t.Error(err)
		}
		done <- l
	}()
	time.Sleep(200 * time.Millisecond)
	admin(t, url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
	if err := <-headErr; err == nil {
		t.Fatal("the killed head acquired")
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-done:
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter behind a killed head was not served")
	}
}

// Semaphore waiters on different backends are served in the order they
// began to wait, a waiter whose ctx ends leaves the queue without blocking
// the next, and a try does not jump the queue (not even for a slot that a
// larger limit leaves free).
func TestSemaphoreQueueOrder(t *testing.T) {
	url := testURL(t)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	holder, _ := newBackend(t, url)
	h, ok, err := holder.TryAcquire(ctx, name, 1)
	mustTry(t, ok, err)
	got := make(chan int, 5)
	var wg sync.WaitGroup
	defer wg.Wait()
	for i := range 5 {
		b, pool := newBackend(t, url)
		// Two connections ready (a try's, then the queue's), so that
		// arrival at the server follows the start order on a loaded
		// machine.
		warm(t, pool, 2)
		wg.Go(func() {
			wctx := ctx
			if i == 1 { // gives up while queued: leaves at once
				var cancel context.CancelFunc
				wctx, cancel = context.WithTimeout(ctx, 250*time.Millisecond)
				defer cancel()
			}
			l, err := b.Acquire(wctx, name, 1)
			if i == 1 {
				if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("waiter 1: %v, want not acquired, deadline exceeded", err)
				}
				return
			}
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				got <- -1
				return
			}
			got <- i
			time.Sleep(20 * time.Millisecond)
			if err := l.Release(ctx); err != nil {
				t.Errorf("waiter %d: release: %v", i, err)
			}
		})
		time.Sleep(100 * time.Millisecond)
	}
	if _, ok, err := holder.TryAcquire(ctx, name, 1); ok || err != nil {
		t.Fatalf("a try while others wait: %v %v", ok, err)
	}
	other, _ := newBackend(t, url)
	if _, ok, err := other.TryAcquire(ctx, name, 2); ok || err != nil {
		t.Fatalf("a try of a free slot while others wait: %v %v", ok, err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // waiter 1's deadline has passed
	for _, want := range []int{0, 2, 3, 4} {
		select {
		case i := <-got:
			if i != want {
				t.Errorf("waiter %d served, want %d", i, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("waiter %d not served", want)
		}
	}
}

// warm makes pool hold n idle connections.
func warm(t testing.TB, pool *pgxpool.Pool, n int) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	var cs []*pgxpool.Conn
	for range n {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.Release()
	}
}
