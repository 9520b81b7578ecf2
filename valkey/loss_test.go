//go:build unix

package valkey

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/internal/testserver"
)

// lossLease is the lease of the key-deletion tests: extensions run every
// lossLease/3.
const lossLease = 600 * time.Millisecond

// takeKind takes a lease of kind k on name from b (a semaphore of limit
// 2).
func takeKind(t testing.TB, b *Backend, k kind, name string) *Lease {
	t.Helper()
	ctx := testCtx(t)
	var (
		l   *Lease
		ok  bool
		err error
	)
	switch k {
	case kindMutex:
		l, ok, err = b.TryLock(ctx, name)
	case kindRead:
		l, ok, err = b.TryRLock(ctx, name)
	case kindWrite:
		l, ok, err = b.TryWLock(ctx, name)
	default:
		l, ok, err = b.TryAcquire(ctx, name, 2)
	}
	if err != nil || !ok {
		t.Fatalf("taking %v %q: %v, %v", k, name, ok, err)
	}
	return l
}

// delKey deletes the whole key a lease of kind k is recorded in (the
// readers' or holders' sorted set, not only this lease's member), as an
// operator's DEL or FLUSHDB would.
func delKey(t testing.TB, b *Backend, base string, k kind) {
	t.Helper()
	c := b.c.nodes[0].client
	if err := c.Do(testCtx(t), c.B().Del().Key(heldKey(base, k)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
}

// lossBackends returns a backend over each deployment that has one
// server (standalone, cluster).
func lossBackends(t *testing.T) map[string]*Backend {
	out := map[string]*Backend{}
	space := t.TempDir()
	opts := []Option{WithKeyPrefix(testPrefix(space)), WithLease(lossLease)}
	mk := func(addrs ...string) *Backend {
		b, err := New(testClient(t, addrs...), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	out["single"] = mk(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR"))
	out["cluster"] = mk(splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))...)
	return out
}

// TestLossAfterKeyDeleted: when the key recording a lease is deleted
// (all of it: every reader, every ticket), each lease reports the loss at
// its next extension, within an extension period, and Release says the
// lock was lost — for readers and semaphore tickets as for mutexes and
// writers. Meanwhile others may take the lock: the deletion revoked it.
func TestLossAfterKeyDeleted(t *testing.T) {
	for dep, b := range lossBackends(t) {
		for _, k := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
			t.Run(fmt.Sprintf("%s/%v", dep, k), func(t *testing.T) {
				name := "keydel-" + k.String()
				base, _ := keyBase(b.c.cfg.prefix, name)
				var held []*Lease
				switch k {
				case kindRead, kindSem:
					held = []*Lease{takeKind(t, b, k, name), takeKind(t, b, k, name)}
				default:
					held = []*Lease{takeKind(t, b, k, name)}
				}
				delKey(t, b, base, k)
				t0 := time.Now()
				// The deletion revoked the lock: a newcomer may take it.
				next := takeKind(t, b, k, name)
				within := b.c.cfg.extendEvery + lossLease/3
				for i, l := range held {
					select {
					case <-l.Lost():
					case <-time.After(within - time.Since(t0)):
						t.Fatalf("lease %d: Lost() not closed within %v of the deletion", i, within)
					}
					if err := l.Release(testCtx(t)); !errors.Is(err, dlock.ErrLockLost) {
						t.Fatalf("lease %d: Release after the deletion = %v, want ErrLockLost", i, err)
					}
				}
				notLost(t, next)
				if err := next.Release(testCtx(t)); err != nil {
					t.Fatalf("the newcomer's Release: %v", err)
				}
			})
		}
	}
}

// TestReleaseAfterKeyDeleted: a lease released after its key was deleted
// but before an extension noticed returns ErrLockLost, and does not
// disturb a newcomer.
func TestReleaseAfterKeyDeleted(t *testing.T) {
	for dep, b := range lossBackends(t) {
		for _, k := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
			t.Run(fmt.Sprintf("%s/%v", dep, k), func(t *testing.T) {
				name := "keydel-rel-" + k.String()
				base, _ := keyBase(b.c.cfg.prefix, name)
				l := takeKind(t, b, k, name)
				delKey(t, b, base, k)
				next := takeKind(t, b, k, name)
				if err := l.Release(testCtx(t)); !errors.Is(err, dlock.ErrLockLost) {
					t.Fatalf("Release after the deletion = %v, want ErrLockLost", err)
				}
				notLost(t, next)
				if err := next.Release(testCtx(t)); err != nil {
					t.Fatalf("the newcomer's Release: %v", err)
				}
			})
		}
	}
}

// TestLossAfterMemberExpired: a reader or ticket whose score (its expiry
// on the server's clock) has passed is lost, even while its member is
// still in the set: the next extension reports it, and so does Release.
func TestLossAfterMemberExpired(t *testing.T) {
	for dep, b := range lossBackends(t) {
		for _, k := range []kind{kindRead, kindSem} {
			for _, how := range []string{"extension", "release"} {
				t.Run(fmt.Sprintf("%s/%v/%s", dep, k, how), func(t *testing.T) {
					name := "expired-" + k.String() + "-" + how
					base, _ := keyBase(b.c.cfg.prefix, name)
					l := takeKind(t, b, k, name)
					c := b.c.nodes[0].client
					// Score 1: expired long ago on any clock.
					if err := c.Do(testCtx(t), c.B().Zadd().Key(heldKey(base, k)).Xx().ScoreMember().ScoreMember(1, l.token).Build()).Error(); err != nil {
						t.Fatal(err)
					}
					if how == "extension" {
						waitLost(t, l, b.c.cfg.extendEvery+lossLease/3)
					}
					if err := l.Release(testCtx(t)); !errors.Is(err, dlock.ErrLockLost) {
						t.Fatalf("Release of an expired member = %v, want ErrLockLost", err)
					}
				})
			}
		}
	}
}

// TestFencingSurvivesRestart: a server restarted without persistence has
// forgotten its fencing counters, yet the next token of every kind is
// larger than every token before the restart (the counters start again
// from the server's clock).
func TestFencingSurvivesRestart(t *testing.T) {
	srv := testserver.StartRedis(t)
	b := newTestBackend(t, t.TempDir(), srv.Addr())
	ctx := testCtx(t)
	kinds := []kind{kindMutex, kindRead, kindWrite, kindSem}
	last := map[kind]uint64{}
	for range 3 {
		for _, k := range kinds {
			l := takeKind(t, b, k, "fence-restart")
			if l.Token() <= last[k] {
				t.Fatalf("%v: token %d after %d", k, l.Token(), last[k])
			}
			last[k] = l.Token()
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv.Restart()
	for _, k := range kinds {
		var l *Lease
		// The client reconnects to the restarted server.
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var ok bool
			var err error
			switch k {
			case kindMutex:
				l, ok, err = b.TryLock(ctx, "fence-restart")
			case kindRead:
				l, ok, err = b.TryRLock(ctx, "fence-restart")
			case kindWrite:
				l, ok, err = b.TryWLock(ctx, "fence-restart")
			default:
				l, ok, err = b.TryAcquire(ctx, "fence-restart", 2)
			}
			if err == nil && ok {
				break
			}
			if time.Now().After(end) {
				t.Fatalf("%v after the restart: %v, %v", k, ok, err)
			}
		}
		if l.Token() <= last[k] {
			t.Errorf("%v: token %d after the restart, %d before it", k, l.Token(), last[k])
		}
		// The client may still hold a connection the restart broke: a
		// release that fails on it is reported (the key then expires),
		// which is not what this test is about.
		if err := l.Release(ctx); err != nil {
			t.Logf("%v: release after the restart: %v", k, err)
		}
	}
}

// TestRedLockFencingSurvivesRestart: RedLock's tokens stay increasing when
// nodes restart without persistence — here a majority of them, so that no
// node of the next majority remembers the last token.
func TestRedLockFencingSurvivesRestart(t *testing.T) {
	srvs := []*testserver.Redis{testserver.StartRedis(t), testserver.StartRedis(t), testserver.StartRedis(t)}
	r := newTestRedLock(t, t.TempDir(), []string{srvs[0].Addr(), srvs[1].Addr(), srvs[2].Addr()})
	ctx := testCtx(t)
	var last uint64
	for range 3 {
		l := mustLock(t, r, "fence-restart")
		if l.Token() <= last {
			t.Fatalf("token %d after %d", l.Token(), last)
		}
		last = l.Token()
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	srvs[0].Restart()
	srvs[1].Restart()
	srvs[2].Stop() // the only node that remembers is gone
	var l *Lease
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var ok bool
		var err error
		if l, ok, err = r.TryLock(ctx, "fence-restart"); err == nil && ok {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("TryLock after the restart: %v, %v", ok, err)
		}
	}
	if l.Token() <= last {
		t.Errorf("token %d after the restart, %d before it", l.Token(), last)
	}
	if err := l.Release(ctx); err != nil { // see TestFencingSurvivesRestart
		t.Logf("release after the restart: %v", err)
	}
}

// TestReleaseHonoursDeadline: Release against a server that does not
// answer (stopped with SIGSTOP) returns by the caller's deadline when that
// is sooner than its own timeout, with an error.
func TestReleaseHonoursDeadline(t *testing.T) {
	srv := testserver.StartRedis(t)
	b := newTestBackend(t, t.TempDir(), srv.Addr())
	l := mustLock(t, b, "release-deadline")
	if err := srv.Process().Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process().Signal(syscall.SIGCONT) }()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	err := l.Release(ctx)
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("Release took %v with a 300ms deadline", d)
	}
	if err == nil {
		t.Fatal("Release against a stopped server succeeded")
	}
}

// TestReleasePastDeadlineSaysLost: a holder paused past its validity
// deadline resumes and releases before the extender has run: Release must
// say the lock was lost, whatever the release script finds (its key may
// have expired and been taken meanwhile).
func TestReleasePastDeadlineSaysLost(t *testing.T) {
	for dep, b := range lossBackends(t) {
		for _, k := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
			t.Run(fmt.Sprintf("%s/%v", dep, k), func(t *testing.T) {
				l := takeKind(t, b, k, "past-deadline-"+k.String())
				// What a pause past the lease does to the holder's view.
				b.c.ext.mu.Lock()
				l.setDeadline(time.Now().Add(-time.Millisecond))
				b.c.ext.mu.Unlock()
				if err := l.Release(testCtx(t)); !errors.Is(err, dlock.ErrLockLost) {
					t.Fatalf("Release past the validity deadline = %v, want ErrLockLost", err)
				}
				select {
				case <-l.Lost():
				default:
					t.Fatal("Lost() not closed after Release")
				}
			})
		}
	}
}

// TestPastDeadlineIsLost: a holder paused past its validity deadline
// resumes and asks, before the extender has run, whether it still holds
// (Lock.Err, Lost): the answer must be no at once (guarantee 5: its key may
// have expired and been taken), and stay no afterwards.
func TestPastDeadlineIsLost(t *testing.T) {
	for dep, b := range lossBackends(t) {
		for _, k := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
			for _, ask := range []string{"IsLost", "Lost"} {
				t.Run(fmt.Sprintf("%s/%v/%s", dep, k, ask), func(t *testing.T) {
					l := takeKind(t, b, k, "past-deadline-ask-"+k.String()+ask)
					b.c.ext.mu.Lock()
					l.setDeadline(time.Now().Add(-time.Millisecond))
					b.c.ext.mu.Unlock()
					switch ask {
					case "IsLost":
						if !l.IsLost() {
							t.Fatal("IsLost past the validity deadline = false, want true")
						}
					case "Lost":
						select {
						case <-l.Lost():
						default:
							t.Fatal("Lost() not closed past the validity deadline")
						}
					}
					// Long enough for the extender to have run.
					time.Sleep(2 * b.c.cfg.extendEvery)
					if !l.IsLost() {
						t.Fatal("the lease came back after it was declared lost")
					}
					if err := l.Release(testCtx(t)); !errors.Is(err, dlock.ErrLockLost) {
						t.Fatalf("Release of a lease declared lost = %v, want ErrLockLost", err)
					}
				})
			}
		}
	}
}
