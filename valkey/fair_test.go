package valkey

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

// The waiter queue (see luaQueue): arrival order, eviction of waiters that
// stop renewing, tries that never jump the queue, and keys it does not
// understand.

// queueLen returns how many waiters (live or not yet evicted) the queue of
// the lock of kind k on name holds.
func queueLen(t testing.TB, b *Backend, k kind, name string) int64 {
	t.Helper()
	base, err := keyBase(b.c.cfg.prefix, name)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := queueKeys(base, k)
	cl := b.c.nodes[0].client
	n, err := cl.Do(testCtx(t), cl.B().Zcard().Key(q).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitQueued waits until the queue holds n waiters.
func waitQueued(t testing.TB, b *Backend, k kind, name string, n int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for queueLen(t, b, k, name) != n {
		if time.Now().After(deadline) {
			t.Fatalf("the queue of %q holds %d waiters, want %d", name, queueLen(t, b, k, name), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lockAsync starts b.Lock(ctx, name) and returns where its outcome is sent.
func lockAsync(ctx context.Context, b *Backend, name string) <-chan *Lease {
	out := make(chan *Lease, 1)
	go func() {
		l, err := b.Lock(ctx, name)
		if err != nil {
			l = nil
		}
		out <- l
	}()
	return out
}

const deadWaiterEnv = "DLOCK_VALKEY_DEAD_WAITER"

// A waiter whose process is killed (SIGKILL: it cannot leave the queue)
// holds up the waiters behind it at most about the lease: its place
// expires when it stops renewing it.
func TestDeadWaiterEvictedByLease(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	if spec := os.Getenv(deadWaiterEnv); spec != "" {
		// The helper process: wait until killed.
		space, name, _ := strings.Cut(spec, "|")
		b := newTestBackend(t, space, addr)
		_, err := b.Lock(context.Background(), name)
		t.Fatalf("the dead waiter's Lock returned: %v", err)
	}
	space := t.TempDir()
	name := "dead-waiter"
	b := newTestBackend(t, space, addr)
	holder := mustLock(t, b, name)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestDeadWaiterEvictedByLease$", "-test.count=1")
	cmd.Env = append(os.Environ(), deadWaiterEnv+"="+space+"|"+name)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitQueued(t, b, kindMutex, name, 1)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	other := newTestBackend(t, space, addr)
	got := lockAsync(testCtx(t), other, name)
	waitQueued(t, b, kindMutex, name, 2) // behind the dead one
	released := time.Now()
	if err := holder.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	// The dead waiter's place lasts the lease after its last renewal
	// (before the release); the live one notices within its poll.
	bound := testLease + maxPoll + time.Second
	select {
	case l := <-got:
		if l == nil {
			t.Fatal("the waiter behind the dead one failed")
		}
		t.Logf("served %v after the release", time.Since(released).Round(time.Millisecond))
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	case <-time.After(bound):
		t.Fatalf("the waiter behind a killed waiter was not served within %v (lease %v)", bound, testLease)
	}
	if n := queueLen(t, b, kindMutex, name); n != 0 {
		t.Errorf("the queue still holds %d waiters", n)
	}
}

// A waiter whose ctx ends leaves the queue before its Lock returns, and
// the waiter behind it is served at the next release, not after the lease.
func TestCancelledWaiterLeaves(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	space := t.TempDir()
	a, b, c := newTestBackend(t, space, addr), newTestBackend(t, space, addr), newTestBackend(t, space, addr)
	for _, tc := range []struct {
		k    kind
		wait func(b *Backend, ctx context.Context, name string) (*Lease, error)
		try  func(b *Backend, ctx context.Context, name string) (*Lease, bool, error)
	}{
		{kindMutex, (*Backend).Lock, (*Backend).TryLock},
		{kindWrite, (*Backend).WLock, (*Backend).TryWLock},
		{kindSem, func(b *Backend, ctx context.Context, name string) (*Lease, error) { return b.Acquire(ctx, name, 1) },
			func(b *Backend, ctx context.Context, name string) (*Lease, bool, error) {
				return b.TryAcquire(ctx, name, 1)
			}},
	} {
		t.Run(tc.k.String(), func(t *testing.T) {
			name := "cancelled-" + tc.k.String()
			holder, ok, err := tc.try(a, testCtx(t), name)
			if err != nil || !ok {
				t.Fatalf("try: %v, %v", ok, err)
			}
			ctx, cancel := context.WithCancel(testCtx(t))
			first := make(chan error, 1)
			go func() {
				_, err := tc.wait(b, ctx, name)
				first <- err
			}()
			waitQueued(t, a, tc.k, name, 1)
			second := make(chan *Lease, 1)
			go func() {
				l, _ := tc.wait(c, testCtx(t), name)
				second <- l
			}()
			waitQueued(t, a, tc.k, name, 2)
			cancel()
			if err := <-first; !errors.Is(err, backend.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled wait: %v", err)
			}
			if n := queueLen(t, a, tc.k, name); n != 1 {
				t.Fatalf("the queue holds %d waiters after one left, want 1", n)
			}
			if err := holder.Release(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			select {
			case l := <-second:
				if l == nil {
					t.Fatal("the second waiter failed")
				}
				if err := l.Release(testCtx(t)); err != nil {
					t.Fatal(err)
				}
			case <-time.After(testLease):
				t.Fatalf("the waiter behind a cancelled one was not served within the lease %v", testLease)
			}
		})
	}
}

// do runs cmd on the node of b.
func do(t testing.TB, b *Backend, cmd func(valkeygo.Builder) valkeygo.Completed) {
	t.Helper()
	cl := b.c.nodes[0].client
	if err := cl.Do(testCtx(t), cmd(cl.B())).Error(); err != nil {
		t.Fatal(err)
	}
}

// A try fails while a live waiter waits, even when the lock is free: it
// never jumps the queue; a waiter past its deadline does not count.
func TestTryDoesNotJumpQueue(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	tries := map[kind]func(name string) (*Lease, bool, error){
		kindMutex: func(name string) (*Lease, bool, error) { return b.TryLock(testCtx(t), name) },
		kindWrite: func(name string) (*Lease, bool, error) { return b.TryWLock(testCtx(t), name) },
		kindRead:  func(name string) (*Lease, bool, error) { return b.TryRLock(testCtx(t), name) },
		kindSem:   func(name string) (*Lease, bool, error) { return b.TryAcquire(testCtx(t), name, 3) },
	}
	for k, try := range tries {
		t.Run(k.String(), func(t *testing.T) {
			name := "queue-jump-" + k.String()
			base, _ := keyBase(b.c.cfg.prefix, name)
			q, d := queueKeys(base, k)
			member := queueMember(k, "someone")
			if k == kindRead {
				member = queueMember(kindWrite, "someone") // readers yield to a waiting writer
			}
			now := time.Now().UnixMilli()
			do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
				return c.Zadd().Key(q).ScoreMember().ScoreMember(1, member).Build()
			})
			do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
				return c.Zadd().Key(d).ScoreMember().ScoreMember(float64(now+60_000), member).Build()
			})
			if l, ok, err := try(name); err != nil || ok {
				if ok {
					_ = l.Release(testCtx(t))
				}
				t.Fatalf("try with a live waiter queued = %v, %v; want refused", ok, err)
			}
			// The waiter's deadline passes: it is dead and evicted.
			do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
				return c.Zadd().Key(d).ScoreMember().ScoreMember(float64(now-1000), member).Build()
			})
			l, ok, err := try(name)
			if err != nil || !ok {
				t.Fatalf("try with only a dead waiter queued = %v, %v; want acquired", ok, err)
			}
			if err := l.Release(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			if n := queueLen(t, b, k, name); n != 0 {
				t.Errorf("the dead waiter was not evicted: %d queued", n)
			}
		})
	}
	// A real waiter: a try fails while it waits, also after the lock was
	// freed without a release notification (its key deleted).
	name := "queue-jump-live"
	holder := mustLock(t, b, name)
	other := newTestBackendLike(t, b, addr)
	got := lockAsync(testCtx(t), other, name)
	waitQueued(t, b, kindMutex, name, 1)
	loseLease(t, holder)
	if l, ok, err := b.TryLock(testCtx(t), name); ok || err != nil {
		if ok {
			_ = l.Release(testCtx(t))
		}
		t.Fatalf("TryLock while a waiter waits = %v, %v; want refused", ok, err)
	}
	l := <-got
	if l == nil {
		t.Fatal("the waiter failed")
	}
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A queue key holding what this package did not write gives a clear error
// (never a panic, never a second holder); a queued member without a
// deadline counts as dead.
func TestQueueGarbage(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	for _, which := range []string{"queue", "deadlines"} {
		t.Run(which, func(t *testing.T) {
			name := "garbage-" + which
			base, _ := keyBase(b.c.cfg.prefix, name)
			q, d := queueKeys(base, kindMutex)
			key := q
			if which == "deadlines" {
				key = d
				do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
					return c.Zadd().Key(q).ScoreMember().ScoreMember(1, "x").Build()
				})
			}
			do(t, b, func(c valkeygo.Builder) valkeygo.Completed { return c.Set().Key(key).Value("garbage").Build() })
			_, ok, err := b.TryLock(testCtx(t), name)
			if ok || err == nil || !strings.Contains(err.Error(), "wrong type") {
				t.Fatalf("TryLock over a garbage %s key = %v, %v; want an error saying a key has the wrong type", which, ok, err)
			}
			ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
			defer cancel()
			if _, err := b.Lock(ctx, name); err == nil || !strings.Contains(err.Error(), "wrong type") {
				t.Fatalf("Lock over a garbage %s key: %v", which, err)
			}
			cl := b.c.nodes[0].client
			if n, err := cl.Do(testCtx(t), cl.B().Exists().Key(base+"m").Build()).AsInt64(); err != nil || n != 0 {
				t.Fatalf("the lock key exists (%d, %v) after failed attempts", n, err)
			}
			do(t, b, func(c valkeygo.Builder) valkeygo.Completed { return c.Del().Key(q, d).Build() })
		})
	}
	t.Run("member without deadline", func(t *testing.T) {
		name := "garbage-member"
		base, _ := keyBase(b.c.cfg.prefix, name)
		q, _ := queueKeys(base, kindMutex)
		do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
			return c.Zadd().Key(q).ScoreMember().ScoreMember(1, "stranger").Build()
		})
		l := mustLock(t, b, name)
		if _, ok, _ := b.TryLock(testCtx(t), name); ok {
			t.Fatal("two holders")
		}
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	})
}

// A release is announced only when someone waits, and then names the
// first waiter.
func TestReleasePublishesOnlyToWaiters(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	name := "publish-when-waited"
	base, _ := keyBase(b.c.cfg.prefix, name)
	msgs := make(chan string, 8)
	sub := testClient(t, addr)
	dc, release := sub.Dedicate()
	defer release()
	wait := dc.SetPubSubHooks(valkeygo.PubSubHooks{OnMessage: func(m valkeygo.PubSubMessage) { msgs <- m.Message }})
	if err := dc.Do(testCtx(t), dc.B().Subscribe().Channel(channel(base, kindMutex)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := mustLock(t, b, name).Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	holder := mustLock(t, b, name)
	other := newTestBackendLike(t, b, addr)
	got := lockAsync(testCtx(t), other, name)
	waitQueued(t, b, kindMutex, name, 1)
	if err := holder.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	l := <-got
	if l == nil {
		t.Fatal("the waiter failed")
	}
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if !strings.HasPrefix(m, other.c.self) {
			t.Errorf("the release announced %q, want the waiter's id (%s...)", m, other.c.self)
		}
	case err := <-wait:
		t.Fatal(err)
	case <-time.After(5 * time.Second):
		t.Fatal("a release with a waiter was not announced")
	}
	select {
	case m := <-msgs:
		t.Errorf("%d messages for 1 release with a waiter (and 4 without): extra %q", 2, m)
	case <-time.After(100 * time.Millisecond):
	}
}

// newTestBackendLike returns another Backend (own client) with b's options.
func newTestBackendLike(t testing.TB, b *Backend, addr string) *Backend {
	t.Helper()
	o, err := New(testClient(t, addr), WithKeyPrefix(b.c.cfg.prefix), WithLease(b.c.cfg.lease))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Close() })
	return o
}
