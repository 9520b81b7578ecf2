package bench

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgWatchedFloor is the hand-written PostgreSQL lock with the guarantees
// that dlock's pg backend gives by default beyond the plain floor's, and
// nothing more:
//
//   - loss is reported within milliseconds when the server closes the
//     session: a lock held longer than watchDelay (1 ms, dlock's) has a
//     goroutine reading its connection (pgconn's WaitForNotification), which
//     the release stops first (a read deadline in the past, as dlock does);
//     a per-lock timer starts it.
//   - a wait is bounded by its ctx on the server and is not cut short by a
//     statement_timeout of the pool's connections: lock_timeout from ctx's
//     deadline and statement_timeout 0, set with set_config(..., true) in
//     the wait's own implicit transaction, sent in one batch with the lock
//     statement (one round trip; all prepared).
//
// A free lock costs no set_config: the lock is first tried
// (pg_try_advisory_lock, prepared), unless a wait of this instance is
// already queued for the name (a try could not succeed: dlock skips it the
// same way). Then the statements are: try (free lock) or the batch (held
// lock), and pg_advisory_unlock; the connection goes back to the pool at
// release, as the plain floor's. Not here, because they cost nothing per
// lock: the monitor's pings of idle lock connections. Off by default in
// dlock, so not here either: fencing tokens and holder records.
type pgWatchedFloor struct {
	p *pgxpool.Pool

	mu     sync.Mutex
	queued map[int64]int // waits in the server's queue, by key
}

func (f *pgWatchedFloor) warm(ctx context.Context, n int) error { return warmPool(ctx, f.p, n) }

// Names of the watched floor's prepared statements.
const (
	pgWFloorTry      = "bench_wfloor_try"
	pgWFloorLock     = "bench_wfloor_lock"
	pgWFloorUnlock   = "bench_wfloor_unlock"
	pgWFloorTimeouts = "bench_wfloor_timeouts"
)

// watchDelay is how long a lock is held before its watcher starts (dlock's).
const watchDelay = time.Millisecond

type pgWatchedHeld struct {
	conn  *pgxpool.Conn
	key   int64
	timer *time.Timer

	mu   sync.Mutex    // guards done and stopped
	done chan struct{} // the running watcher's; nil before it starts
	// stopped is set by Release: the timer's function must not start a
	// watcher any more.
	stopped bool
	lost    chan struct{} // closed when the watcher finds the session ended
}

func (f *pgWatchedFloor) lock(ctx context.Context, name string) (held, error) {
	conn, err := f.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	key := advisoryKey(name)
	f.mu.Lock()
	busy := f.queued[key] > 0
	f.mu.Unlock()
	ok := false
	if !busy {
		if err := conn.QueryRow(ctx, pgWFloorTry, key).Scan(&ok); err != nil {
			conn.Release()
			return nil, err
		}
	}
	if !ok {
		if err := f.wait(ctx, conn, key); err != nil {
			conn.Release()
			return nil, err
		}
	}
	h := &pgWatchedHeld{conn: conn, key: key, lost: make(chan struct{})}
	h.timer = time.AfterFunc(watchDelay, h.watch)
	return h, nil
}

// wait queues for key on conn's session, bounded by ctx: the timeouts and
// the lock in one batch (one implicit transaction, one round trip). A ctx
// ended meanwhile makes pgx close the connection, which frees the lock.
func (f *pgWatchedFloor) wait(ctx context.Context, conn *pgxpool.Conn, key int64) error {
	f.mu.Lock()
	f.queued[key]++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		if f.queued[key]--; f.queued[key] == 0 {
			delete(f.queued, key)
		}
		f.mu.Unlock()
	}()
	ms := int64(0)
	if dl, ok := ctx.Deadline(); ok {
		ms = max(time.Until(dl).Milliseconds()+2, 1)
	}
	c := conn.Conn()
	sdT, err := c.Prepare(ctx, pgWFloorTimeouts, "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', '0', true)")
	if err != nil {
		return err
	}
	sdL, err := c.Prepare(ctx, pgWFloorLock, "SELECT pg_advisory_lock($1::bigint)")
	if err != nil {
		return err
	}
	batch := &pgconn.Batch{}
	batch.ExecStatement(sdT, [][]byte{strconv.AppendInt(nil, ms, 10)}, nil, nil)
	batch.ExecStatement(sdL, [][]byte{strconv.AppendInt(nil, key, 10)}, nil, nil)
	_, err = c.PgConn().ExecBatch(ctx, batch).ReadAll()
	return err
}

// watch starts the watcher, unless the lock was released first.
func (h *pgWatchedHeld) watch() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	done := make(chan struct{})
	h.done = done
	pgc := h.conn.Conn().PgConn()
	go func() {
		defer close(done)
		var err error
		for err == nil {
			err = pgc.WaitForNotification(context.Background())
		}
		if pgc.IsClosed() {
			close(h.lost) // the lock is lost
		}
	}()
}

func (h *pgWatchedHeld) Release(ctx context.Context) error {
	h.timer.Stop()
	h.mu.Lock()
	h.stopped = true
	done := h.done
	h.mu.Unlock()
	pgc := h.conn.Conn().PgConn()
	var err error
	if done != nil { // pause the watcher
		nc := pgc.Conn()
		_ = nc.SetReadDeadline(time.Now())
		<-done
		_ = nc.SetReadDeadline(time.Time{})
		if pgc.IsClosed() {
			err = errors.New("pg watched floor: lock lost")
		}
	}
	if err != nil {
		_ = h.conn.Conn().Close(context.Background())
		h.conn.Release()
		return err
	}
	return pgUnlock(ctx, h.conn, pgWFloorUnlock, h.key)
}

func openPGWatchedFloor(tb testing.TB, _ string) locker {
	return &pgWatchedFloor{
		p: newPoolWith(tb, func(ctx context.Context, c *pgx.Conn) error {
			if _, err := c.Prepare(ctx, pgWFloorTry, "SELECT pg_try_advisory_lock($1::bigint)"); err != nil {
				return err
			}
			_, err := c.Prepare(ctx, pgWFloorUnlock, "SELECT pg_advisory_unlock($1::bigint)")
			return err
		}),
		queued: make(map[int64]int),
	}
}
