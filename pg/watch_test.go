package pg_test

import (
	"context"
	"errors"
	"io"
	"net"
	neturl "net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/pg"
)

// hiddenSocket is a net.Conn that does not give its socket (it is no
// syscall.Conn), as a TLS connection or a user's wrapper: on it an idle
// lock connection's watcher reads the connection itself, and statements
// pause it first (see pg's conn.go).
type hiddenSocket struct{ net.Conn }

// hideSockets makes every connection of cfg a hiddenSocket.
func hideSockets(cfg *pgxpool.Config) {
	wrapConns(cfg, func(c net.Conn) net.Conn { return hiddenSocket{c} })
}

// wrapConns makes every connection of cfg wrap(c), c as dialled.
func wrapConns(cfg *pgxpool.Config, wrap func(net.Conn) net.Conn) {
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return wrap(c), nil
	}
}

// TestConformanceReadingWatcher runs the suite over connections whose
// socket the backend cannot peek at, so that every lock connection's
// watcher reads it (the other of the watcher's two ways).
func TestConformanceReadingWatcher(t *testing.T) {
	url := testURL(t)
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	url += sep + "application_name=" + neturl.PathEscape(pg.ApplicationName())
	h := harness(url)
	h.HoldersWithoutOwner = true
	h.New = func(t testing.TB, _ string) any {
		pool := newPoolWith(t, url, 2, hideSockets)
		warm(t, pool, 2)
		return newOn(t, pool)
	}
	dlocktest.Run(t, h)
}

// injector is a TCP proxy between a pool and the server that can send
// the pool's connections bytes of its own, as if from the server.
type injector struct {
	ln     net.Listener
	server string

	mu      sync.Mutex // serializes writes to clients
	clients []net.Conn
	wg      sync.WaitGroup
}

func newInjector(t *testing.T, server string) *injector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	in := &injector{ln: ln, server: server}
	in.wg.Go(in.serve)
	t.Cleanup(func() {
		_ = ln.Close()
		in.mu.Lock()
		for _, c := range in.clients {
			_ = c.Close()
		}
		in.mu.Unlock()
		in.wg.Wait()
	})
	return in
}

func (in *injector) serve() {
	for {
		c, err := in.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", in.server)
		if err != nil {
			_ = c.Close()
			continue
		}
		in.mu.Lock()
		in.clients = append(in.clients, c)
		in.mu.Unlock()
		in.wg.Go(func() { _, _ = io.Copy(s, c); _ = s.Close() })
		in.wg.Go(func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					in.mu.Lock()
					_, werr := c.Write(buf[:n])
					in.mu.Unlock()
					if werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			_ = c.Close()
		})
	}
}

// inject sends b to every client connection.
func (in *injector) inject(t *testing.T, b []byte) {
	t.Helper()
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, c := range in.clients {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWatcherReadsWhatComesWhileIdle: when a notice arrives on an idle
// lock connection, whole or in two parts, the watcher reads it (pgconn's
// OnNotice sees it) and the lease stays held, its connection usable; a
// session ended after that is still noticed at once.
func TestWatcherReadsWhatComesWhileIdle(t *testing.T) {
	url := testURL(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	server := net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port)))
	for _, hide := range []bool{false, true} {
		name := "peek"
		if hide {
			name = "read"
		}
		t.Run(name, func(t *testing.T) {
			in := newInjector(t, server)
			var notices atomic.Int32
			pool := newPoolWith(t, url, 1, func(cfg *pgxpool.Config) {
				cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
					if n.Message == "injected" {
						notices.Add(1)
					}
				}
				cfg.ConnConfig.DialFunc = func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", in.ln.Addr().String())
				}
				if hide {
					hideSockets(cfg)
				}
			})
			// No monitor pings while the test runs: only the watcher reads.
			b := newOn(t, pool, pg.WithLossInterval(time.Hour))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			msg, err := (&pgproto3.NoticeResponse{Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "00000", Message: "injected"}).Encode(nil)
			if err != nil {
				t.Fatal(err)
			}
			l := heldIdle(ctx, t, b, "watch-idle")
			in.inject(t, msg)
			in.inject(t, msg[:5])
			time.Sleep(10 * time.Millisecond)
			in.inject(t, msg[5:])
			deadline := time.Now().Add(500 * time.Millisecond)
			for notices.Load() < 2 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := notices.Load(); n != 2 {
				t.Fatalf("the idle connection read %d of the 2 notices within 500ms", n)
			}
			if l.IsLost() {
				t.Fatal("a notice made the lease lost")
			}
			if err := l.Release(ctx); err != nil {
				t.Fatalf("Release after the notices: %v", err)
			}

			// A session ended after a notice is noticed at once.
			l = heldIdle(ctx, t, b, "watch-idle")
			in.inject(t, msg)
			time.Sleep(10 * time.Millisecond)
			lostAtOnce(t, url, l)
		})
	}
}

// oddSocket is a net.Conn whose SyscallConn gives a RawConn that cannot
// be waited on: its Read fails at once.
type oddSocket struct{ net.Conn }

func (c oddSocket) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.Conn.(syscall.Conn).SyscallConn()
	return oddRawConn{rc}, err
}

type oddRawConn struct{ syscall.RawConn }

func (oddRawConn) Read(func(uintptr) bool) error { return errors.New("odd: cannot wait") }

// TestWatcherOddSocket: a connection whose socket cannot be waited on
// without reading is watched by reading it: a session ended while its
// lock connection is idle is still noticed at once.
func TestWatcherOddSocket(t *testing.T) {
	url := testURL(t)
	pool := newPoolWith(t, url, 1, func(cfg *pgxpool.Config) {
		wrapConns(cfg, func(c net.Conn) net.Conn { return oddSocket{c} })
	})
	b := newOn(t, pool, pg.WithLossInterval(time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lostAtOnce(t, url, heldIdle(ctx, t, b, "watch-odd"))
}

// heldIdle takes name on b and returns its lease once its lock
// connection's watcher runs (after 1ms idle).
func heldIdle(ctx context.Context, t *testing.T, b *pg.Backend, name string) *pg.Lease {
	t.Helper()
	l, ok, err := b.TryLock(ctx, name)
	if err != nil || !ok {
		t.Fatalf("TryLock: %v %v", ok, err)
	}
	time.Sleep(20 * time.Millisecond)
	return l
}

// lostAtOnce ends l's session and requires l to report the loss within a
// second.
func lostAtOnce(t *testing.T, url string, l *pg.Lease) {
	t.Helper()
	start := time.Now()
	terminate(t, url, l.PID())
	select {
	case <-l.Lost():
	case <-time.After(time.Second):
		t.Fatalf("loss not reported %v after the session ended", time.Since(start))
	}
}
