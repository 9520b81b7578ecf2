package valkey

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/internal/holder"
)

// holderRecords returns the holder records of the lock name of kind k
// (token -> record), and their PTTL: the fields of the hash, and a
// mutex's record kept in its lock's value (see luaOwner), whose PTTL is
// the lock's when the hash is empty.
func holderRecords(t *testing.T, c valkeygo.Client, b *Backend, k kind, name string) (map[string]string, int64) {
	t.Helper()
	_, keys, _, err := lockStrings(nil, b.c.cfg.prefix, name, k)
	if err != nil {
		t.Fatal(err)
	}
	h := holdersKey(keys, k)
	m, err := c.Do(testCtx(t), c.B().Hgetall().Key(h).Build()).AsStrMap()
	if err != nil {
		t.Fatal(err)
	}
	pttl, err := c.Do(testCtx(t), c.B().Pttl().Key(h).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if k == kindMutex {
		if tok, rec, ok := strings.Cut(lockValue(t, c, keys[0]), "{"); ok {
			if len(m) == 0 {
				if pttl, err = c.Do(testCtx(t), c.B().Pttl().Key(keys[0]).Build()).AsInt64(); err != nil {
					t.Fatal(err)
				}
			}
			m[tok] = "{" + rec
		}
	}
	return m, pttl
}

// lockValue returns the value of the string key key ("" when it does not
// exist).
func lockValue(t *testing.T, c valkeygo.Client, key string) string {
	t.Helper()
	v, err := c.Do(testCtx(t), c.B().Get().Key(key).Build()).ToString()
	if valkeygo.IsValkeyNil(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestHolderRecordInLockValue checks that a mutex taken free with nobody
// waiting keeps its holder record in the lock's value, after its token,
// and writes no hash: describing reads it there, extending and releasing
// the lease recognise it as their own, and the release deletes it with
// the lock. A lease of the same lock taken while another waits keeps its
// record in the hash (TestHolderRecordGranted).
func TestHolderRecordInLockValue(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	cl := testClient(t, addr)
	b := newTestBackend(t, t.TempDir(), addr)
	name := "holders:in-value"
	_, keys, _, err := lockStrings(nil, b.c.cfg.prefix, name, kindMutex)
	if err != nil {
		t.Fatal(err)
	}
	ctx := backend.ContextWithOwner(testCtx(t), "owner {with braces}")
	l, ok, err := b.TryLock(ctx, name)
	if err != nil || !ok {
		t.Fatalf("try: %v %v", ok, err)
	}
	tok, rec, folded := strings.Cut(lockValue(t, cl, keys[0]), "{")
	if !folded || tok != l.token {
		t.Fatalf("the lock's value is %q + %q, want the token %q and its record", tok, rec, l.token)
	}
	hd, err := holder.Decode([]byte("{" + rec))
	if err != nil || hd.Owner != "owner {with braces}" || hd.PID != os.Getpid() {
		t.Fatalf("the record in the value: %+v, %v", hd, err)
	}
	if n, err := cl.Do(testCtx(t), cl.B().Exists().Key(holdersKey(keys, kindMutex)).Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("the holders' hash exists (%d, %v): the record should be in the value only", n, err)
	}
	hs, err := b.DescribeLock(testCtx(t), name)
	if err != nil || len(hs) != 1 || hs[0].Owner != "owner {with braces}" || hs[0].PID != os.Getpid() || hs[0].Since.IsZero() {
		t.Fatalf("describe: %+v, %v", hs, err)
	}
	ext := l.extendCall()
	if n, err := ext.s.exec(testCtx(t), cl, ext.keys, ext.args).AsInt64(); err != nil || n != 1 {
		t.Fatalf("extension of the lease: %d, %v; want 1 (owned)", n, err)
	}
	if err := l.Release(testCtx(t)); err != nil {
		t.Fatalf("release: %v", err)
	}
	if v := lockValue(t, cl, keys[0]); v != "" {
		t.Fatalf("the lock holds %q after the release", v)
	}
	if hs, err := b.DescribeLock(testCtx(t), name); err != nil || len(hs) != 0 {
		t.Fatalf("describe after the release: %+v, %v", hs, err)
	}
}

// TestHolderRecords checks the life of holder records on one node, for
// every kind: written by the acquisition (with this process and the owner
// text), expiring with the lease (never without an expiry), kept alive by
// extensions, deleted by the release, and a holder that stopped extending
// is not listed once its lease expired.
func TestHolderRecords(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	cl := testClient(t, addr)
	space := t.TempDir()
	b := newTestBackend(t, space, addr)
	type kindCase struct {
		k       kind
		try     func(b *Backend, ctx context.Context, name string) (*Lease, bool, error)
		desc    func(b *Backend, ctx context.Context, name string) ([]backend.Holder, error)
		shared  bool
		holders int // held at once in the test
	}
	cases := []kindCase{
		{kindMutex, (*Backend).TryLock, (*Backend).DescribeLock, false, 1},
		{kindRead, (*Backend).TryRLock, (*Backend).DescribeRW, true, 2},
		{kindWrite, (*Backend).TryWLock, (*Backend).DescribeRW, false, 1},
		{kindSem, func(b *Backend, ctx context.Context, name string) (*Lease, bool, error) {
			return b.TryAcquire(ctx, name, 3)
		},
			func(b *Backend, ctx context.Context, name string) ([]backend.Holder, error) {
				return b.DescribeSemaphore(ctx, name, 3)
			}, false, 2},
	}
	for _, kc := range cases {
		t.Run(kc.k.String(), func(t *testing.T) {
			name := "holders:" + t.Name()
			ctx := backend.ContextWithOwner(testCtx(t), "owner of "+t.Name())
			var ls []*Lease
			for range kc.holders {
				l, ok, err := kc.try(b, ctx, name)
				if err != nil || !ok {
					t.Fatalf("try: %v %v", ok, err)
				}
				ls = append(ls, l)
			}
			hs, err := kc.desc(b, testCtx(t), name)
			if err != nil || len(hs) != kc.holders {
				t.Fatalf("describe: %+v, %v; want %d holders", hs, err, kc.holders)
			}
			for _, h := range hs {
				if h.PID != os.Getpid() || h.Owner != "owner of "+t.Name() || h.Shared != kc.shared || time.Since(h.Since).Abs() > 5*time.Second {
					t.Errorf("holder %+v", h)
				}
			}
			recs, pttl := holderRecords(t, cl, b, kc.k, name)
			if len(recs) != kc.holders || pttl <= 0 || pttl > testLease.Milliseconds() {
				t.Fatalf("records %v, PTTL %d: want %d records expiring within the lease", recs, pttl, kc.holders)
			}
			// Extensions keep them alive past the first lease.
			time.Sleep(testLease + testLease/2)
			if hs, err := kc.desc(b, testCtx(t), name); err != nil || len(hs) != kc.holders {
				t.Fatalf("describe after a lease of extensions: %+v, %v", hs, err)
			}
			if recs, _ := holderRecords(t, cl, b, kc.k, name); len(recs) != kc.holders {
				t.Fatalf("records after a lease of extensions: %v", recs)
			}
			// Release deletes its record.
			if err := ls[0].Release(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			if recs, _ := holderRecords(t, cl, b, kc.k, name); len(recs) != kc.holders-1 {
				t.Fatalf("records after a release: %v", recs)
			}
			for _, l := range ls[1:] {
				if err := l.Release(testCtx(t)); err != nil {
					t.Fatal(err)
				}
			}
			if recs, pttl := holderRecords(t, cl, b, kc.k, name); len(recs) != 0 {
				t.Fatalf("records after every release: %v (PTTL %d)", recs, pttl)
			}
		})
	}

	// A holder that stops extending (its Backend closed, as if its process
	// died) is not listed once its lease expired, and its record expires.
	t.Run("dead", func(t *testing.T) {
		dead := newTestBackend(t, space, addr)
		name := "holders:" + t.Name()
		if _, ok, err := dead.TryAcquire(testCtx(t), name, 2); err != nil || !ok {
			t.Fatal(ok, err)
		}
		if _, ok, err := b.TryAcquire(testCtx(t), name, 2); err != nil || !ok {
			t.Fatal(ok, err) // a live one beside it, extending the hash
		}
		_ = dead.Close()
		time.Sleep(testLease + 100*time.Millisecond)
		hs, err := b.DescribeSemaphore(testCtx(t), name, 2)
		if err != nil || len(hs) != 1 {
			t.Fatalf("after the dead holder's lease: %+v, %v; want the live one only", hs, err)
		}
	})
}

// TestDescribeBadInput checks describers' errors on bad input.
func TestDescribeBadInput(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	if _, err := b.DescribeLock(testCtx(t), ""); err == nil {
		t.Error("DescribeLock of an empty name: no error")
	}
	if _, err := b.DescribeSemaphore(testCtx(t), "x", 0); err == nil {
		t.Error("DescribeSemaphore with limit 0: no error")
	}
	_ = b.Close()
	if _, err := b.DescribeRW(testCtx(t), "x"); err == nil {
		t.Error("DescribeRW on a closed Backend: no error")
	}
}

// TestHolderRecordGranted checks that a mutex a release grants to a waiter
// (see releaseString) lists that waiter, recorded by its attempts.
func TestHolderRecordGranted(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	space := t.TempDir()
	for _, same := range []bool{true, false} {
		a := newTestBackend(t, space, addr)
		w := a
		if !same {
			w = newTestBackend(t, space, addr)
		}
		name := "holders:granted:" + t.Name() + map[bool]string{true: ":same", false: ":other"}[same]
		l, ok, err := a.TryLock(backend.ContextWithOwner(testCtx(t), "first"), name)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		got := make(chan *Lease, 1)
		go func() {
			l, err := w.Lock(backend.ContextWithOwner(testCtx(t), "waiter"), name)
			if err != nil {
				t.Error(err)
			}
			got <- l
		}()
		for { // until the waiter queued
			q, _ := queueKeys(l.base, kindMutex)
			c := a.c.nodes[0].client
			if n, _ := c.Do(testCtx(t), c.B().Zcard().Key(q).Build()).AsInt64(); n == 1 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := l.Release(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		wl := <-got
		if wl == nil {
			t.FailNow()
		}
		hs, err := a.DescribeLock(testCtx(t), name)
		if err != nil || len(hs) != 1 || hs[0].Owner != "waiter" {
			t.Errorf("same Backend %v: holders %+v, %v; want the waiter", same, hs, err)
		}
		_ = wl.Release(testCtx(t))
	}
}

// TestHolderRecordLongOwner checks that an owner text longer than
// holder.MaxOwner, given to the backend directly, is cut rather than
// making the lock's holders unreadable.
func TestHolderRecordLongOwner(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	long := strings.Repeat("é", holder.MaxOwner) // 2 bytes each
	l, ok, err := b.TryLock(backend.ContextWithOwner(testCtx(t), long), "long-owner")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	defer l.Release(testCtx(t))
	hs, err := b.DescribeLock(testCtx(t), "long-owner")
	if err != nil || len(hs) != 1 || len(hs[0].Owner) != holder.MaxOwner || !strings.HasPrefix(long, hs[0].Owner) {
		t.Fatalf("holders: %d, %v", len(hs), err)
	}
}

// TestRedLockHolders checks that a RedLock lists a holder while a
// majority of its nodes hold its token, and not once only a minority do.
func TestRedLockHolders(t *testing.T) {
	nodes := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES"))
	if len(nodes) < 3 {
		t.Skip("needs 3 nodes")
	}
	r := newTestRedLock(t, t.TempDir(), nodes)
	name := "redlock-holders"
	l, ok, err := r.TryLock(backend.ContextWithOwner(testCtx(t), "majority"), name)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	defer l.Release(testCtx(t))
	key := heldKey(l.base, kindMutex)
	for i, want := range []int{1, 0} { // the key deleted on one node, then on two
		c := r.c.nodes[i].client
		if err := c.Do(testCtx(t), c.B().Del().Key(key).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		hs, err := r.DescribeLock(testCtx(t), name)
		if err != nil || len(hs) != want || want == 1 && hs[0].Owner != "majority" {
			t.Fatalf("held on %d of 3 nodes: %+v, %v; want %d holders", 2-i, hs, err, want)
		}
	}
}

// TestHolderRecordsPruned checks that records of holders that died (their
// fields left behind) are pruned by later acquisitions once they pile up,
// and that the live ones stay.
func TestHolderRecordsPruned(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	cl := testClient(t, addr)
	b := newTestBackend(t, t.TempDir(), addr)
	name := "holders:pruned"
	_, keys, _, _ := lockStrings(nil, b.c.cfg.prefix, name, kindSem)
	h := holdersKey(keys, kindSem)
	cmd := cl.B().Hset().Key(h).FieldValue()
	for i := range 100 {
		cmd = cmd.FieldValue("dead"+strconv.Itoa(i), "{}")
	}
	if err := cl.Do(testCtx(t), cmd.Build()).Error(); err != nil {
		t.Fatal(err)
	}
	var ls []*Lease
	for range 2 {
		l, ok, err := b.TryAcquire(testCtx(t), name, 5)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		ls = append(ls, l)
	}
	recs, pttl := holderRecords(t, cl, b, kindSem, name)
	if len(recs) != 2 || pttl <= 0 {
		t.Fatalf("after two acquisitions over 100 dead records: %d records, PTTL %d; want the 2 live ones", len(recs), pttl)
	}
	for _, l := range ls {
		if _, ok := recs[l.token]; !ok {
			t.Errorf("the record of a live holder was pruned")
		}
		_ = l.Release(testCtx(t))
	}
}
