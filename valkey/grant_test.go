package valkey

import (
	"strconv"
	"strings"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// A mutex's release whose next waiter waits in the same Backend grants it
// the lock in the script and hands it over in-process: nothing is
// published, the waiter's lease is the lock's value, and its token is
// larger than the holder's.
func TestReleaseGrantsLocalWaiter(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	name := "grant-local"
	base, _ := keyBase(b.c.cfg.prefix, name)
	msgs := subscribeMessages(t, addr, channel(base, kindMutex))
	for range 20 {
		holder := mustLock(t, b, name)
		got := lockAsync(testCtx(t), b, name)
		waitQueued(t, b, kindMutex, name, 1)
		if err := holder.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		l := <-got
		if l == nil {
			t.Fatal("the waiter failed")
		}
		if !strings.HasPrefix(l.token, b.c.self) || l.Token() <= holder.Token() {
			t.Fatalf("waiter's lease: token %q, fence %d after %d", l.token, l.Token(), holder.Token())
		}
		cl := b.c.nodes[0].client
		v, err := cl.Do(testCtx(t), cl.B().Get().Key(mutexKeys(base)[0]).Build()).ToString()
		if err != nil || v != l.token {
			t.Fatalf("the lock holds %q (%v), the waiter's lease is %q", v, err, l.token)
		}
		if n := queueLen(t, b, kindMutex, name); n != 0 {
			t.Fatalf("the queue holds %d waiters after the hand-off", n)
		}
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case m := <-msgs:
		t.Errorf("a release to a waiter of the same Backend published %q", m)
	case <-time.After(100 * time.Millisecond):
	}
}

// grantToGhost queues a waiter id of b that no goroutine of b waits
// under, and releases a holder: the script grants the lock to that id,
// which nobody takes.
func grantToGhost(t *testing.T, b *Backend, name string) (r *request, ghost string) {
	t.Helper()
	r, err := b.mutex(name)
	if err != nil {
		t.Fatal(err)
	}
	ghost = b.c.self + "ghost"
	holder := mustLock(t, b, name)
	do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
		return c.Zadd().Key(r.keys[2]).ScoreMember().ScoreMember(1, ghost).Build()
	})
	do(t, b, func(c valkeygo.Builder) valkeygo.Completed {
		return c.Zadd().Key(r.keys[3]).ScoreMember().ScoreMember(9e15, ghost).Build()
	})
	if err := holder.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	cl := b.c.nodes[0].client
	if v, err := cl.Do(testCtx(t), cl.B().Get().Key(r.keys[0]).Build()).ToString(); err != nil || v != ghost {
		t.Fatalf("after the release the lock holds %q (%v), want the waiter's id %q", v, err, ghost)
	}
	return r, ghost
}

// A waiter that stops waiting without taking the lock a release granted
// it gives the lock back as it leaves the queue.
func TestUntakenGrantGivenBack(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	name := "grant-untaken"
	r, ghost := grantToGhost(t, b, name)
	b.c.leave(testCtx(t), r, ghost)
	l, ok, err := b.TryLock(testCtx(t), name)
	if err != nil || !ok {
		t.Fatalf("the lock was not free after the granted waiter left: %v, %v", ok, err)
	}
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A waiter whose attempt finds the lock granted to it takes it over under
// the attempt's token (and does not queue again).
func TestAttemptTakesOverGrant(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	name := "grant-taken-over"
	r, ghost := grantToGhost(t, b, name)
	token := b.c.newToken()
	a, err := b.c.tryAs(testCtx(t), r, token, ghost)
	if err != nil || a.lease == nil {
		t.Fatalf("the granted waiter's attempt: %v, %v", a.lease, err)
	}
	if n := queueLen(t, b, kindMutex, name); n != 0 {
		t.Fatalf("the queue holds %d waiters", n)
	}
	cl := b.c.nodes[0].client
	if v, err := cl.Do(testCtx(t), cl.B().Get().Key(r.keys[0]).Build()).ToString(); err != nil || v != token {
		t.Fatalf("the lock holds %q (%v), want the attempt's token", v, err)
	}
	if err := a.lease.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// A mutex's release whose next waiter is another process's grants it the
// lock and publishes the grant (the waiter's id and the fencing token):
// the waiter takes it from the message, without an attempt of its own.
func TestReleaseGrantsRemoteWaiter(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	a := newTestBackend(t, t.TempDir(), addr)
	b := newTestBackendLike(t, a, addr)
	name := "grant-remote"
	base, _ := keyBase(a.c.cfg.prefix, name)
	msgs := subscribeMessages(t, addr, channel(base, kindMutex))
	for range 10 {
		holder := mustLock(t, a, name)
		got := lockAsync(testCtx(t), b, name)
		waitQueued(t, a, kindMutex, name, 1)
		time.Sleep(20 * time.Millisecond) // let the waiter subscribe
		if err := holder.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		l := <-got
		if l == nil {
			t.Fatal("the waiter failed")
		}
		var m string
		select {
		case m = <-msgs:
		case <-time.After(5 * time.Second):
			t.Fatal("the release was not announced")
		}
		if want := l.token + " " + strconv.FormatUint(l.Token(), 10); m != want || l.Token() <= holder.Token() {
			t.Fatalf("the release announced %q; the waiter's lease is %q (holder's token %d)", m, want, holder.Token())
		}
		if n := queueLen(t, a, kindMutex, name); n != 0 {
			t.Fatalf("the queue holds %d waiters after the hand-off", n)
		}
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
}

// subscribeMessages subscribes a connection of its own to ch and returns
// the messages published there (until the test ends).
func subscribeMessages(t *testing.T, addr, ch string) <-chan string {
	t.Helper()
	msgs := make(chan string, 8)
	dc, release := testClient(t, addr).Dedicate()
	t.Cleanup(release)
	dc.SetPubSubHooks(valkeygo.PubSubHooks{OnMessage: func(m valkeygo.PubSubMessage) { msgs <- m.Message }})
	if err := dc.Do(testCtx(t), dc.B().Subscribe().Channel(ch).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	return msgs
}
