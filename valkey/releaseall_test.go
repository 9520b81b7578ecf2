package valkey

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

// waitOf returns the waiting acquisition that a lease of kind k excludes
// (a reader: a writer; a semaphore: a ticket of limit 1).
func waitOf(k kind) func(b *Backend, ctx context.Context, name string) (*Lease, error) {
	switch k {
	case kindMutex:
		return (*Backend).Lock
	case kindSem:
		return func(b *Backend, ctx context.Context, name string) (*Lease, error) { return b.Acquire(ctx, name, 1) }
	}
	return (*Backend).WLock
}

// TestReleaseAll checks ReleaseAll on one node and on a cluster (names in
// one slot: one script; in several: one by one), for every kind: each
// lease is released as Release would (its lock free again, its holder
// record gone), a lease lost before (its key deleted) gets an error
// wrapping ErrLockLost and the others none, waiters queued on the names —
// one in the releaser's process, one in another — are woken or granted
// the lock, and a second ReleaseAll answers ErrNotHeld for each.
func TestReleaseAll(t *testing.T) {
	single := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	seeds := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	for _, tc := range []struct {
		name  string
		addrs []string
		slots int // 1: names in one slot (cluster); 2: in several
	}{{"single", []string{single}, 0}, {"cluster-one-slot", seeds, 1}, {"cluster-slots", seeds, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			space := t.TempDir()
			a, b := newTestBackend(t, space, tc.addrs...), newTestBackend(t, space, tc.addrs...)
			for _, m := range multiKinds {
				t.Run(m.k.String(), func(t *testing.T) {
					ctx := backend.ContextWithOwner(testCtx(t), "set")
					prefix := "relall-" + tc.name + "-" + strconv.Itoa(int(m.k)) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
					names := sameSlotNames(prefix, 4)
					var ls []*Lease
					if tc.slots == 2 {
						names = []string{prefix + ":a", prefix + ":b", prefix + ":c", prefix + ":d"}
						if hashSlot(names[0]) == hashSlot(names[1]) {
							t.Fatal("the names' slots are the same")
						}
						for _, n := range names {
							l, ok, err := m.one(b, ctx, n)
							if err != nil || !ok {
								t.Fatal(n, ok, err)
							}
							ls = append(ls, l)
						}
					} else {
						var busy int
						var err error
						if ls, busy, err = m.all(b, ctx, names); err != nil || busy != -1 {
							t.Fatal(busy, err)
						}
					}
					loseLease(t, ls[1])
					// Waiters: on names[0] in the releaser's process, on
					// names[2] in another.
					wait := waitOf(conflicting(m.k))
					type got struct {
						l   *Lease
						err error
					}
					woken := make(chan got, 2)
					for _, w := range []struct {
						b *Backend
						i int
					}{{b, 0}, {a, 2}} {
						go func() {
							l, err := wait(w.b, ctx, names[w.i])
							woken <- got{l, err}
						}()
						q := ls[w.i].rkeys[1]
						for {
							n, err := b.c.nodes[0].client.Do(ctx, b.c.nodes[0].client.B().Zcard().Key(q).Build()).AsInt64()
							if err != nil {
								t.Fatal(err)
							}
							if n > 0 {
								break
							}
							time.Sleep(time.Millisecond)
						}
					}
					rev := []*Lease{ls[3], ls[2], ls[1], ls[0]}
					errs := b.ReleaseAll(ctx, rev)
					if len(errs) != len(rev) {
						t.Fatalf("%d errors for %d leases", len(errs), len(rev))
					}
					for i, err := range errs {
						if lost := rev[i] == ls[1]; lost != errors.Is(err, backend.ErrLockLost) || !lost && err != nil {
							t.Errorf("lease of %q (lost: %v): %v", rev[i].name, lost, err)
						}
						select {
						case <-rev[i].Lost():
						default:
							t.Errorf("lease of %q: Lost not closed after ReleaseAll", rev[i].name)
						}
					}
					for range 2 {
						select {
						case g := <-woken:
							if g.err != nil {
								t.Fatal("waiter:", g.err)
							}
							if err := g.l.Release(ctx); err != nil {
								t.Fatal("waiter's release:", err)
							}
						case <-time.After(10 * time.Second):
							t.Fatal("a waiter was not woken by ReleaseAll")
						}
					}
					for _, n := range names {
						l, ok, err := oneOf(conflicting(m.k))(a, ctx, n)
						if err != nil || !ok {
							t.Fatalf("%q after ReleaseAll: %v %v", n, ok, err)
						}
						hs, err := describeOf(a, conflicting(m.k), ctx, n)
						if err != nil || len(hs) != 1 {
							t.Fatalf("%q's holders after ReleaseAll and a new lease: %v %v", n, hs, err)
						}
						_ = l.Release(ctx)
					}
					for i, err := range b.ReleaseAll(ctx, rev) {
						if !errors.Is(err, backend.ErrNotHeld) {
							t.Errorf("lease of %q released twice: %v", rev[i].name, err)
						}
					}
				})
			}
		})
	}
}

// TestReleaseAllWrongType checks that a lease whose key a foreign value
// replaced gets the server's error from ReleaseAll, and that the script
// releases the other leases all the same.
func TestReleaseAllWrongType(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	cl := b.c.nodes[0].client
	for _, m := range multiKinds {
		t.Run(m.k.String(), func(t *testing.T) {
			ctx := testCtx(t)
			names := []string{"relall-wt:" + t.Name() + ":a", "relall-wt:" + t.Name() + ":b", "relall-wt:" + t.Name() + ":c"}
			ls, busy, err := m.all(b, ctx, names)
			if err != nil || busy != -1 {
				t.Fatal(busy, err)
			}
			key := ls[1].rkeys[0]
			if err := cl.Do(ctx, cl.B().Del().Key(key).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			if err := cl.Do(ctx, cl.B().Hset().Key(key).FieldValue().FieldValue("x", "y").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			defer cl.Do(context.WithoutCancel(ctx), cl.B().Del().Key(key).Build())
			errs := b.ReleaseAll(ctx, ls)
			if errs[0] != nil || errs[2] != nil || !wrongType(errs[1]) {
				t.Fatalf("errors %v; want nil, WRONGTYPE, nil", errs)
			}
			for _, n := range []string{names[0], names[2]} {
				l, ok, err := oneOf(conflicting(m.k))(b, ctx, n)
				if err != nil || !ok {
					t.Fatalf("%q after ReleaseAll: %v %v", n, ok, err)
				}
				_ = l.Release(ctx)
			}
		})
	}
}

// TestReleaseAllRedLock checks a RedLock's ReleaseAll (one lease after
// another): the lost lease's error wraps ErrLockLost, the others are
// released, and every lock is free again.
func TestReleaseAllRedLock(t *testing.T) {
	addrs := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES"))
	r := newTestRedLock(t, t.TempDir(), addrs)
	ctx := testCtx(t)
	names := []string{"relall-rl:a", "relall-rl:b", "relall-rl:c"}
	var ls []*Lease
	for _, n := range names {
		l, ok, err := r.TryLock(ctx, n)
		if err != nil || !ok {
			t.Fatal(n, ok, err)
		}
		ls = append(ls, l)
	}
	loseLease(t, ls[1])
	errs := r.ReleaseAll(ctx, ls)
	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], backend.ErrLockLost) {
		t.Fatalf("errors %v; want nil, ErrLockLost, nil", errs)
	}
	for _, n := range names {
		l, ok, err := r.TryLock(ctx, n)
		if err != nil || !ok {
			t.Fatalf("%q after ReleaseAll: %v %v", n, ok, err)
		}
		_ = l.Release(ctx)
	}
}

// TestReleaseAllForeignLease: a lease of another Backend given to
// ReleaseAll is released (by its own Release), not left held, and a nil
// one is an error, not a panic.
func TestReleaseAllForeignLease(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	space := t.TempDir()
	a, b := newTestBackend(t, space, addr), newTestBackend(t, space, addr)
	ctx := testCtx(t)
	name := "relall-foreign-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	mine, ok, err := a.TryLock(ctx, name+":a")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	foreign, ok, err := b.TryLock(ctx, name+":b")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	errs := a.ReleaseAll(ctx, []*Lease{mine, foreign, nil})
	if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], backend.ErrNotHeld) {
		t.Fatalf("ReleaseAll(mine, foreign, nil): %v", errs)
	}
	for _, n := range []string{name + ":a", name + ":b"} {
		l, ok, err := a.TryLock(ctx, n)
		if err != nil || !ok {
			t.Fatalf("%s still held after ReleaseAll: %v, %v", n, ok, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
