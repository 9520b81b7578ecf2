package valkey

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

// multiKinds are the composite tries of a Backend, with the single try
// that takes one name of the same kind.
var multiKinds = []struct {
	k   kind
	all func(b *Backend, ctx context.Context, names []string) ([]*Lease, int, error)
	one func(b *Backend, ctx context.Context, name string) (*Lease, bool, error)
}{
	{kindMutex, (*Backend).TryLockAll, (*Backend).TryLock},
	{kindRead, (*Backend).TryRLockAll, (*Backend).TryRLock},
	{kindWrite, (*Backend).TryWLockAll, (*Backend).TryWLock},
	{kindSem, func(b *Backend, ctx context.Context, names []string) ([]*Lease, int, error) {
		return b.TryAcquireAll(ctx, names, 1)
	}, func(b *Backend, ctx context.Context, name string) (*Lease, bool, error) {
		return b.TryAcquire(ctx, name, 1)
	}},
}

// conflicting returns the single try that a lease of kind k excludes (a
// reader: a writer).
func conflicting(k kind) kind {
	if k == kindRead {
		return kindWrite
	}
	return k
}

func oneOf(k kind) func(b *Backend, ctx context.Context, name string) (*Lease, bool, error) {
	for _, m := range multiKinds {
		if m.k == k {
			return m.one
		}
	}
	return nil
}

// TestTryAll checks the composite tries on one node, for every kind: all
// or none (a busy name, or a free name with a live waiter queued, fails
// the set and takes nothing, busy naming it); each lease has its own
// increasing fencing token and holder record, is released, extended and
// lost on its own.
func TestTryAll(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	cl := testClient(t, addr)
	space := t.TempDir()
	a, b := newTestBackend(t, space, addr), newTestBackend(t, space, addr)
	for _, m := range multiKinds {
		t.Run(m.k.String(), func(t *testing.T) {
			ctx := backend.ContextWithOwner(testCtx(t), "set")
			names := []string{"all:" + t.Name() + ":a", "all:" + t.Name() + ":b", "all:" + t.Name() + ":c"}
			excl := oneOf(conflicting(m.k))
			// Busy: the second name held elsewhere.
			blocker, ok, err := excl(a, ctx, names[1])
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			ls, busy, err := m.all(b, ctx, names)
			if err != nil || ls != nil || busy != 1 {
				t.Fatalf("with %q held: %v, busy %d, %v; want busy 1", names[1], ls, busy, err)
			}
			for _, n := range []string{names[0], names[2]} {
				l, ok, err := excl(a, ctx, n)
				if err != nil || !ok {
					t.Fatalf("%q after a failed set: %v %v (the set took it)", n, ok, err)
				}
				_ = l.Release(ctx)
			}
			_ = blocker.Release(ctx)
			// A free name with a live waiter queued: busy too (a try does
			// not jump the queue).
			base, _ := keyBase(b.c.cfg.prefix, names[2])
			q, d := queueKeys(base, m.k)
			w := queueMember(conflicting(m.k), "somebody")
			if err := cl.Do(ctx, cl.B().Zadd().Key(d).ScoreMember().ScoreMember(float64(time.Now().Add(time.Minute).UnixMilli()), w).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			if err := cl.Do(ctx, cl.B().Zadd().Key(q).ScoreMember().ScoreMember(1, w).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			if ls, busy, err := m.all(b, ctx, names); err != nil || ls != nil || busy != 2 {
				t.Fatalf("with a waiter queued on %q: %v, busy %d, %v; want busy 2", names[2], ls, busy, err)
			}
			if err := cl.Do(ctx, cl.B().Del().Key(q).Key(d).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			// Free: all taken, each its own lease.
			ls, busy, err = m.all(b, ctx, names)
			if err != nil || busy != -1 || len(ls) != 3 {
				t.Fatalf("free set: %v, busy %d, %v", ls, busy, err)
			}
			for i, l := range ls {
				if l.Name() != names[i] || l.Token() == 0 {
					t.Fatalf("lease %d: name %q token %d", i, l.Name(), l.Token())
				}
				if _, ok, err := excl(a, ctx, names[i]); ok || err != nil {
					t.Fatalf("%q is not held after the set: %v %v", names[i], ok, err)
				}
				if hs, err := describeOf(b, m.k, ctx, names[i]); err != nil || len(hs) != 1 || hs[0].Owner != "set" {
					t.Fatalf("holders of %q: %+v %v", names[i], hs, err)
				}
			}
			// Extended on their own past the lease; a single try after them
			// gets a larger token.
			time.Sleep(testLease + testLease/2)
			if err := ls[0].Release(ctx); err != nil {
				t.Fatalf("release of the first after a lease: %v", err)
			}
			l, ok, err := m.one(a, ctx, names[0])
			if err != nil || !ok || l.Token() <= ls[0].Token() {
				t.Fatalf("after the release of the first: %v %v, token %v after %d", ok, err, l, ls[0].Token())
			}
			_ = l.Release(ctx)
			// Lost on its own: the second's record deleted.
			loseLease(t, ls[1])
			select {
			case <-ls[1].Lost():
			case <-time.After(5 * time.Second):
				t.Fatal("the second lease was not reported lost")
			}
			select {
			case <-ls[2].Lost():
				t.Fatal("the third lease was lost with the second")
			default:
			}
			if err := ls[2].Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func describeOf(b *Backend, k kind, ctx context.Context, name string) ([]backend.Holder, error) {
	switch k {
	case kindMutex:
		return b.DescribeLock(ctx, name)
	case kindSem:
		return b.DescribeSemaphore(ctx, name, 1)
	}
	return b.DescribeRW(ctx, name)
}

// TestTryAllBadInput checks the composite tries' errors on bad input.
func TestTryAllBadInput(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	ctx := testCtx(t)
	if _, _, err := b.TryLockAll(ctx, []string{"a", ""}); !errors.Is(err, backend.ErrInvalidName) {
		t.Errorf("an empty name: %v", err)
	}
	if _, _, err := b.TryAcquireAll(ctx, []string{"a", "b"}, 0); !errors.Is(err, backend.ErrInvalidLimit) {
		t.Errorf("limit 0: %v", err)
	}
	// A key of the wrong type fails the set, which holds nothing after.
	c := b.c.nodes[0].client
	base, _ := keyBase(b.c.cfg.prefix, "wrongtype:b")
	fence := mutexKeys(base)[1]
	if err := c.Do(ctx, c.B().Hset().Key(fence).FieldValue().FieldValue("x", "y").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if ls, _, err := b.TryLockAll(ctx, []string{"wrongtype:a", "wrongtype:b"}); err == nil || !strings.Contains(err.Error(), "wrong type") {
		t.Fatalf("a fencing counter of the wrong type: %v, %v", ls, err)
	}
	mustLock(t, b, "wrongtype:a")
	_ = b.Close()
	if _, _, err := b.TryWLockAll(ctx, []string{"a", "b"}); !errors.Is(err, backend.ErrClosed) {
		t.Errorf("closed: %v", err)
	}
}

// sameSlotNames returns n names whose keys share one cluster slot, the
// first being prefix.
func sameSlotNames(prefix string, n int) []string {
	want := hashSlot(prefix)
	out := []string{prefix}
	for i := 0; len(out) < n; i++ {
		name := prefix + ":" + strconv.Itoa(i)
		if hashSlot(name) == want { // (plain names: the tag is the name)
			out = append(out, name)
		}
	}
	return out
}

// TestTryAllCluster checks the composite tries on a cluster: names whose
// keys are in several slots return errors.ErrUnsupported and take
// nothing; names in one slot are taken atomically. And hashSlot agrees
// with the server.
func TestTryAllCluster(t *testing.T) {
	seeds := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	c := testClient(t, seeds...)
	ctx := testCtx(t)
	b, err := New(c, testOpts(t.TempDir())...)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, name := range []string{"x", "{a}b", "é~%", strings.Repeat("z", 300)} {
		base, _ := keyBase(DefaultKeyPrefix, name)
		s, err := c.Do(ctx, c.B().ClusterKeyslot().Key(base).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		if got := hashSlot(base[len(DefaultKeyPrefix)+1 : len(base)-2]); int64(got) != s {
			t.Fatalf("hashSlot of %q: %d, server says %d", name, got, s)
		}
	}
	prefix := "cluster-all-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	names := sameSlotNames(prefix, 3)
	other := prefix + ":x"
	for hashSlot(other) == hashSlot(prefix) {
		other += "x"
	}
	for _, m := range multiKinds {
		cross := []string{names[0], other}
		if ls, _, err := m.all(b, ctx, cross); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("%s: names in two slots: %v, %v; want errors.ErrUnsupported", m.k, ls, err)
		}
		for _, n := range cross {
			l, ok, err := oneOf(conflicting(m.k))(b, ctx, n)
			if err != nil || !ok {
				t.Fatalf("%s: %q held after an unsupported set: %v %v", m.k, n, ok, err)
			}
			_ = l.Release(ctx)
		}
		ls, busy, err := m.all(b, ctx, names)
		if err != nil || busy != -1 || len(ls) != len(names) {
			t.Fatalf("%s: names in one slot: %v, %d, %v", m.k, ls, busy, err)
		}
		for _, l := range ls {
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
}
