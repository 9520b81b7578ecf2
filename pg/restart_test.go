package pg_test

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/testserver"
	"github.com/dlock-go/dlock/pg"
)

// TestServerRestart restarts a private server while locks are held: every
// lease reports loss within the loss interval, the locks are free after the
// restart, and the backend works on.
//
// Where no private server can be started, it simulates the restart by
// terminating every session that holds a lock on the shared test server
// (what a restart does to the client side: every connection dies at once),
// and says so.
func TestServerRestart(t *testing.T) {
	url := testURL(t)
	srv, why := testserver.TryPG(t)
	if srv != nil {
		url = srv.URL
	} else {
		t.Logf("no private server could be started (%s): simulating the restart with pg_terminate_backend of every lock session", why)
	}
	b, _ := newBackend(t, url, pg.WithLossInterval(500*time.Millisecond))
	holder, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	// Leases of every kind, on shared and on own (waited-for) connections.
	var ls []*pg.Lease
	for i := range 5 {
		l, ok, err := b.TryLock(ctx, fmt.Sprint(name, i))
		mustTry(t, ok, err)
		ls = append(ls, l)
	}
	h, ok, err := holder.TryLock(ctx, name+"w")
	mustTry(t, ok, err)
	got := make(chan *pg.Lease, 1)
	go func() {
		l, err := b.Lock(ctx, name+"w")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(100 * time.Millisecond)
	_ = h.Release(ctx)
	ls = append(ls, <-got)
	r, ok, err := b.TryRLock(ctx, name)
	mustTry(t, ok, err)
	s, ok, err := b.TryAcquire(ctx, name, 3)
	mustTry(t, ok, err)
	ls = append(ls, r, s)
	if ls[0].PID() == ls[5].PID() {
		t.Fatal("the waited-for lease should be on its own connection")
	}

	start := time.Now()
	if srv != nil {
		srv.Ctl(t, "-m", "fast", "restart")
	} else {
		pids := map[uint32]bool{}
		for _, l := range ls {
			pids[l.PID()] = true
		}
		for pid := range pids {
			terminate(t, url, pid)
		}
	}
	for _, l := range ls {
		waitLost(t, l, 3*time.Second)
	}
	t.Logf("all %d leases reported loss %v after the restart began", len(ls), time.Since(start))
	for _, l := range ls {
		if err := l.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Release after restart: %v", err)
		}
	}
	// The locks are free, and the backend (whose pool reconnects) works.
	for i := range 5 {
		l, err := b.Lock(ctxT(t, 10*time.Second), fmt.Sprint(name, i))
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// needPrivateServer returns a private server (see testserver.StartPG),
// after checking that the shared one is configured.
func needPrivateServer(t *testing.T) *testserver.PG {
	t.Helper()
	testURL(t)
	return testserver.StartPG(t)
}

// Waits ride out a server restart (pg_ctl restart -m immediate): a waiter
// whose lock is held elsewhere keeps waiting through the outage and takes
// the lock once the server is back (the restart freed it), for every kind
// of wait (issue 10, item 2).
func TestWaitRidesOutRestart(t *testing.T) {
	srv := needPrivateServer(t)
	holder, _ := newBackend(t, srv.URL)
	waiter := newOn(t, newPool(t, srv.URL, 2))
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	type wait struct {
		kind string
		take func(ctx context.Context) error
		hold func() error
	}
	waits := []wait{
		{"mutex", func(ctx context.Context) error {
			lk, err := dlock.NewMutex(waiter).Acquire(ctx, name)
			if err == nil {
				err = lk.Release(ctx)
			}
			return err
		}, func() error { _, ok, err := holder.TryLock(ctx, name); return try(ok, err) }},
		{"write", func(ctx context.Context) error {
			lk, err := dlock.NewRWMutex(waiter).Write().Acquire(ctx, name)
			if err == nil {
				err = lk.Release(ctx)
			}
			return err
		}, func() error { _, ok, err := holder.TryRLock(ctx, name); return try(ok, err) }},
		{"semaphore", func(ctx context.Context) error {
			lk, err := dlock.NewSemaphore(waiter, 1).Acquire(ctx, name)
			if err == nil {
				err = lk.Release(ctx)
			}
			return err
		}, func() error { _, ok, err := holder.TryAcquire(ctx, name, 1); return try(ok, err) }},
	}
	for _, w := range waits {
		if err := w.hold(); err != nil {
			t.Fatalf("%s: hold: %v", w.kind, err)
		}
	}
	done := make(chan error, len(waits))
	start := time.Now()
	for _, w := range waits {
		go func() {
			err := w.take(ctxT(t, 45*time.Second))
			if err != nil {
				err = fmt.Errorf("%s: %w", w.kind, err)
			}
			done <- err
		}()
	}
	time.Sleep(300 * time.Millisecond) // all wait
	srv.Ctl(t, "-m", "immediate", "restart")
	t.Logf("server restarted after %v", time.Since(start))
	for range waits {
		if err := <-done; err != nil {
			t.Fatalf("a wait through a restart: %v", err)
		}
	}
	t.Logf("every wait acquired and released %v after it began", time.Since(start))
}

// A wait that starts while the server is down takes its lock once the
// server is up; a wait whose deadline ends before the server is up returns
// ErrNotAcquired and the deadline, wrapping the server's error.
func TestWaitWhileServerDown(t *testing.T) {
	srv := needPrivateServer(t)
	b := newOn(t, newPool(t, srv.URL, 2))
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	l, ok, err := b.TryLock(ctx, name+"warm") // the pool has a connection
	mustTry(t, ok, err)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop(t)
	up := false
	t.Cleanup(func() {
		if !up {
			srv.Start(t)
		}
	})
	// A try reports the outage at once.
	start := time.Now()
	_, _, err = b.TryLock(ctx, name)
	t.Logf("try while down: %v (%v)", err, time.Since(start))
	if err == nil || errors.Is(err, dlock.ErrNotAcquired) || backend.IsPermanent(err) {
		t.Fatalf("try while the server is down: %v, want a (transient) server error", err)
	}
	// A wait shorter than the outage.
	for _, sem := range []bool{false, true} {
		wctx, cancel := context.WithTimeout(ctx, 700*time.Millisecond)
		var err error
		if sem {
			_, err = dlock.NewSemaphore(b, 2).Acquire(wctx, name)
		} else {
			_, err = dlock.NewMutex(b).Acquire(wctx, name)
		}
		cancel()
		t.Logf("wait shorter than the outage: %v", err)
		if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("wait shorter than the outage: %v, want ErrNotAcquired, DeadlineExceeded and the server error (connection refused)", err)
		}
	}
	// A wait longer than the outage.
	done := make(chan error, 2)
	for _, sem := range []bool{false, true} {
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 45*time.Second)
			defer cancel()
			var lk *dlock.Lock[*pg.Lease]
			var err error
			if sem {
				lk, err = dlock.NewSemaphore(b, 2).Acquire(wctx, name)
			} else {
				lk, err = dlock.NewMutex(b).Acquire(wctx, name)
			}
			if err == nil {
				err = lk.Release(ctx)
			}
			done <- err
		}()
	}
	time.Sleep(time.Second)
	srv.Start(t)
	up = true
	back := time.Now()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("a wait that began while the server was down: %v", err)
		}
	}
	t.Logf("the waits acquired %v after the server was up", time.Since(back))
}

func try(ok bool, err error) error {
	if err == nil && !ok {
		err = errors.New("not acquired")
	}
	return err
}
