package valkey

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

// flakyClient passes every command through to its client, except the
// scripts (EVALSHA, EVAL) it is told to fail, which it fails with a reset
// connection's error without sending them: what a waiter meets during a
// failover or when its connection is killed. It fails the next fail
// scripts, and, once armed with a window, every script for that long from
// the first one it meets.
type flakyClient struct {
	valkeygo.Client
	fail   atomic.Int32 // scripts still to fail
	window atomic.Int64 // armed: fail every script for this long (ns) from the next one
	until  atomic.Int64 // the armed window's end (Unix ns); 0 until it starts
}

func (f *flakyClient) Do(ctx context.Context, cmd valkeygo.Completed) valkeygo.ValkeyResult {
	if c := cmd.Commands(); len(c) > 0 && (c[0] == "EVALSHA" || c[0] == "EVAL") && f.failNow() {
		return valkeygo.NewErrorResult(&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET})
	}
	return f.Client.Do(ctx, cmd)
}

func (f *flakyClient) failNow() bool {
	if w := f.window.Load(); w > 0 {
		now := time.Now().UnixNano()
		f.until.CompareAndSwap(0, now+w)
		return now < f.until.Load()
	}
	for n := f.fail.Load(); n > 0; n = f.fail.Load() {
		if f.fail.CompareAndSwap(n, n-1) {
			return true
		}
	}
	return false
}

// waitWindow waits until the armed window has passed.
func (f *flakyClient) waitWindow(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for u := f.until.Load(); u == 0 || time.Now().UnixNano() < u; u = f.until.Load() {
		if time.Now().After(deadline) {
			t.Fatal("no script failed within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// waitKind is one kind of exclusive lock, as the waitid tests take it.
type waitKind struct {
	name  string
	k     kind
	try   func(b *Backend, name string) (*Lease, bool, error)
	wait  func(ctx context.Context, b *Backend, name string) (*Lease, error)
	guard func(b *Backend) *dlock.Guard[*Lease]
}

var waitKinds = []waitKind{
	{"mutex", kindMutex,
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryLock(context.Background(), n) },
		func(ctx context.Context, b *Backend, n string) (*Lease, error) { return b.Lock(ctx, n) },
		func(b *Backend) *dlock.Guard[*Lease] { return dlock.NewMutex(b) }},
	{"write", kindWrite,
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryWLock(context.Background(), n) },
		func(ctx context.Context, b *Backend, n string) (*Lease, error) { return b.WLock(ctx, n) },
		func(b *Backend) *dlock.Guard[*Lease] { return dlock.NewRWMutex(b).Write() }},
	{"semaphore", kindSem,
		func(b *Backend, n string) (*Lease, bool, error) { return b.TryAcquire(context.Background(), n, 1) },
		func(ctx context.Context, b *Backend, n string) (*Lease, error) { return b.Acquire(ctx, n, 1) },
		func(b *Backend) *dlock.Guard[*Lease] { return dlock.NewSemaphore(b, 1) }},
}

// waitIDSetup makes a holder h of "x" (of kind wk), a waiter w over a
// flaky client and another backend o, all with a lease of a minute (so
// that a place left behind would hold the queue up far longer than the
// test waits).
func waitIDSetup(t *testing.T, wk waitKind) (h, w, o *Backend, fc *flakyClient, held *Lease) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	// (The temporary directory's parent is unique to the test; its base,
	// "001", is not.)
	opts := []Option{WithKeyPrefix(testPrefix(filepath.Dir(t.TempDir()))), WithLease(time.Minute)}
	mk := func(c valkeygo.Client) *Backend {
		b, err := New(c, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	fc = &flakyClient{Client: testClient(t, addr)}
	h, w, o = mk(testClient(t, addr)), mk(fc), mk(testClient(t, addr))
	held, ok, err := wk.try(h, "x")
	if err != nil || !ok {
		t.Fatalf("the holder's try: %v, %v", ok, err)
	}
	return h, w, o, fc, held
}

// TestWaitKeepsPlaceAcrossErrors (RELIABILITY.md finding 12): a waiter
// whose attempt and leave both fail on a broken connection (a failover,
// a killed connection) keeps its id and its place when the engine tries
// again. It used to queue again under a new id behind the waiter that
// came after it, leaving its old place first in the queue (a mutex's
// release granted the lock to it): everyone waited for it to expire, a
// lease later.
func TestWaitKeepsPlaceAcrossErrors(t *testing.T) {
	for _, wk := range waitKinds {
		t.Run(wk.name, func(t *testing.T) {
			h, w, o, fc, held := waitIDSetup(t, wk)
			ctx, cancel := context.WithTimeout(testCtx(t), 15*time.Second)
			defer cancel()
			type result struct {
				lk  *dlock.Lock[*Lease]
				err error
			}
			wCh := make(chan result, 1)
			go func() { // through the engine, which tries again after an error
				lk, err := wk.guard(w).Acquire(ctx, "x")
				wCh <- result{lk, err}
			}()
			waitQueued(t, h, wk.k, "x", 1)
			oCh := make(chan *Lease, 1)
			go func() {
				l, _ := wk.wait(ctx, o, "x")
				oCh <- l
			}()
			waitQueued(t, h, wk.k, "x", 2)
			// The waiter's connection broken for 300ms from its next
			// attempt: the attempt, its clean-up (a release, tried again
			// for some 70ms) and its leave fail, and the engine's retries
			// for a while.
			fc.window.Store(int64(300 * time.Millisecond))
			fc.waitWindow(t)
			time.Sleep(100 * time.Millisecond) // the engine's retry (not needed: a release before it is taken over)
			if err := held.Release(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case a := <-wCh:
				if a.err != nil {
					t.Fatalf("the first waiter: %v", a.err)
				}
				if n := queueLen(t, h, wk.k, "x"); n != 1 {
					t.Errorf("the first waiter holds the lock; the queue holds %d waiters, want 1", n)
				}
				if err := a.lk.Release(ctx); err != nil {
					t.Fatal(err)
				}
			case l := <-oCh:
				if l != nil {
					_ = l.Release(ctx)
				}
				t.Fatalf("the second waiter got the lock first (%v)", l != nil)
			case <-ctx.Done():
				t.Fatal("nobody got the lock within 15s of its release (lease: a minute)")
			}
			select {
			case l := <-oCh:
				if l == nil {
					t.Fatal("the second waiter failed")
				}
				_ = l.Release(ctx)
			case <-ctx.Done():
				t.Fatal("the second waiter did not get the lock within 15s")
			}
		})
	}
}

// TestParkedPlaceLeaves: a wait that failed on a transient error and is
// not tried again gives its place up, when its ctx ends or after parkFor
// (a direct caller of Lock that gave up): the next waiter is not held up.
func TestParkedPlaceLeaves(t *testing.T) {
	for _, byCtx := range []bool{true, false} {
		name := map[bool]string{true: "ctx", false: "time"}[byCtx]
		t.Run(name, func(t *testing.T) {
			h, w, o, fc, held := waitIDSetup(t, waitKinds[0])
			ctx, cancel := context.WithTimeout(testCtx(t), 15*time.Second)
			defer cancel()
			wctx, wcancel := context.WithCancel(ctx)
			defer wcancel()
			errCh := make(chan error, 1)
			go func() {
				_, err := w.Lock(wctx, "x") // no engine: nobody tries again
				errCh <- err
			}()
			waitQueued(t, h, kindMutex, "x", 1)
			fc.fail.Store(1)
			var err error
			select {
			case err = <-errCh:
			case <-ctx.Done():
				t.Fatal("the wait did not fail")
			}
			if err == nil || ctx.Err() != nil {
				t.Fatalf("the wait: %v, want the broken connection's error", err)
			}
			if n := queueLen(t, h, kindMutex, "x"); n != 1 {
				t.Fatalf("the failed wait's place: the queue holds %d, want 1 (kept for the retry)", n)
			}
			if byCtx {
				wcancel()
			}
			waitQueued(t, h, kindMutex, "x", 0)
			oCh := lockAsync(ctx, o, "x")
			waitQueued(t, h, kindMutex, "x", 1)
			if err := held.Release(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case l := <-oCh:
				if l == nil {
					t.Fatal("the next waiter failed")
				}
				_ = l.Release(ctx)
			case <-ctx.Done():
				t.Fatal("the next waiter did not get the lock within 15s")
			}
		})
	}
}

// nonComparableCtx is a ctx whose value cannot be a map key.
type nonComparableCtx struct {
	context.Context
	tags []string
}

// TestParkedWaitersKeys: a parked id goes only to a wait with the same
// ctx for the same lock (kind and name), the longest parked first; a ctx
// that cannot be a map key is never parked; Close forgets every id.
func TestParkedWaitersKeys(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, filepath.Dir(t.TempDir()), addr)
	c := b.c
	req := func(k kind, name string) *request {
		s := map[kind]*script{kindMutex: acquireMutex, kindSem: acquireSem}[k]
		r, err := newRequestFor(c, k, name, s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	ctx1, cancel1 := context.WithCancel(testCtx(t))
	defer cancel1()
	ctx2, cancel2 := context.WithCancel(testCtx(t))
	defer cancel2()
	x, y, sx := req(kindMutex, "x"), req(kindMutex, "y"), req(kindSem, "x")
	for _, id := range []string{"a", "b"} {
		if !c.park.park(c, ctx1, x, id) {
			t.Fatalf("park %s refused", id)
		}
	}
	for what, got := range map[string]string{
		"another ctx": c.park.resume(ctx2, x), "another name": c.park.resume(ctx1, y), "another kind": c.park.resume(ctx1, sx),
	} {
		if got != "" {
			t.Errorf("resume with %s = %q, want none", what, got)
		}
	}
	for _, want := range []string{"a", "b", ""} {
		if got := c.park.resume(ctx1, x); got != want {
			t.Errorf("resume = %q, want %q", got, want)
		}
	}
	if c.park.park(c, nonComparableCtx{Context: ctx1, tags: []string{"t"}}, x, "c") {
		t.Error("a ctx that cannot be a map key was parked")
	}
	if !c.park.park(c, ctx1, x, "d") {
		t.Fatal("park refused")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := c.park.resume(ctx1, x); got != "" {
		t.Errorf("resume after Close = %q, want none", got)
	}
	if c.park.park(c, ctx1, x, "e") {
		t.Error("park after Close accepted")
	}
}
