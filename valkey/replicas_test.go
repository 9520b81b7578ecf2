//go:build unix

package valkey

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

func TestWithReplicasBadInput(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	c := testClient(t, addr)
	for _, opts := range [][]Option{
		{WithReplicas(0, time.Second)},
		{WithReplicas(-1, time.Second)},
		{WithReplicas(1, 0)},
		{WithReplicas(1, -time.Second)},
		{WithReplicas(1, 999*time.Microsecond)},
		{WithLease(time.Second), WithReplicas(1, time.Second)},                                  // not below the lease
		{WithLease(time.Second), WithReplicas(1, 990*time.Millisecond)},                         // not below lease - drift (12ms)
		{WithLease(time.Second), WithDriftAllowance(0), WithReplicas(1, 1000*time.Millisecond)}, // equal to the validity
		{WithLease(time.Second), WithReplicas(1, 400*time.Millisecond)},                         // above (1s - 12ms - 333ms) / 2
	} {
		if _, err := New(c, opts...); !errors.Is(err, backend.ErrInvalidOption) {
			t.Errorf("New with %d options: %v, want ErrInvalidOption", len(opts), err)
		}
		if _, err := NewRedLock([]valkeygo.Client{c}, opts...); !errors.Is(err, backend.ErrInvalidOption) {
			t.Errorf("NewRedLock with %d options: %v, want ErrInvalidOption", len(opts), err)
		}
	}
	b, err := New(c, WithLease(time.Second), WithReplicas(2, 300*time.Millisecond))
	if err != nil {
		t.Fatalf("a valid WithReplicas: %v", err)
	}
	_ = b.Close()
}

// sentinelReplicas returns the addresses of the replicas of the shared
// Sentinel group, as its first sentinel lists them.
func sentinelReplicas(t testing.TB, sentinels []string) []string {
	t.Helper()
	c := testClient(t, sentinels[0])
	rs, err := c.Do(testCtx(t), c.B().Arbitrary("SENTINEL", "REPLICAS").Args(sentinelMaster).Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		m, err := r.AsStrMap()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m["ip"]+":"+m["port"])
	}
	if len(out) < 2 {
		t.Fatalf("the shared Sentinel group lists %d replicas (%v); it has two", len(out), out)
	}
	return out
}

// onReplica reports whether the replica at addr has what records l.
func onReplica(t testing.TB, addr string, l *Lease) bool {
	t.Helper()
	c := testClient(t, addr)
	ctx := testCtx(t)
	if l.kind == kindRead || l.kind == kindSem {
		_, err := c.Do(ctx, c.B().Zscore().Key(l.rkeys[0]).Member(l.token).Build()).AsFloat64()
		if valkeygo.IsValkeyNil(err) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	}
	v, err := c.Do(ctx, c.B().Get().Key(l.rkeys[0]).Build()).ToString()
	if valkeygo.IsValkeyNil(err) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	tok, _, _ := strings.Cut(v, "{") // a mutex taken free holds its record after the token
	return tok == l.token
}

// With WithReplicas(2) on the shared group (two replicas), every kind of
// lock is on both replicas the moment it is held, and extensions go on.
func TestWithReplicasSentinel(t *testing.T) {
	sentinels := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_SENTINEL"))
	replicas := sentinelReplicas(t, sentinels)
	b, err := New(sentinelClient(t, sentinels), WithKeyPrefix(testPrefix(t.Name())), WithLease(3*time.Second),
		WithExtendEvery(300*time.Millisecond), WithReplicas(len(replicas), time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := testCtx(t)
	var leases []*Lease
	for _, k := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
		l := takeKind(t, b, k, "k-"+k.String())
		leases = append(leases, l)
		for _, r := range replicas {
			if !onReplica(t, r, l) {
				t.Errorf("%v held, but not on replica %s", k, r)
			}
		}
	}
	l, err := b.Lock(ctx, "waited")
	if err != nil {
		t.Fatal(err)
	}
	leases = append(leases, l)
	for _, r := range replicas {
		if !onReplica(t, r, l) {
			t.Errorf("a waited mutex held, but not on replica %s", r)
		}
	}
	time.Sleep(2500 * time.Millisecond) // several extensions, each confirmed
	for _, l := range leases {
		select {
		case <-l.Lost():
			t.Errorf("%v %q lost while its replicas confirm", l.kind, l.name)
		default:
		}
		if err := l.Release(ctx); err != nil {
			t.Errorf("release %v: %v", l.kind, err)
		}
	}
}

// More replicas asked for than there are: the acquisition fails cleanly
// (nothing stays held; the error says how many replicas confirmed and is
// not permanent, so a wait goes on trying until its ctx ends).
func TestWithReplicasTooFew(t *testing.T) {
	sentinels := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_SENTINEL"))
	c := sentinelClient(t, sentinels)
	prefix := WithKeyPrefix(testPrefix(t.Name()))
	b, err := New(c, prefix, WithLease(time.Second), WithReplicas(3, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	plain, err := New(c, prefix, WithLease(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	ctx := testCtx(t)
	for _, k := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
		var err error
		var ok bool
		name := "k-" + k.String()
		switch k {
		case kindMutex:
			_, ok, err = b.TryLock(ctx, name)
		case kindRead:
			_, ok, err = b.TryRLock(ctx, name)
		case kindWrite:
			_, ok, err = b.TryWLock(ctx, name)
		default:
			_, ok, err = b.TryAcquire(ctx, name, 1)
		}
		if ok || err == nil {
			t.Fatalf("%v with 3 replicas asked of 2: %v, %v", k, ok, err)
		}
		if !strings.Contains(err.Error(), "2 of 3 replicas confirmed") || backend.IsPermanent(err) {
			t.Errorf("%v: error %q (permanent %v); want one that says 2 of 3 replicas confirmed, not permanent", k, err, backend.IsPermanent(err))
		}
		// Released: a try without the option gets it at once (a
		// semaphore of limit 1: no ticket left behind).
		l := takeKind(t, plain, k, name)
		if k == kindSem {
			if _, ok, err := plain.TryAcquire(ctx, name, 2); err != nil || !ok {
				t.Errorf("a second ticket of a semaphore of limit 2 beside one: %v, %v (a ticket was left behind)", ok, err)
			}
		}
		_ = l.Release(ctx)
	}
	// A wait tries again until its ctx ends.
	wctx, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	defer cancel()
	_, err = dlock.NewMutex(b).Acquire(wctx, "waited")
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "replicas confirmed") {
		t.Errorf("a wait with too few replicas: %v; want ErrNotAcquired, the deadline and the replicas' count", err)
	}
}

// On a server without replicas, and on each node of a RedLock.
func TestWithReplicasNone(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b, err := New(testClient(t, addr), WithKeyPrefix(testPrefix(t.Name())), WithReplicas(1, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, ok, err := b.TryLock(testCtx(t), "x"); ok || err == nil || !strings.Contains(err.Error(), "0 of 1 replicas confirmed") {
		t.Errorf("TryLock without replicas: %v, %v; want 0 of 1 replicas confirmed", ok, err)
	}
	// A cluster (its masters have no replicas here): the touch and the
	// WAIT go to the node of the lock's slot, on one connection.
	cb, err := New(testClient(t, splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))...),
		WithKeyPrefix(testPrefix(t.Name())), WithReplicas(1, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	for _, name := range []string{"x", "y", "z"} {
		if _, ok, err := cb.TryLock(testCtx(t), name); ok || err == nil || !strings.Contains(err.Error(), "0 of 1 replicas confirmed") {
			t.Errorf("cluster TryLock %q without replicas: %v, %v; want 0 of 1 replicas confirmed", name, ok, err)
		}
	}
	nodes := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES"))
	r := newTestRedLock(t, t.Name(), nodes, WithReplicas(1, 20*time.Millisecond))
	_, ok, err := r.TryLock(testCtx(t), "x")
	if ok || err == nil || !strings.Contains(err.Error(), "confirmed by the replicas of 0 of 3 nodes, 2 needed") {
		t.Errorf("RedLock TryLock without replicas: %v, %v; want the replicas of 0 of 3 nodes", ok, err)
	}
	// Nothing left held on any node.
	plain := newTestRedLock(t, t.Name(), nodes)
	l := mustLock(t, plain, "x")
	_ = l.Release(testCtx(t))
}

// The suite's mutex subtests with WithReplicas(1) over the shared Sentinel
// group.
func TestConformanceSentinelReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("the conformance suite again, with WithReplicas")
	}
	sentinels := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_SENTINEL"))
	var clients []valkeygo.Client
	for range 3 {
		// No keep-alive pings: each would start a goroutine now and then
		// on every one of the many connections, which a subtest's leak
		// check could catch running.
		c := sentinelClient(t, sentinels, func(o *valkeygo.ClientOption) { o.Dialer.KeepAlive = -1 })
		warmUp(t, c)
		warmDedicated(t, c, 96)
		clients = append(clients, c)
	}
	// The mutex subtests: the option works the same for every kind (the
	// tests above check each kind's keys on the replicas), and the whole
	// suite for every kind would add a minute to CI's longest package.
	h := overClients(clients, WithReplicas(1, 400*time.Millisecond))
	newNode := h.New
	h.New = func(t testing.TB, space string) any { return mutexOnly{newNode(t, space).(*Backend)} }
	dlocktest.Run(t, h)
}

// mutexOnly offers only a Backend's mutex, so the suite runs only its
// mutex subtests.
type mutexOnly struct{ b *Backend }

func (m mutexOnly) TryLock(ctx context.Context, name string) (*Lease, bool, error) {
	return m.b.TryLock(ctx, name)
}

func (m mutexOnly) Lock(ctx context.Context, name string) (*Lease, error) {
	return m.b.Lock(ctx, name)
}

func (m mutexOnly) TryLockAll(ctx context.Context, names []string) ([]*Lease, int, error) {
	return m.b.TryLockAll(ctx, names)
}

func (m mutexOnly) DescribeLock(ctx context.Context, name string) ([]backend.Holder, error) {
	return m.b.DescribeLock(ctx, name)
}

// warmDedicated makes c open n dedicated connections at once (WithReplicas
// confirms on one each), which then wait in its pool, so that a subtest
// that confirms many acquisitions at once (Burst) finds them open rather
// than starting connection goroutines that outlive it.
func warmDedicated(t testing.TB, c valkeygo.Client, n int) {
	t.Helper()
	var wg sync.WaitGroup
	all := make(chan struct{})
	var ready sync.WaitGroup
	ready.Add(n)
	for range n {
		wg.Go(func() {
			called := false
			_ = c.Dedicated(func(d valkeygo.DedicatedClient) error {
				called = true
				// Two commands at once, as a confirmation sends: the
				// connection starts its background reader and writer now.
				var err error
				for _, r := range d.DoMulti(context.Background(), d.B().Ping().Build(), d.B().Ping().Build()) {
					err = errors.Join(err, r.Error())
				}
				ready.Done()
				<-all // hold it until all n are open
				return err
			})
			if !called {
				ready.Done()
			}
		})
	}
	ready.Wait()
	close(all)
	wg.Wait()
}
