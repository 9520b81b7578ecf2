package bench

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkHandoffParts splits the PostgreSQL hand-off of BenchmarkHandoff
// at the sockets, for dlock and the floors: from the holder's Release call
// to its unlock leaving its socket (release-ns), from there to the first
// bytes of the grant reaching the waiter's socket (server-ns: the
// server's hand-off, on loopback), and from there to the waiter's
// acquisition returning (waiter-ns); medians, and their sum (ns/op). The
// client's parts are what a library can change:
//
//	go test -run '^$' -bench 'HandoffParts' -benchtime 300x ./bench/
func BenchmarkHandoffParts(b *testing.B) {
	for _, l := range libs {
		if l.backend != "pg" || !l.waits || !l.measures("BenchmarkHandoff") || l.name == "pglock" {
			continue // pglock is database/sql: no pgx pool to time
		}
		b.Run(l.backend+"/"+l.name, func(b *testing.B) {
			var rec sockRecorder
			pgDialWraps.Store(b, rec.wrap(true))
			holder := l.open(b, "")
			pgDialWraps.Store(b, rec.wrap(false))
			waiter := l.open(b, "")
			pgDialWraps.Delete(b)
			ctx, cancel := context.WithTimeout(context.Background(), 10*waitTimeout)
			defer cancel()
			name := lockName(b, "parts")
			for range 2 {
				if _, err := handoff(ctx, holder, waiter, name); err != nil {
					b.Fatal(err)
				}
			}
			var rel, srv, wt []time.Duration
			b.ResetTimer()
			for range b.N {
				r, s, w, err := handoffParts(ctx, &rec, holder, waiter, name)
				if err != nil {
					b.Fatal(err)
				}
				rel, srv, wt = append(rel, r), append(srv, s), append(wt, w)
			}
			b.StopTimer()
			med := func(d []time.Duration) float64 {
				slices.Sort(d)
				return float64(percentile(d, 0.5))
			}
			r, s, w := med(rel), med(srv), med(wt)
			b.ReportMetric(r+s+w, "ns/op")
			b.ReportMetric(r, "release-ns")
			b.ReportMetric(s, "server-ns")
			b.ReportMetric(w, "waiter-ns")
		})
	}
}

// handoffParts is handoff with its three parts timed by rec.
func handoffParts(ctx context.Context, rec *sockRecorder, holder, waiter locker, name string) (rel, srv, wt time.Duration, err error) {
	released, acquired, err := handoffAt(ctx, holder, waiter, name, rec)
	if err != nil {
		return 0, 0, 0, err
	}
	var sent, got time.Time
	for _, e := range rec.events() {
		switch {
		case sent.IsZero() && e.holder && e.write:
			sent = e.at
		case !sent.IsZero() && !e.holder && !e.write:
			got = e.at
		}
		if !got.IsZero() {
			break
		}
	}
	if sent.IsZero() || got.IsZero() {
		return 0, 0, 0, errors.New("hand-off parts: the unlock or the grant was not seen on the sockets")
	}
	return sent.Sub(released), got.Sub(sent), acquired.Sub(got), nil
}

// pgDialWraps holds, for a benchmark opening a PostgreSQL library, the
// wrapper that newPoolWith puts around the connections of the pool it
// makes (BenchmarkHandoffParts).
var pgDialWraps sync.Map // testing.TB -> func(net.Conn) net.Conn

// sockRecorder records, while started, when the sockets it wraps write and
// when their reads return bytes.
type sockRecorder struct {
	mu  sync.Mutex
	on  bool
	evs []sockEvent
}

type sockEvent struct {
	at            time.Time
	holder, write bool
}

func (r *sockRecorder) start() {
	r.mu.Lock()
	r.on, r.evs = true, r.evs[:0]
	r.mu.Unlock()
}

func (r *sockRecorder) stop() {
	r.mu.Lock()
	r.on = false
	r.mu.Unlock()
}

// events returns what was recorded between the last start and stop.
func (r *sockRecorder) events() []sockEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}

func (r *sockRecorder) note(holder, write bool) {
	at := time.Now()
	r.mu.Lock()
	if r.on {
		r.evs = append(r.evs, sockEvent{at, holder, write})
	}
	r.mu.Unlock()
}

// wrap returns the wrapper of the holder's (or the waiter's) connections.
func (r *sockRecorder) wrap(holder bool) func(net.Conn) net.Conn {
	return func(c net.Conn) net.Conn { return recordedConn{c, r, holder} }
}

// recordedConn is a connection whose writes and reads r records. It gives
// its socket (syscall.Conn), so that watchers that wait on a socket
// without reading it still can.
type recordedConn struct {
	net.Conn
	r      *sockRecorder
	holder bool
}

func (c recordedConn) Write(p []byte) (int, error) {
	c.r.note(c.holder, true)
	return c.Conn.Write(p)
}

func (c recordedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.r.note(c.holder, false)
	}
	return n, err
}

func (c recordedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}
