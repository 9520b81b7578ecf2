//go:build unix

package valkey

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/testserver"
)

// Waits ride out server outages (issue 10, item 2): a backend's attempt
// returns the server's error (not marked backend.Permanent) and the dlock
// engine tries again until its ctx ends. These tests run the whole path,
// through dlock.NewMutex, against private redis-servers they stop and start
// again on the same port.

// outage is how long a server stays down in these tests.
const outage = time.Second

// acquireAsync starts Acquire of name on m with a 30s deadline; the result
// arrives on the returned channel.
func acquireAsync(m *dlock.Guard[*Lease], name string) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		t0 := time.Now()
		lk, err := m.Acquire(ctx, name)
		ch <- acquired{lk, err, time.Since(t0)}
	}()
	return ch
}

type acquired struct {
	lk  *dlock.Lock[*Lease]
	err error
	d   time.Duration
}

// mustAcquire waits for a's result and checks that it holds the lock.
func mustAcquire(t *testing.T, ch <-chan acquired) {
	t.Helper()
	var a acquired
	select {
	case a = <-ch:
	case <-time.After(40 * time.Second):
		t.Fatal("the waiter neither acquired nor failed within 40s")
	}
	if a.err != nil {
		t.Fatalf("the waiter failed after %v: %v", a.d, a.err)
	}
	t.Logf("the waiter acquired after %v", a.d)
	if err := a.lk.Release(context.Background()); err != nil {
		t.Logf("release: %v", err) // the server may have been restarted meanwhile
	}
}

// down stops srvs for d (in this goroutine), then starts them again on
// their ports, empty.
func down(t *testing.T, d time.Duration, srvs ...*testserver.Redis) {
	t.Helper()
	for _, s := range srvs {
		s.Stop()
	}
	time.Sleep(d)
	for _, s := range srvs {
		s.Start()
	}
}

// checkOutageError checks the error of a wait whose deadline came during
// an outage: it matches ErrNotAcquired and ctx.Err(), and wraps the
// server's error (a refused connection), and the wait used its deadline.
func checkOutageError(t *testing.T, err error, took, deadline time.Duration) {
	t.Helper()
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait during an outage = %v; want ErrNotAcquired and context.DeadlineExceeded", err)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("wait during an outage = %v; want it to wrap the server error (connection refused)", err)
	}
	if took < deadline/2 {
		t.Fatalf("wait during an outage ended after %v, before its deadline %v", took, deadline)
	}
	t.Logf("%v after %v", err, took)
}

func TestWaitRidesOutRestart(t *testing.T) {
	srv := testserver.StartRedis(t)
	space := t.TempDir()
	holder := newTestBackend(t, space, srv.Addr())
	waiter := newTestBackend(t, space, srv.Addr())
	mustLock(t, holder, "restart-wait")
	ch := acquireAsync(dlock.NewMutex(waiter), "restart-wait")
	time.Sleep(200 * time.Millisecond) // the waiter waits
	down(t, outage, srv)
	mustAcquire(t, ch)
}

func TestWaitServerDownAtStart(t *testing.T) {
	srv := testserver.StartRedis(t)
	b := newTestBackend(t, t.TempDir(), srv.Addr())
	srv.Stop()
	ch := acquireAsync(dlock.NewMutex(b), "down-at-start")
	time.Sleep(outage)
	srv.Start()
	mustAcquire(t, ch)
}

func TestWaitOutageOutlastsDeadline(t *testing.T) {
	srv := testserver.StartRedis(t)
	b := newTestBackend(t, t.TempDir(), srv.Addr())
	srv.Stop()
	const deadline = 700 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	t0 := time.Now()
	_, err := dlock.NewMutex(b).Acquire(ctx, "outlasts")
	checkOutageError(t, err, time.Since(t0), deadline)

	// A try reports the server's error at once, not marked permanent.
	_, ok, err := b.TryLock(context.Background(), "outlasts")
	if ok || err == nil || !errors.Is(err, syscall.ECONNREFUSED) || backend.IsPermanent(err) {
		t.Fatalf("TryLock with the server down = %v, %v; want a transient connection-refused error", ok, err)
	}
}

func startServers(t *testing.T, n int) ([]*testserver.Redis, []string) {
	var srvs []*testserver.Redis
	var addrs []string
	for range n {
		s := testserver.StartRedis(t)
		srvs = append(srvs, s)
		addrs = append(addrs, s.Addr())
	}
	return srvs, addrs
}

func TestRedLockWaitOneNodeDown(t *testing.T) {
	srvs, addrs := startServers(t, 3)
	space := t.TempDir()
	holder := newTestRedLock(t, space, addrs)
	waiter := newTestRedLock(t, space, addrs)
	l := mustLock(t, holder, "one-down-wait")
	ch := acquireAsync(dlock.NewMutex(waiter), "one-down-wait")
	time.Sleep(200 * time.Millisecond)
	srvs[0].Stop()
	time.Sleep(300 * time.Millisecond)
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatalf("release with one node down: %v", err)
	}
	mustAcquire(t, ch) // on the two nodes left
	srvs[0].Start()
}

func TestRedLockWaitMajorityDown(t *testing.T) {
	srvs, addrs := startServers(t, 3)
	space := t.TempDir()
	holder := newTestRedLock(t, space, addrs)
	waiter := newTestRedLock(t, space, addrs)
	mustLock(t, holder, "majority-down-wait")
	ch := acquireAsync(dlock.NewMutex(waiter), "majority-down-wait")
	time.Sleep(200 * time.Millisecond)
	// The two restarted nodes come back empty: a majority is free.
	down(t, outage, srvs[0], srvs[1])
	mustAcquire(t, ch)

	// A majority down for longer than the wait's deadline.
	srvs[0].Stop()
	srvs[1].Stop()
	const deadline = 700 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	t0 := time.Now()
	_, err := dlock.NewMutex(waiter).Acquire(ctx, "majority-down-outlasts")
	checkOutageError(t, err, time.Since(t0), deadline)
	for _, a := range addrs[:2] {
		if !strings.Contains(err.Error(), a) {
			t.Errorf("error %q does not name the node %s that is down", err, a)
		}
	}
}

// TestReleaseTimeoutBound: a Release against a server that stopped
// answering (SIGSTOP) ends by the Guard's release timeout, whether shorter
// or longer than the backend's own fallback (5s), within ±50%.
//
// In the "redial" case the release's connection was killed before the
// server stopped: valkey-go dials a new one, and its handshake gives up
// after valkey-go's own dial timeout (5s); the release must try again
// until its 8s.
func TestReleaseTimeoutBound(t *testing.T) {
	for _, tc := range []struct {
		d      time.Duration
		redial bool
	}{{100 * time.Millisecond, false}, {8 * time.Second, false}, {8 * time.Second, true}} {
		d := tc.d
		name := d.String()
		if tc.redial {
			name += "-redial"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := testserver.StartRedis(t)
			b := newTestBackend(t, t.TempDir(), srv.Addr())
			m := dlock.NewMutex(b, dlock.WithReleaseTimeout(d))
			// A 100ms bound is tight for a loaded machine: a scheduling
			// delay may push one release past it, but a release that
			// ignores the bound misses it every time.
			tries := 1
			if d < time.Second {
				tries = 3
			}
			var took time.Duration
			for i := range tries {
				lk, err := m.TryAcquire(testCtx(t), "release-bound-"+strings.Repeat("x", i))
				if err != nil {
					t.Fatal(err)
				}
				if tc.redial {
					admin := testClient(t, srv.Addr())
					_ = admin.Do(testCtx(t), admin.B().ClientKill().TypeNormal().Build()).Error()
				}
				if err := srv.Process().Signal(syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				t0 := time.Now()
				err = lk.Release(context.Background())
				took = time.Since(t0)
				_ = srv.Process().Signal(syscall.SIGCONT)
				if err == nil {
					t.Fatal("Release against a stopped server succeeded")
				}
				t.Logf("release took %v: %v", took, err)
				// A stopped server never answers: the release cannot end
				// before its timeout (a backend that caps it at its own 5s
				// fails here for 8s).
				if took < d*9/10 {
					t.Fatalf("Release returned after %v, before its timeout %v: it cannot have heard from a stopped server", took, d)
				}
				if took <= d*3/2 {
					return
				}
			}
			t.Fatalf("Release with timeout %v took %v", d, took)
		})
	}
}

// requirePass makes srv require a password and drops its clients, which
// reconnect without one.
func requirePass(t *testing.T, srv *testserver.Redis) {
	t.Helper()
	c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)
	if err := c.Do(ctx, c.B().ConfigSet().ParameterValue().ParameterValue("requirepass", "s3cret").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	_ = c.Do(ctx, c.B().ClientKill().TypeNormal().Build()).Error()
}

func TestAuthFailureIsPermanent(t *testing.T) {
	srv := testserver.StartRedis(t)
	b := newTestBackend(t, t.TempDir(), srv.Addr())
	requirePass(t, srv)
	// The first attempt may meet the killed connection (EOF, transient).
	var (
		ok  bool
		err error
	)
	for range 20 {
		if _, ok, err = b.TryLock(testCtx(t), "auth"); ok || isAuthErr(err) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ok || !backend.IsPermanent(err) || !isAuthErr(err) {
		t.Fatalf("TryLock refused authentication = %v, %v; want a permanent authentication error", ok, err)
	}
	t.Log(err)
	// A wait ends at once.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	if _, err := dlock.NewMutex(b).Acquire(ctx, "auth"); err == nil || !isAuthErr(err) {
		t.Fatalf("Acquire refused authentication = %v; want the authentication error", err)
	}
	if d := time.Since(t0); d > 10*time.Second {
		t.Fatalf("Acquire refused authentication took %v; want it to end at once", d)
	}
}

func TestRedLockAuthFailure(t *testing.T) {
	srvs, addrs := startServers(t, 3)
	var clients []valkeygo.Client
	for _, a := range addrs {
		clients = append(clients, testClient(t, a))
	}
	var logs testserver.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := NewRedLock(clients, append(testOpts(t.TempDir()), WithLogger(logger))...)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := testCtx(t)

	// One node refuses authentication: the others make a majority.
	requirePass(t, srvs[2])
	l := mustLock(t, r, "auth-one")
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// And one node down too: no majority; the error names both nodes, and
	// it is not permanent (the node that is down may come back).
	srvs[1].Stop()
	var ok bool
	for range 20 { // a connection in use when it broke says EOF first
		if _, ok, err = r.TryLock(ctx, "auth-two"); ok || isAuthErr(err) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ok || err == nil || !strings.Contains(err.Error(), addrs[2]) || !strings.Contains(err.Error(), addrs[1]) || !isAuthErr(err) {
		t.Fatalf("TryLock without a majority = %v, %v; want an error naming nodes %s and %s", ok, err, addrs[1], addrs[2])
	}
	if backend.IsPermanent(err) {
		t.Fatalf("error marked permanent with only one node refusing authentication: %v", err)
	}
	t.Log(err)
	if !strings.Contains(logs.String(), addrs[2]) || !strings.Contains(logs.String(), "refuses authentication") {
		t.Fatalf("the node refusing authentication was not logged by name; log:\n%s", logs.String())
	}

	// Two nodes refuse authentication: no majority is possible any more.
	srvs[1].Start()
	requirePass(t, srvs[1])
	for range 20 { // the first attempt may meet the killed connection (EOF)
		if _, ok, err = r.TryLock(ctx, "auth-three"); ok || backend.IsPermanent(err) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ok || !backend.IsPermanent(err) {
		t.Fatalf("TryLock with a majority refusing authentication = %v, %v; want a permanent error", ok, err)
	}
	t.Log(err)
}

func TestNewRedLockRefusesSharedNodes(t *testing.T) {
	_, addrs := startServers(t, 2)
	a, b := testClient(t, addrs[0]), testClient(t, addrs[1])
	a2 := testClient(t, addrs[0])
	for _, tc := range []struct {
		name    string
		clients []valkeygo.Client
		want    string
	}{
		{"same client thrice", []valkeygo.Client{a, a, a}, "same client"},
		{"same client twice", []valkeygo.Client{a, b, a}, "clients 0 and 2 are the same client"},
		{"two clients, one address", []valkeygo.Client{a, b, a2}, "clients 0 and 2 both talk to " + addrs[0]},
		{"nil client", []valkeygo.Client{a, nil, b}, "client 1 is nil"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRedLock(tc.clients)
			if err == nil {
				r.Close()
				t.Fatal("NewRedLock accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewRedLock = %v; want an error saying %q", err, tc.want)
			}
		})
	}
	r, err := NewRedLock([]valkeygo.Client{a, b})
	if err != nil {
		t.Fatalf("NewRedLock over two distinct nodes: %v", err)
	}
	r.Close()
}

// TestReleaseAfterRestartSaysLost: a server restarted without persistence
// forgot the lease, and another holder took the lock at once; the first
// holder's Release, before its extender could notice, finds the key owned
// by another token and says ErrLockLost, and so does Err (issue 10, item
// 3).
func TestReleaseAfterRestartSaysLost(t *testing.T) {
	srv := testserver.StartRedis(t)
	space := t.TempDir()
	a, b := newTestBackend(t, space, srv.Addr()), newTestBackend(t, space, srv.Addr())
	// Extensions every 10 minutes: only the release can find out.
	ma, err := New(a.c.nodes[0].client, WithKeyPrefix(testPrefix(space)), WithLease(time.Hour), WithExtendEvery(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer ma.Close()
	ctx := testCtx(t)
	lk, err := dlock.NewMutex(ma).TryAcquire(ctx, "restart-release")
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	var other *Lease
	for range 50 { // the first attempt may meet the broken connection
		var ok bool
		if other, ok, err = b.TryLock(ctx, "restart-release"); ok {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if other == nil {
		t.Fatalf("the second holder could not take the lock after the restart: %v", err)
	}
	defer other.Release(ctx)
	if err := lk.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release after the lock passed to another holder = %v; want ErrLockLost", err)
	}
	if err := lk.Err(); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Err after such a Release = %v; want ErrLockLost", err)
	}
	notLost(t, other)
}
