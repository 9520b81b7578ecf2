package pg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/pg"
)

// waitGone waits until the session pid has ended on the server (its locks
// are free from then on).
func waitGone(t *testing.T, url string, pid uint32) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if scalar[int64](t, url, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int64(pid)) == 0 {
			return
		}
	}
	t.Fatalf("session %d still alive 10s after pg_terminate_backend", pid)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// A lease whose session ended before the loss monitor noticed must not
// release "successfully" nor with an error that hides the loss: Release
// says ErrLockLost, and every other lease of that session reports the loss
// at once (finding pg-release-not-lost of RELIABILITY.md).
func TestReleaseAfterTerminateSaysLost(t *testing.T) {
	url := testURL(t)
	ctx := ctxT(t, time.Minute)
	type acq func(b *pg.Backend, name string) (*pg.Lease, bool, error)
	kinds := map[string]acq{
		"mutex": func(b *pg.Backend, n string) (*pg.Lease, bool, error) { return b.TryLock(ctx, n) },
		"read":  func(b *pg.Backend, n string) (*pg.Lease, bool, error) { return b.TryRLock(ctx, n) },
		"write": func(b *pg.Backend, n string) (*pg.Lease, bool, error) { return b.TryWLock(ctx, n) },
		"sem":   func(b *pg.Backend, n string) (*pg.Lease, bool, error) { return b.TryAcquire(ctx, n, 2) },
	}
	for kind, try := range kinds {
		t.Run(kind, func(t *testing.T) {
			// A loss interval far beyond the test: only Release can tell.
			b, _ := newBackend(t, url, pg.WithLossInterval(time.Hour))
			other, _ := newBackend(t, url)
			base := uniq(t)
			var ls []*pg.Lease
			for i := range 3 {
				l, ok, err := try(b, fmt.Sprint(base, i))
				mustTry(t, ok, err)
				ls = append(ls, l)
			}
			if ls[0].PID() != ls[1].PID() || ls[0].PID() != ls[2].PID() {
				t.Fatalf("leases not multiplexed on one session: %d %d %d", ls[0].PID(), ls[1].PID(), ls[2].PID())
			}
			terminate(t, url, ls[0].PID())
			waitGone(t, url, ls[0].PID())
			// The lock is free on the server: another client takes it.
			l2, ok, err := try(other, fmt.Sprint(base, 0))
			mustTry(t, ok, err)
			defer l2.Release(ctx)

			err = ls[0].Release(ctx)
			if !errors.Is(err, dlock.ErrLockLost) {
				t.Fatalf("Release of a lease whose session was terminated: %v, want ErrLockLost", err)
			}
			t.Logf("Release: %v", err)
			for i, l := range ls {
				if !isClosed(l.Lost()) {
					t.Fatalf("lease %d: Lost() not closed right after the failed Release", i)
				}
			}
			for i, l := range ls[1:] {
				if err := l.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
					t.Fatalf("lease %d on the same dead session: Release: %v, want ErrLockLost", i+1, err)
				}
			}
			if s := b.Stats(); s.LockConns != 0 || s.Leases != 0 {
				t.Fatalf("stats after loss: %+v", s)
			}
		})
	}
}

// The same through the engine: Do's error and Lock.Release say the lock
// was lost.
func TestGuardReleaseAfterTerminateSaysLost(t *testing.T) {
	url := testURL(t)
	b, _ := newBackend(t, url, pg.WithLossInterval(time.Hour))
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	mu := dlock.NewMutex(b)
	err := mu.Do(ctx, name, func(context.Context) error {
		st := b.Stats()
		if st.Leases != 1 {
			return fmt.Errorf("stats: %+v", st)
		}
		pid := scalar[int64](t, url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1::bigint & 4294967295 AND classid = ($1::bigint >> 32) & 4294967295",
			func() int64 { k, _ := pg.MutexKey(name).Int64(); return k }())
		terminate(t, url, uint32(pid))
		waitGone(t, url, uint32(pid))
		return nil
	})
	if !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Do whose session was terminated inside: %v, want ErrLockLost", err)
	}
}

// A Release whose unlock does not answer within WithOpTimeout cannot know
// whether it held the lock to the end: the connection is closed (freeing
// the lock), every lease on it is lost, and Release says ErrLockLost.
func TestReleaseUnlockTimeoutSaysLost(t *testing.T) {
	base := testURL(t)
	px := newProxy(t, base)
	b, _ := newBackend(t, px.url, pg.WithLossInterval(time.Hour), pg.WithOpTimeout(200*time.Millisecond))
	t.Cleanup(px.close) // first: pgx's cancel requests would wait on the black hole
	other, _ := newBackend(t, base)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	l1, ok, err := b.TryLock(ctx, name+"1")
	mustTry(t, ok, err)
	l2, ok, err := b.TryLock(ctx, name+"2")
	mustTry(t, ok, err)
	px.freeze()
	start := time.Now()
	// A ctx without a deadline: WithOpTimeout bounds the release.
	err = l1.Release(context.Background())
	if !errors.Is(err, dlock.ErrLockLost) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Release with an unanswered unlock: %v, want ErrLockLost and DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Release took %v", d)
	}
	if !isClosed(l2.Lost()) {
		t.Fatal("the other lease of the connection is not reported lost")
	}
	if err := l2.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release of the other lease: %v", err)
	}
	t.Logf("release failed after %v", time.Since(start))
	// The server frees the locks when it sees the connection close.
	for _, n := range []string{name + "1", name + "2"} {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := other.Lock(wctx, n)
		cancel()
		if err != nil {
			t.Fatalf("lock %s after the lost release: %v", n, err)
		}
		_ = l.Release(ctx)
	}
	t.Logf("locks free after %v", time.Since(start))
}

// A try whose statement does not answer within WithOpTimeout fails with
// an error matching context.DeadlineExceeded (the lock connection's
// statement timer, not a ctx, bounds it), and takes nothing: its
// connection is closed, so the leases on it report the loss and the
// server frees their locks.
func TestTryTimeoutClosesConnection(t *testing.T) {
	base := testURL(t)
	px := newProxy(t, base)
	b, _ := newBackend(t, px.url, pg.WithLossInterval(time.Hour), pg.WithOpTimeout(200*time.Millisecond))
	t.Cleanup(px.close)
	other, _ := newBackend(t, base)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	l1, ok, err := b.TryLock(ctx, name+"1")
	mustTry(t, ok, err)
	px.freeze()
	start := time.Now()
	// The try runs on l1's lock connection (idle, far below the leases
	// that spread tries), whose server no longer answers.
	l2, ok, err := b.TryLock(ctx, name+"2")
	if ok || l2 != nil || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, dlock.ErrNotAcquired) {
		t.Fatalf("TryLock with an unanswered statement: %v, %v, want an error matching DeadlineExceeded (and not ErrNotAcquired: ctx is live)", ok, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("the try outlived the test's ctx: %v", err)
	}
	if !isClosed(l1.Lost()) {
		t.Fatal("the lease of the timed-out connection is not reported lost")
	}
	if err := l1.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release of the lost lease: %v, want ErrLockLost", err)
	}
	t.Logf("try failed after %v", time.Since(start))
	for _, n := range []string{name + "1", name + "2"} {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := other.Lock(wctx, n)
		cancel()
		if err != nil {
			t.Fatalf("lock %s after the timed-out try: %v", n, err)
		}
		_ = l.Release(ctx)
	}
}

// proxy is a TCP proxy to a PostgreSQL server that can become a black
// hole: data is dropped in both directions, connections stay open until
// their client closes them (then the server sees the close).
type proxy struct {
	url    string
	ln     net.Listener
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	upstream := u.Host
	pu := *u
	pu.Host = ln.Addr().String()
	p.url = pu.String()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Go(func() { p.pipe(s, c) })
			p.wg.Go(func() { p.pipe(c, s) })
		}
	})
	t.Cleanup(p.close)
	return p
}

// close ends the proxy and its connections (so nothing waits on the
// black hole) and waits for its goroutines.
func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// pipe copies src to dst, dropping the data while the proxy is frozen; it
// closes both when either side ends.
func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze makes the proxy a black hole for good.
func (p *proxy) freeze() { p.frozen.Store(true) }
