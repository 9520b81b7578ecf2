package valkey

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// slotOwner returns the address of the cluster node that serves key's
// slot, found by asking every node directly (a node that does not serve
// it answers MOVED): independent of the slot map under test.
func slotOwner(t *testing.T, c valkeygo.Client, key string) string {
	t.Helper()
	ctx := testCtx(t)
	for addr, nc := range c.Nodes() {
		err := nc.Do(ctx, nc.B().Exists().Key(key).Build()).Error()
		if err == nil {
			return addr
		}
		ve, ok := valkeygo.IsValkeyErr(err)
		if !ok {
			t.Fatalf("EXISTS %s on %s: %v", key, addr, err)
		}
		if _, moved := ve.IsMoved(); !moved {
			t.Fatalf("EXISTS %s on %s: %v", key, addr, err)
		}
	}
	t.Fatalf("no node serves %s", key)
	return ""
}

// channelsOnEveryNode returns channels (hash-tagged like a lock's) whose
// slots are served by every node of the cluster, and their owners.
func channelsOnEveryNode(t *testing.T, c valkeygo.Client, prefix string) (chs, owners []string) {
	t.Helper()
	nodes := len(c.Nodes())
	seen := map[string]bool{}
	for i := 0; len(seen) < nodes; i++ {
		if i == 200 {
			t.Fatalf("200 channels cover %d of %d nodes", len(seen), nodes)
		}
		ch := fmt.Sprintf("%s{n%d}:m:ch", prefix, i)
		o := slotOwner(t, c, ch)
		if !seen[o] {
			seen[o] = true
			chs, owners = append(chs, ch), append(owners, o)
		}
	}
	return chs, owners
}

// TestNotifierSubscribesOnServingNode: on a cluster, a channel is
// subscribed on the node that serves its slot, one connection per node
// (over the cluster bus a third of the messages came about 40ms late,
// which left a granted lock unused: issue 14's cluster regression). A
// message published there by a script wakes the waiter.
func TestNotifierSubscribesOnServingNode(t *testing.T) {
	seeds := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	c := testClient(t, seeds...)
	warmUp(t, c)
	n := newNotifier(c, slog.New(slog.DiscardHandler))
	defer n.close()
	ctx := testCtx(t)
	chs, owners := channelsOnEveryNode(t, c, testPrefix(t.TempDir()))
	publish := newScript(`redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1`)
	for i, ch := range chs {
		w := make(chan struct{}, 1)
		s, err := n.subscribe(ctx, ch, true, "", w)
		if err != nil {
			t.Fatal(err)
		}
		n.mu.Lock()
		got := s.e.conn.addr
		n.mu.Unlock()
		if got != owners[i] {
			t.Errorf("channel %s subscribed on %s; its slot is served by %s", ch, got, owners[i])
		}
		if err := publish.exec(ctx, c, []string{ch}, []string{"x"}).Error(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w:
		case <-ctx.Done():
			t.Fatalf("channel %s: no message", ch)
		}
		s.close()
	}
	n.mu.Lock()
	conns := len(n.conns)
	n.mu.Unlock()
	if conns != len(chs) {
		t.Errorf("%d pub/sub connections for channels on %d nodes; want one per node", conns, len(chs))
	}
}

// TestNotifierStaleSlotMap: a slot map that names the wrong nodes (slots
// moved since it was read) costs latency, never a message: the channel is
// subscribed on another node, which the cluster bus reaches. An unknown
// node, or no map, falls back to any node.
func TestNotifierStaleSlotMap(t *testing.T) {
	seeds := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	c := testClient(t, seeds...)
	warmUp(t, c)
	n := newNotifier(c, slog.New(slog.DiscardHandler))
	defer n.close()
	ctx := testCtx(t)
	chs, owners := channelsOnEveryNode(t, c, testPrefix(t.TempDir()))
	// Every slot "served" by the next node in turn, or by a node nobody
	// knows.
	var addrs []string
	for a := range c.Nodes() {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	publish := newScript(`redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1`)
	for _, unknown := range []bool{false, true} {
		for i, ch := range chs {
			wrong := "127.0.0.1:1"
			if !unknown {
				wrong = addrs[(slices.Index(addrs, owners[i])+1)%len(addrs)]
			}
			n.slots.mu.Lock()
			n.slots.ranges, n.slots.at, n.slots.stale = []slotRange{{lo: 0, hi: 16383, addr: wrong}}, time.Now(), false
			n.slots.mu.Unlock()
			w := make(chan struct{}, 1)
			s, err := n.subscribe(ctx, ch, true, "", w)
			if err != nil {
				t.Fatal(err)
			}
			n.mu.Lock()
			got := s.e.conn.addr
			n.mu.Unlock()
			if !unknown && got != wrong {
				t.Errorf("channel %s subscribed on %s; want %s, where the (stale) map says", ch, got, wrong)
			}
			if err := publish.exec(ctx, c, []string{ch}, []string{"x"}).Error(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-w:
			case <-ctx.Done():
				t.Fatalf("channel %s subscribed on %s (unknown %v): no message", ch, got, unknown)
			}
			s.close()
			waitUnsubscribed(t, n, ch)
		}
	}
}

// waitUnsubscribed waits until the notifier has unsubscribed ch.
func waitUnsubscribed(t *testing.T, n *notifier, ch string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	for {
		n.mu.Lock()
		_, ok := n.subs[ch]
		n.mu.Unlock()
		if !ok {
			return
		}
		if !sleepCtx(ctx, 5*time.Millisecond) {
			t.Fatalf("channel %s still subscribed", ch)
		}
	}
}

// TestSlotMapRead: the slot map read from the cluster covers every slot,
// and says for each channel what the nodes themselves say.
func TestSlotMapRead(t *testing.T) {
	seeds := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	c := testClient(t, seeds...)
	m := &slotMap{client: c, log: slog.New(slog.DiscardHandler)}
	chs, owners := channelsOnEveryNode(t, c, testPrefix(t.TempDir()))
	for i, ch := range chs {
		if got := m.nodeFor(testCtx(t), ch); got != owners[i] {
			t.Errorf("nodeFor(%s) = %q; the node serving it is %s", ch, got, owners[i])
		}
	}
	var next int64
	for _, r := range m.ranges {
		if r.lo != next || r.hi < r.lo {
			t.Fatalf("slot map %v: a gap or overlap at %d", m.ranges, next)
		}
		next = r.hi + 1
	}
	if next != 16384 {
		t.Fatalf("slot map %v ends at %d", m.ranges, next-1)
	}
}
