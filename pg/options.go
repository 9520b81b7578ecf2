package pg

import (
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Defaults of the options.
const (
	// DefaultLossInterval bounds how long after its connection dies a lease
	// reports the loss (WithLossInterval).
	DefaultLossInterval = time.Second
	// DefaultOpTimeout bounds one query on a lock connection: a try, a
	// release, an undo (WithOpTimeout).
	DefaultOpTimeout = 5 * time.Second
	// DefaultMaxLockConns is the number of lock connections that tries
	// spread over before they share busy ones (WithMaxLockConns).
	DefaultMaxLockConns = 4
	// DefaultMaxLeasesPerConn is the number of leases a lock connection
	// takes before tries move to another one (WithMaxLeasesPerConn).
	DefaultMaxLeasesPerConn = 512
	// DefaultFencingTable is the table WithFencing creates when given "".
	DefaultFencingTable = "dlock_fencing"
	// MaxSemaphoreLimit is the largest semaphore limit the backend accepts:
	// a try tests the limit's slot keys in one statement.
	MaxSemaphoreLimit = 1024
)

// Option configures a Backend.
type Option func(*config)

type config struct {
	lossInterval time.Duration
	opTimeout    time.Duration
	maxLockConns int
	maxLeases    int
	fenceTable   string // "" = fencing off; else the sanitized identifier
	logger       *slog.Logger
}

func newConfig(opts []Option) config {
	c := config{
		lossInterval: DefaultLossInterval,
		opTimeout:    DefaultOpTimeout,
		maxLockConns: DefaultMaxLockConns,
		maxLeases:    DefaultMaxLeasesPerConn,
		logger:       slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c
}

// WithLossInterval sets the bound on loss detection for connections that
// die silently: every lock connection is pinged every d/2, each ping
// bounded by d/2, so a lease whose network went silent reports the loss
// (Lost closes) within about d. (A session that the server ends —
// terminated, restarted — is noticed within milliseconds, by reading the
// idle connection.) The pings also keep lock
// connections from being idle, so a server's idle_session_timeout larger
// than d/2 never ends a session that holds locks. Values below 20ms are
// raised to 20ms. The default is DefaultLossInterval (1s).
func WithLossInterval(d time.Duration) Option {
	return func(c *config) { c.lossInterval = max(d, 20*time.Millisecond) }
}

// WithOpTimeout bounds each short query the backend runs on a lock
// connection (a try, a ping; a release whose ctx has no deadline — dlock's
// Lock.Release always gives one, its release timeout). A query that does
// not finish in time is taken as the death of its connection: the
// connection is closed, which releases every lock on it, and its leases
// report loss. Values below 100ms
// are raised to 100ms. The default is DefaultOpTimeout (5s).
func WithOpTimeout(d time.Duration) Option {
	return func(c *config) { c.opTimeout = max(d, 100*time.Millisecond) }
}

// WithMaxLockConns sets how many lock connections tries spread over before
// they queue on busy ones; they spread only while the pool has at least
// two connections to give at once, so one is left for a wait. It is not a
// cap on connections: a wait that had to queue on the server brings its
// own connection (when the pool has one to give), which then holds its
// lease (and others) until they are released. Values below 1 are raised
// to 1. The default is DefaultMaxLockConns (4).
func WithMaxLockConns(n int) Option {
	return func(c *config) { c.maxLockConns = max(n, 1) }
}

// WithMaxLeasesPerConn sets how many leases a lock connection holds before
// new tries take another connection from the pool (when the pool has one
// to give without waiting; otherwise they share the existing ones).
// PostgreSQL walks every lock of a session at the end of each transaction,
// so each query on a session holding n locks costs O(n) on the server: at
// the default, DefaultMaxLeasesPerConn (512), 5,000 held locks use about 10
// connections. Values below 1 are raised to 1.
func WithMaxLeasesPerConn(n int) Option {
	return func(c *config) { c.maxLeases = max(n, 1) }
}

// WithFencing turns fencing tokens on: every lease carries a token
// (Lease.Token) that strictly increases per lock across all clients. The
// backend creates the table (CREATE TABLE IF NOT EXISTS, one row per lock
// that was ever taken with fencing: (space smallint, key bigint, token
// bigint)) at its first fenced acquisition, so the pool's role needs the
// right to create it once, and to insert and update it. table may be
// schema-qualified ("locks.fencing"); "" means DefaultFencingTable in the
// search path. The token is taken in the same statement, hence the same
// round trip, as the lock; it costs a row update (a small write with its
// commit) per acquisition.
func WithFencing(table string) Option {
	return func(c *config) {
		if table == "" {
			table = DefaultFencingTable
		}
		c.fenceTable = pgx.Identifier(strings.Split(table, ".")).Sanitize()
	}
}

// WithLogger sets the logger for rare events (a connection found dead, a
// release that failed). The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}
