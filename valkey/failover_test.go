//go:build unix

package valkey

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/testserver"
)

// The failover tests run against a private Sentinel group (one primary,
// two replicas, three sentinels that fail over 1.5s after the primary
// stops answering), so that they may kill its primary; the shared group
// of .ci/servers serves the other tests.

const (
	failoverLease = 6 * time.Second // longer than a failover: holders ride it out
	failoverDrift = 300 * time.Millisecond
)

func failoverClient(t testing.TB, g *testserver.Sentinel) valkeygo.Client {
	t.Helper()
	c, err := valkeygo.NewClient(valkeygo.ClientOption{
		InitAddress:  g.Sentinels,
		Sentinel:     valkeygo.SentinelOption{MasterSet: testserver.SentinelMaster},
		DisableCache: true,
	})
	if err != nil {
		t.Fatalf("connecting to the sentinels %v: %v", g.Sentinels, err)
	}
	t.Cleanup(c.Close)
	return c
}

// grants watches the holders of a few locks, as an outside observer that
// knows what every holder was told: a grant while the lock's previous
// holder still holds it and was not told of a loss (its Lost not closed)
// is a double grant.
type grants struct {
	mu      sync.Mutex
	holder  map[string]*Lease
	total   int
	doubles int
	t       testing.TB
}

func (g *grants) grant(name string, l *Lease) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.total++
	if old := g.holder[name]; old != nil {
		select {
		case <-old.Lost():
		default:
			g.doubles++
			g.t.Logf("double grant of %q: fencing token %d granted while %d still held it, untold", name, l.Token(), old.Token())
		}
	}
	g.holder[name] = l
}

// counts returns the grants and the double grants so far.
func (g *grants) counts() (total, doubles int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total, g.doubles
}

// end is called by a holder before it releases (or after it learned of
// its loss): from then on it no longer holds the lock.
func (g *grants) end(name string, l *Lease) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holder[name] == l {
		delete(g.holder, name)
	}
}

// failoverRun has holders and waiters work on g's group over backends
// made with opts, through rounds failovers, each made by killing the
// primary (SIGKILL) while its replicas are frozen and behind (see
// testserver.Sentinel.LagReplicas), and returns the grants seen. Two
// workloads: six locks of two clients each, which hold 1-5 s and pause up
// to 600ms between holds (the locks are often free), and, in each round,
// four fresh locks taken while the replicas lag, each held up to 10 s by
// one client and waited for by another from a moment later — the case of
// a lock the promoted replica has never seen.
func failoverRun(t *testing.T, g *testserver.Sentinel, rounds int, opts ...Option) *grants {
	space := t.Name()
	opts = append([]Option{WithKeyPrefix(testPrefix(space)), WithLease(failoverLease), WithDriftAllowance(failoverDrift)}, opts...)
	newBackend := func() *Backend {
		b, err := New(failoverClient(t, g), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	seen := &grants{holder: map[string]*Lease{}, t: t}
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errMu sync.Mutex
	errCount := map[string]int{}
	noteErr := func(err error) {
		if ctx.Err() == nil {
			errMu.Lock()
			errCount[shortErr(err)]++
			errMu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		for range 2 {
			b := newBackend()
			wg.Go(func() {
				for sleepCtx(ctx, time.Duration(rand.IntN(600))*time.Millisecond) {
					seen.cycle(ctx, ctx, b, name, time.Duration(1000+rand.IntN(4000))*time.Millisecond, noteErr)
				}
			})
		}
	}
	const pairs = 4
	var lagHolders, lagWaiters []*Backend
	for range pairs {
		lagHolders, lagWaiters = append(lagHolders, newBackend()), append(lagWaiters, newBackend())
	}
	defer func() {
		stop()
		wg.Wait()
		errMu.Lock()
		defer errMu.Unlock()
		t.Logf("errors seen by waiters: %v", errCount)
	}()
	for i := range rounds {
		time.Sleep(3 * time.Second) // let locks be taken and waited for (and queue places of waiters that the last failover cut off expire)
		primary := g.Primary(t)
		resume := g.LagReplicas(t, primary)
		lagCtx, lagEnd := context.WithCancel(ctx)
		for j := range pairs {
			name := "lag" + strconv.Itoa(i) + "-" + strconv.Itoa(j)
			wg.Go(func() { // takes it while the replicas lag, or not at all
				for lagCtx.Err() == nil && !seen.cycle(lagCtx, ctx, lagHolders[j], name, 10*time.Second, noteErr) {
				}
			})
			wg.Go(func() { // waits for it from a moment later, until it has it once
				if !sleepCtx(ctx, 200*time.Millisecond) {
					return
				}
				for end := time.Now().Add(30 * time.Second); ctx.Err() == nil && time.Now().Before(end); {
					if seen.cycle(ctx, ctx, lagWaiters[j], name, 100*time.Millisecond, noteErr) {
						return
					}
				}
			})
		}
		time.Sleep(800 * time.Millisecond) // acquisitions and extensions the replicas will never see
		lagEnd()
		t0 := time.Now()
		now, took := g.Failover(t, 30*time.Second, resume)
		total, doubles := seen.counts()
		t.Logf("failover %d: %s -> %s, promoted %v after the kill, whole again after %v; %d grants, %d double so far",
			i+1, primary, now, took.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), total, doubles)
	}
	time.Sleep(3 * time.Second) // holders and waiters on the last primary
	return seen
}

// cycle takes name from b (trying until actx ends, at most 3s) and holds
// it until hold passes, its lease is lost or hctx ends, then releases it;
// it reports whether it got the lock. An error goes to noteErr.
func (g *grants) cycle(actx, hctx context.Context, b *Backend, name string, hold time.Duration, noteErr func(error)) bool {
	wctx, cancel := context.WithTimeout(actx, 3*time.Second)
	l, err := b.Lock(wctx, name)
	cancel()
	if err != nil {
		noteErr(err)
		return false
	}
	g.grant(name, l)
	timer := time.NewTimer(hold)
	select {
	case <-timer.C:
	case <-l.Lost():
	case <-hctx.Done():
	}
	timer.Stop()
	g.end(name, l)
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = l.Release(rctx)
	cancel()
	return true
}

// shortErr is err's message without the parts that vary (addresses,
// tokens), to count kinds of errors.
func shortErr(err error) string {
	s := err.Error()
	if strings.Contains(s, "@user_script") {
		return s
	}
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s)-i < 80 {
		return s[i+2:]
	}
	if len(s) > 80 {
		return s[:80]
	}
	return s
}

// Failovers while holders hold and waiters wait, with WithReplicas on
// every replica: no second holder is ever granted a lock that an earlier
// holder still holds untold. Without the option, the double grants that
// happen are counted and logged (they may; see the package
// documentation), not failed.
func TestFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("failover test: some 40s")
	}
	g := testserver.StartSentinel(t, 2, 1500*time.Millisecond)
	const rounds = 3
	t.Run("WithReplicas", func(t *testing.T) {
		s := failoverRun(t, g, rounds, WithReplicas(2, 250*time.Millisecond))
		t.Logf("WithReplicas(2): %d double grants in %d grants over %d failovers", s.doubles, s.total, rounds)
		if s.doubles > 0 {
			t.Errorf("%d double grants with WithReplicas(2) over %d failovers", s.doubles, rounds)
		}
		if s.total < rounds*3 {
			t.Errorf("only %d grants over %d failovers: the locks did not keep working", s.total, rounds)
		}
	})
	t.Run("Without", func(t *testing.T) {
		s := failoverRun(t, g, rounds)
		t.Logf("without WithReplicas: %d double grants in %d grants over %d failovers", s.doubles, s.total, rounds)
		if s.total < rounds*3 {
			t.Errorf("only %d grants over %d failovers: the locks did not keep working", s.total, rounds)
		}
	})
}

// An extension that the replicas do not confirm does not count: the lease
// is lost at its validity deadline, while the primary still has its key.
func TestReplicasExtensionUnconfirmed(t *testing.T) {
	g := testserver.StartSentinel(t, 1, 5*time.Second)
	b, err := New(failoverClient(t, g), WithKeyPrefix(testPrefix(t.Name())), WithLease(900*time.Millisecond),
		WithReplicas(1, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := testCtx(t)
	l, ok, err := b.TryLock(ctx, "x")
	if err != nil || !ok {
		t.Fatalf("TryLock with the replica up: %v, %v", ok, err)
	}
	replica := g.Replicas(g.Primary(t))[0]
	g.Signal(t, replica, syscall.SIGSTOP)
	defer g.Signal(t, replica, syscall.SIGCONT)
	t0 := time.Now()
	select {
	case <-l.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("the lease was not lost 10s after its replica stopped confirming")
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Errorf("lost %v after the replica stopped; the lease is 900ms", d)
	}
	// The primary extended it (unconfirmed): the key is still there.
	c := testClient(t, g.Primary(t))
	if n, err := c.Do(ctx, c.B().Exists().Key(l.rkeys[0]).Build()).AsInt64(); err != nil || n != 1 {
		t.Errorf("the key on the primary: exists %d, %v (want 1: the extension reached the primary, not the replica)", n, err)
	}
	if err := l.Release(ctx); !errors.Is(err, backend.ErrLockLost) {
		t.Errorf("Release of the lost lease: %v, want ErrLockLost", err)
	}
}
