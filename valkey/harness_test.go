package valkey

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// testLease is the lease time in tests: short, so that a dead holder's
// lock frees quickly.
const testLease = 1500 * time.Millisecond

// testClient connects to addrs (one address: standalone; a cluster's seeds:
// cluster) and closes the client at the end of t.
func testClient(t testing.TB, addrs ...string) valkeygo.Client {
	t.Helper()
	c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: addrs, DisableCache: true})
	if err != nil {
		t.Fatalf("connecting to %v: %v", addrs, err)
	}
	t.Cleanup(c.Close)
	return c
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// testPrefix derives a key prefix from the suite's space, shared with its
// helper processes.
func testPrefix(space string) string {
	return "dlocktest:" + filepath.Base(space) + ":"
}

func testOpts(space string) []Option {
	return []Option{WithKeyPrefix(testPrefix(space)), WithLease(testLease)}
}

// newTestBackend returns a Backend over a new client to addrs, closed at
// the end of t.
func newTestBackend(t testing.TB, space string, addrs ...string) *Backend {
	t.Helper()
	b, err := New(testClient(t, addrs...), testOpts(space)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func newTestRedLock(t testing.TB, space string, addrs []string, opts ...Option) *RedLock {
	t.Helper()
	var cs []valkeygo.Client
	for _, a := range addrs {
		cs = append(cs, testClient(t, a))
	}
	r, err := NewRedLock(cs, append(testOpts(space), opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// loseLease deletes what records l on every node: its key (mutex, writer)
// or its member of a sorted set (reader, semaphore ticket).
func loseLease(t testing.TB, l *Lease) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, n := range l.c.nodes {
		b := n.client.B()
		cmd := b.Del().Key(heldKey(l.base, l.kind)).Build()
		if l.kind == kindRead || l.kind == kindSem {
			cmd = b.Zrem().Key(heldKey(l.base, l.kind)).Member(l.token).Build()
		}
		if err := n.client.Do(ctx, cmd).Error(); err != nil {
			t.Errorf("deleting the lease: %v", err)
		}
	}
}

// harness is the suite's harness over nodes made by newNode. Waiters on
// one node (standalone, cluster, Sentinel) are served in arrival order; a
// RedLock's are not (Unordered; see the package documentation).
func harness(newNode func(t testing.TB, space string) any) dlocktest.Harness[*Lease] {
	return dlocktest.Harness[*Lease]{
		New:         newNode,
		Lose:        loseLease,
		LossWithin:  5 * time.Second,
		FreedWithin: testLease,
		Fencing:     true,
	}
}

func TestConformanceSingle(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	dlocktest.Run(t, harness(func(t testing.TB, space string) any { return newTestBackend(t, space, addr) }))
}

func TestConformanceCluster(t *testing.T) {
	seeds := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	// valkey-go's cluster client leaves a goroutine behind for 5s after it
	// is made (closing replaced connections late), which the suite's
	// per-subtest leak check would report; so the nodes take turns over a
	// few clients made up front. Each node is still its own Backend, with
	// its own extender, pub/sub connection and tokens.
	var clients []valkeygo.Client
	for range 3 {
		c := testClient(t, seeds...)
		warmUp(t, c)
		clients = append(clients, c)
	}
	dlocktest.Run(t, overClients(clients))
}

// overClients is the harness whose nodes take turns over clients made up
// front (warmed up, so that their connections' goroutines exist before the
// suite's leak checks look); each node is still its own Backend, made
// with the test options and opts.
func overClients(clients []valkeygo.Client, opts ...Option) dlocktest.Harness[*Lease] {
	next := 0
	return harness(func(t testing.TB, space string) any {
		c := clients[next%len(clients)]
		next++
		b, err := New(c, append(testOpts(space), opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	})
}

func TestConformanceRedLock(t *testing.T) {
	nodes := splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES"))
	h := harness(func(t testing.TB, space string) any { return newTestRedLock(t, space, nodes) })
	h.Unordered = true
	dlocktest.Run(t, h)
}

// warmUp makes c open every connection it will use (valkey-go opens them
// lazily, with goroutines that then live as long as the client), by
// sending concurrent commands to keys of every slot.
func warmUp(t testing.TB, c valkeygo.Client) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := g; i < 4096; i += 32 {
				_ = c.Do(context.Background(), c.B().Exists().Key("dlocktest:warmup:"+strconv.Itoa(i)).Build()).Error()
			}
		})
	}
	wg.Wait()
}
