package bench

import (
	"context"
	crand "crypto/rand"
	"crypto/sha1"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cirello.io/pglock"
	"github.com/bsm/redislock"
	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/fs"
	"github.com/dlock-go/dlock/pg"
	"github.com/dlock-go/dlock/valkey"
	"github.com/go-redsync/redsync/v4"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/gofrs/flock"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/lib/pq" // database/sql driver that cirello.io/pglock requires
	goredislib "github.com/redis/go-redis/v9"
	valkeygo "github.com/valkey-io/valkey-go"
	"github.com/valkey-io/valkey-go/valkeylock"
	"golang.org/x/sys/unix"
)

// Settings of the peers, stated in BENCHMARKS.md. Each peer runs with its
// defaults except where a default makes it unable to wait at all (redislock),
// give up while others still hold the lock (redsync's 32 tries), or wait far
// longer than a benchmark can (pglock's 20 s lease).
const (
	// redislockRetry is bsm/redislock's retry strategy: it does not retry by
	// default. A 10 ms linear backoff is an eager poll.
	redislockRetry = 10 * time.Millisecond
	// leaseTTL is the lease of redislock (which has no default) and redsync
	// (its default is 8 s).
	leaseTTL = 8 * time.Second
	// pglockLease is cirello.io/pglock's lease, and so how long its waiter
	// sleeps between two attempts (default 20 s); heartbeat at a quarter.
	pglockLease = time.Second
	// flockRetry is gofrs/flock's TryLockContext polling delay.
	flockRetry = 10 * time.Millisecond
	// poolSize bounds every connection pool: one connection per benchmark
	// goroutine plus slack.
	poolSize = 80
)

// locker is one library's way to take a named lock, waiting until it is free.
type locker interface {
	lock(ctx context.Context, name string) (held, error)
}

// held is a lock taken by a locker.
type held interface {
	Release(ctx context.Context) error
}

// warmer is a locker with a connection pool that can open n connections
// ahead of use (throughput opens them before its clock starts).
type warmer interface {
	warm(ctx context.Context, n int) error
}

// lib is one library (or a floor) over one backend.
type lib struct {
	backend string // "valkey", "pg", "fs"
	name    string // "dlock", a peer, or a floor: "floor", "2rtt", "floor-…" (floors_test.go)
	// open returns a new, independent instance (its own client, pool or
	// backend) and registers its cleanup with tb. dir is the lock directory
	// of the file backends, shared by the instances of one benchmark.
	open func(tb testing.TB, dir string) locker
	// waits is false for floors that cannot wait for a held lock.
	waits bool
}

// only names the one benchmark (its top-level name) that measures a
// library, for the libraries (backend/name) not measured by them all.
var only = map[string]string{
	"valkey/dlock-sentinel":  "BenchmarkUncontended",
	"valkey/dlock-replicas1": "BenchmarkUncontended",
}

// measures reports whether the benchmark named bench measures l.
func (l lib) measures(bench string) bool {
	o, ok := only[l.backend+"/"+l.name]
	return !ok || o == bench
}

// libs lists every library measured, per backend, in table order: dlock,
// then the floors and the peers it is set against, and last the peers
// whose hand-off takes from milliseconds to a second (redsync, redislock,
// pglock). (The benchmarks run a backend's libraries in turns, in a new
// random order each turn.)
var libs = []lib{
	{"valkey", "dlock", openDlockValkey, true},
	{"valkey", "valkeylock", openValkeylock, true},
	{"valkey", "floor", openValkeyFloor, true},
	{"valkey", "2rtt", openValkey2RTT, false},
	{"valkey", "floor-fenced", openValkeyFencedFloor, false},
	{"valkey", "floor-defaults", openValkeyDefaultsFloor, false},
	{"valkey", "floor-defaults-fair", openValkeyFairFloor, true},
	{"valkey", "redislock", openRedislock, true},
	{"valkey", "redsync", openRedsync, true},
	// The cost of valkey.WithReplicas(1): dlock over the Sentinel group's
	// primary (which has two replicas), without and with the option; only
	// in BenchmarkUncontended (see only).
	{"valkey", "dlock-sentinel", openDlockSentinel(0), true},
	{"valkey", "dlock-replicas1", openDlockSentinel(1), true},
	{"pg", "dlock", openDlockPG, true},
	{"pg", "floor", openPGFloor, true},
	{"pg", "floor-watched", openPGWatchedFloor, true},
	{"pg", "2rtt", openPG2RTT, false},
	{"pg", "pglock", openPglock, true},
	{"fs", "dlock", openDlockFS(true), true},
	{"fs", "dlock-nofencing", openDlockFS(false), true},
	{"fs", "gofrs-flock", openGofrsFlock, true},
	{"fs", "floor", openRawFlock, true},
	{"fs", "floor-samecalls", openFSSameCalls, false},
	{"fs", "floor-fair", openFSFairFloor(false), true},
	{"fs", "floor-fair-samecalls", openFSFairFloor(true), true},
}

// ---------------------------------------------------------------- valkey

func valkeyAddr(tb testing.TB) string {
	return dlocktest.RequireEnv(tb, "DLOCK_TEST_VALKEY_ADDR")
}

func newValkeyClient(tb testing.TB) valkeygo.Client {
	c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{valkeyAddr(tb)}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

type dlockLocker[L backend.Lease] struct {
	g *dlock.Guard[L]
}

func (d dlockLocker[L]) lock(ctx context.Context, name string) (held, error) {
	lk, err := d.g.Acquire(ctx, name)
	if err != nil {
		return nil, err
	}
	return lk, nil
}

func openDlockValkey(tb testing.TB, _ string) locker {
	c := newValkeyClient(tb)
	b, err := valkey.New(c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	return dlockLocker[*valkey.Lease]{dlock.NewMutex(b)}
}

// openDlockSentinel opens dlock over a client of the primary of the
// Sentinel group DLOCK_TEST_VALKEY_SENTINEL (master "dlock"), with
// valkey.WithReplicas(replicas, 1s) if replicas > 0.
func openDlockSentinel(replicas int) func(tb testing.TB, _ string) locker {
	return func(tb testing.TB, _ string) locker {
		var sentinels []string
		for a := range strings.SplitSeq(dlocktest.RequireEnv(tb, "DLOCK_TEST_VALKEY_SENTINEL"), ",") {
			sentinels = append(sentinels, strings.TrimSpace(a))
		}
		c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: sentinels,
			Sentinel: valkeygo.SentinelOption{MasterSet: "dlock"}})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(c.Close)
		var opts []valkey.Option
		if replicas > 0 {
			opts = append(opts, withReplicas(tb, replicas, time.Second))
		}
		b, err := valkey.New(c, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = b.Close() })
		return dlockLocker[*valkey.Lease]{dlock.NewMutex(b)}
	}
}

type valkeylockLocker struct{ l valkeylock.Locker }

// valkeylockHeld is the cancel function valkeylock returns: calling it
// deletes the key and returns once it is deleted.
type valkeylockHeld context.CancelFunc

func (h valkeylockHeld) Release(context.Context) error { h(); return nil }

func (v valkeylockLocker) lock(ctx context.Context, name string) (held, error) {
	_, cancel, err := v.l.WithContext(ctx, name)
	if err != nil {
		return nil, err
	}
	return valkeylockHeld(cancel), nil
}

func openValkeylock(tb testing.TB, _ string) locker {
	l, err := valkeylock.NewLocker(valkeylock.LockerOption{
		ClientOption: valkeygo.ClientOption{InitAddress: []string{valkeyAddr(tb)}},
		KeyMajority:  1, // one key on one node
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(l.Close)
	return valkeylockLocker{l}
}

func newGoRedis(tb testing.TB) *goredislib.Client {
	c := goredislib.NewClient(&goredislib.Options{Addr: valkeyAddr(tb), PoolSize: poolSize})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

type redsyncLocker struct{ rs *redsync.Redsync }

type redsyncHeld redsync.Mutex

func (h *redsyncHeld) Release(ctx context.Context) error {
	ok, err := (*redsync.Mutex)(h).UnlockContext(ctx)
	if err == nil && !ok {
		err = errors.New("redsync: unlock failed")
	}
	return err
}

func (r redsyncLocker) lock(ctx context.Context, name string) (held, error) {
	// Its default of 32 tries gives up after about 5 s while others still
	// hold the lock; the benchmark waits until ctx is done, like the others.
	m := r.rs.NewMutex(name, redsync.WithTries(1<<30), redsync.WithExpiry(leaseTTL))
	if err := m.LockContext(ctx); err != nil {
		return nil, err
	}
	return (*redsyncHeld)(m), nil
}

func openRedsync(tb testing.TB, _ string) locker {
	return redsyncLocker{redsync.New(goredis.NewPool(newGoRedis(tb)))}
}

type redislockLocker struct {
	c   *redislock.Client
	opt *redislock.Options
}

func (r redislockLocker) lock(ctx context.Context, name string) (held, error) {
	l, err := r.c.Obtain(ctx, name, leaseTTL, r.opt)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func openRedislock(tb testing.TB, _ string) locker {
	return redislockLocker{
		c:   redislock.New(newGoRedis(tb)),
		opt: &redislock.Options{RetryStrategy: redislock.LinearBackoff(redislockRetry)},
	}
}

// valkeyFloor is the cheapest correct hand-written lock on a valkey-go
// client: SET key token NX PX, released by a compare-and-delete script run
// with EVALSHA (EVAL when the server does not know it yet). Tokens are a
// random per-instance prefix and a counter: unique, and cheap. It waits by
// polling every valkeyFloorPoll (it has no notification).
type valkeyFloor struct {
	c      valkeygo.Client
	prefix string
	n      *atomic.Uint64
}

type valkeyFloorHeld struct {
	f          valkeyFloor
	key, token string
}

// valkeyFloorPoll is the hand-written valkey lock's polling delay.
const valkeyFloorPoll = time.Millisecond

const valkeyUnlockScript = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`

var valkeyUnlockSHA = scriptSHA(valkeyUnlockScript)

// scriptSHA is the SHA1 digest of a Lua script, as EVALSHA names it.
func scriptSHA(script string) string {
	sum := sha1.Sum([]byte(script))
	return hex.EncodeToString(sum[:])
}

func (f valkeyFloor) lock(ctx context.Context, name string) (held, error) {
	key := "bench-floor:" + name
	token := f.prefix + strconv.FormatUint(f.n.Add(1), 36)
	px := leaseTTL.Milliseconds()
	for {
		err := f.c.Do(ctx, f.c.B().Set().Key(key).Value(token).Nx().PxMilliseconds(px).Build()).Error()
		if err == nil {
			return &valkeyFloorHeld{f, key, token}, nil
		}
		if !valkeygo.IsValkeyNil(err) {
			return nil, err
		}
		t := time.NewTimer(valkeyFloorPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func (h *valkeyFloorHeld) Release(ctx context.Context) error {
	c := h.f.c
	n, err := c.Do(ctx, c.B().Evalsha().Sha1(valkeyUnlockSHA).Numkeys(1).Key(h.key).Arg(h.token).Build()).AsInt64()
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		n, err = c.Do(ctx, c.B().Eval().Script(valkeyUnlockScript).Numkeys(1).Key(h.key).Arg(h.token).Build()).AsInt64()
	}
	if err == nil && n != 1 {
		err = errors.New("valkey floor: lock not held at release")
	}
	return err
}

func openValkeyFloor(tb testing.TB, _ string) locker {
	var r [8]byte
	_, _ = crand.Read(r[:])
	return valkeyFloor{newValkeyClient(tb), hex.EncodeToString(r[:]) + ":", new(atomic.Uint64)}
}

// valkey2RTT is the floor of an acquire + release: one PING each.
type valkey2RTT struct{ c valkeygo.Client }

func (v valkey2RTT) lock(ctx context.Context, _ string) (held, error) {
	if err := v.c.Do(ctx, v.c.B().Ping().Build()).Error(); err != nil {
		return nil, err
	}
	return v, nil
}

func (v valkey2RTT) Release(ctx context.Context) error {
	return v.c.Do(ctx, v.c.B().Ping().Build()).Error()
}

func openValkey2RTT(tb testing.TB, _ string) locker { return valkey2RTT{newValkeyClient(tb)} }

// ---------------------------------------------------------------- PostgreSQL

func pgURL(tb testing.TB) string {
	return dlocktest.RequireEnv(tb, "DLOCK_TEST_PG_URL")
}

func newPool(tb testing.TB) *pgxpool.Pool { return newPoolWith(tb, nil) }

// newPoolWith returns a pool whose new connections run afterConnect.
func newPoolWith(tb testing.TB, afterConnect func(context.Context, *pgx.Conn) error) *pgxpool.Pool {
	cfg, err := pgxpool.ParseConfig(pgURL(tb))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = poolSize
	cfg.AfterConnect = afterConnect
	if w, ok := pgDialWraps.Load(tb); ok {
		wrap, dial := w.(func(net.Conn) net.Conn), cfg.ConnConfig.DialFunc
		cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return wrap(c), nil
		}
	}
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

func openDlockPG(tb testing.TB, _ string) locker {
	p := newPool(tb)
	b, err := pg.New(p)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close() }) // registered after the pool's: runs before it
	return dlockPG{dlockLocker[*pg.Lease]{dlock.NewMutex(b)}, b, p}
}

// dlockPG is dlock over PostgreSQL, with its connection count for
// BenchmarkScale.
type dlockPG struct {
	dlockLocker[*pg.Lease]
	b *pg.Backend
	p *pgxpool.Pool
}

func (d dlockPG) warm(ctx context.Context, n int) error { return warmPool(ctx, d.p, n) }

// warmPool opens n connections of p at once (fewer if p holds fewer) and
// gives them back, idle.
func warmPool(ctx context.Context, p *pgxpool.Pool, n int) error {
	n = min(n, int(p.Config().MaxConns))
	conns := make([]*pgxpool.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() { conns[i], errs[i] = p.Acquire(ctx) })
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			c.Release()
		}
	}
	return errors.Join(errs...)
}

// warmDB is warmPool for a database/sql pool.
func warmDB(ctx context.Context, db *sql.DB, n int) error {
	conns := make([]*sql.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			if conns[i], errs[i] = db.Conn(ctx); errs[i] == nil {
				errs[i] = conns[i].PingContext(ctx)
			}
		})
	}
	wg.Wait()
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
	return errors.Join(errs...)
}

func (d dlockPG) lockConns() int { return d.b.Stats().LockConns }

type pglockLocker struct {
	c  *pglock.Client
	db *sql.DB
}

func (p pglockLocker) warm(ctx context.Context, n int) error { return warmDB(ctx, p.db, n) }

func (p pglockLocker) lock(ctx context.Context, name string) (held, error) {
	l, err := p.c.AcquireContext(ctx, name)
	if err != nil {
		return nil, err
	}
	return (*pglockHeld)(l), nil
}

type pglockHeld pglock.Lock

func (h *pglockHeld) Release(context.Context) error { return (*pglock.Lock)(h).Close() }

func openPglock(tb testing.TB, _ string) locker {
	db, err := sql.Open("postgres", pgURL(tb))
	if err != nil {
		tb.Fatal(err)
	}
	db.SetMaxOpenConns(poolSize)
	db.SetMaxIdleConns(poolSize)
	tb.Cleanup(func() { _ = db.Close() })
	c, err := pglock.New(db,
		pglock.WithCustomTable("bench_pglock"),
		pglock.WithLeaseDuration(pglockLease),
		pglock.WithHeartbeatFrequency(pglockLease/4))
	if err != nil {
		tb.Fatal(err)
	}
	_ = c.TryCreateTable()
	return pglockLocker{c, db}
}

// advisoryKey maps a name to an advisory key (floor only: collisions do not
// matter there).
func advisoryKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(name))
	return int64(h.Sum64())
}

// pgFloor is the cheapest correct hand-written lock on a pgx pool: a pooled
// connection, prepared pg_advisory_lock (it waits in the server's queue; a
// ctx cancelled meanwhile makes pgx close the connection, which frees the
// lock), prepared pg_advisory_unlock, the connection back to the pool. A
// connection whose unlock failed is closed, never pooled (pgxpool does not
// reset sessions).
type pgFloor struct{ p *pgxpool.Pool }

func (f pgFloor) warm(ctx context.Context, n int) error { return warmPool(ctx, f.p, n) }

type pgFloorHeld struct {
	conn *pgxpool.Conn
	key  int64
}

// Names of the floor's prepared statements.
const (
	pgFloorLock   = "bench_floor_lock"
	pgFloorUnlock = "bench_floor_unlock"
)

func (f pgFloor) lock(ctx context.Context, name string) (held, error) {
	conn, err := f.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	key := advisoryKey(name)
	if _, err := conn.Exec(ctx, pgFloorLock, key); err != nil {
		conn.Release()
		return nil, err
	}
	return &pgFloorHeld{conn, key}, nil
}

func (h *pgFloorHeld) Release(ctx context.Context) error {
	return pgUnlock(ctx, h.conn, pgFloorUnlock, h.key)
}

// pgUnlock runs the prepared unlock statement stmt for key on conn and
// gives conn back to the pool; a connection whose unlock failed is closed
// first, never pooled (pgxpool does not reset sessions).
func pgUnlock(ctx context.Context, conn *pgxpool.Conn, stmt string, key int64) error {
	var ok bool
	err := conn.QueryRow(ctx, stmt, key).Scan(&ok)
	if err == nil && !ok {
		err = errors.New("pg_advisory_unlock: not held")
	}
	if err != nil {
		_ = conn.Conn().Close(context.Background())
	}
	conn.Release()
	return err
}

func openPGFloor(tb testing.TB, _ string) locker {
	return pgFloor{newPoolWith(tb, func(ctx context.Context, c *pgx.Conn) error {
		if _, err := c.Prepare(ctx, pgFloorLock, "select pg_advisory_lock($1)"); err != nil {
			return err
		}
		_, err := c.Prepare(ctx, pgFloorUnlock, "select pg_advisory_unlock($1)")
		return err
	})}
}

// pg2RTT is the floor of two round trips: SELECT 1 twice on one connection.
type pg2RTT struct{ p *pgxpool.Pool }

func (f pg2RTT) warm(ctx context.Context, n int) error { return warmPool(ctx, f.p, n) }

type pg2RTTHeld pgxpool.Conn

func (f pg2RTT) lock(ctx context.Context, _ string) (held, error) {
	conn, err := f.p.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		conn.Release()
		return nil, err
	}
	return (*pg2RTTHeld)(conn), nil
}

func (h *pg2RTTHeld) Release(ctx context.Context) error {
	conn := (*pgxpool.Conn)(h)
	defer conn.Release()
	_, err := conn.Exec(ctx, "select 1")
	return err
}

func openPG2RTT(tb testing.TB, _ string) locker { return pg2RTT{newPool(tb)} }

// ---------------------------------------------------------------- files

// paths caches the lock file paths of the peers and the floor, so that
// building a path is not counted against them.
var paths sync.Map // dir + "\x00" + name -> path

func lockPath(dir, name string) string {
	key := dir + "\x00" + name
	if p, ok := paths.Load(key); ok {
		return p.(string)
	}
	p := filepath.Join(dir, name)
	paths.Store(key, p)
	return p
}

func openDlockFS(fencing bool) func(tb testing.TB, dir string) locker {
	return func(tb testing.TB, dir string) locker {
		b, err := fs.New(dir, fs.WithFencing(fencing))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = b.Close() })
		return dlockLocker[*fs.Lease]{dlock.NewMutex(b)}
	}
}

type gofrsLocker struct{ dir string }

type gofrsHeld flock.Flock

func (h *gofrsHeld) Release(context.Context) error { return (*flock.Flock)(h).Unlock() }

func (g gofrsLocker) lock(ctx context.Context, name string) (held, error) {
	f := flock.New(lockPath(g.dir, name))
	ok, err := f.TryLockContext(ctx, flockRetry)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("gofrs/flock: not locked: %w", ctx.Err())
	}
	return (*gofrsHeld)(f), nil
}

func openGofrsFlock(_ testing.TB, dir string) locker { return gofrsLocker{dir} }

// rawFlock is the floor for files: open, flock(LOCK_EX) (blocking),
// flock(LOCK_UN), close.
type rawFlock struct{ dir string }

type rawFD int

func (fd rawFD) Release(context.Context) error {
	err := unix.Flock(int(fd), unix.LOCK_UN)
	if cerr := unix.Close(int(fd)); err == nil {
		err = cerr
	}
	return err
}

func (r rawFlock) lock(_ context.Context, name string) (held, error) {
	fd, err := unix.Open(lockPath(r.dir, name), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		_ = unix.Close(fd)
		return nil, err
	}
	return rawFD(fd), nil
}

func openRawFlock(_ testing.TB, dir string) locker { return rawFlock{dir} }
