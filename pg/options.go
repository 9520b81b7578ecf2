package pg

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dlock-go/dlock/backend"
)

// Defaults of the options that a user may need to know by name.
const (
	// DefaultLossInterval bounds how long after its connection dies a lease
	// reports the loss (WithLossInterval).
	DefaultLossInterval = time.Second
	// DefaultFencingTable is the table WithFencing creates when given "".
	DefaultFencingTable = "dlock_fencing"
	// DefaultHolderTable is the table WithHolderTable creates when given "".
	DefaultHolderTable = "dlock_holders"
	// MaxSemaphoreLimit is the largest semaphore limit the backend accepts:
	// a try tests the limit's slot keys in one statement.
	MaxSemaphoreLimit = 1024
)

// Defaults of the tuning options.
const (
	// defaultOpTimeout bounds one query on a lock connection: a try, a
	// release, an undo (WithOpTimeout).
	defaultOpTimeout = 5 * time.Second
	// defaultMaxLockConns is the number of lock connections that tries
	// spread over before they share busy ones (WithMaxLockConns). With 4,
	// 64 goroutines taking distinct locks reached 0.5-0.7x the throughput
	// of the same code on 64 pooled connections (their tries and unlocks
	// queue behind each other); with 16, 0.84-1.02x.
	defaultMaxLockConns = 16
	// defaultMaxLeasesPerConn is the number of leases a lock connection
	// takes before tries move to another one (WithMaxLeasesPerConn).
	defaultMaxLeasesPerConn = 512
)

// Smallest values of the options that have one.
const (
	minLossInterval = 20 * time.Millisecond
	minOpTimeout    = 100 * time.Millisecond
	// maxIdentLen is PostgreSQL's longest identifier (NAMEDATALEN - 1):
	// the server cuts longer ones silently, so two names could meet.
	maxIdentLen = 63
)

// errBadOption is wrapped by every error of New about its arguments:
// backend.ErrInvalidOption (dlock.ErrInvalidOption).
var errBadOption = fmt.Errorf("pg: %w", backend.ErrInvalidOption)

// Option configures a Backend. An option given a value out of its range
// makes New return an error wrapping backend.ErrInvalidOption (also
// dlock.ErrInvalidOption) that names the option and the value; no value is
// clamped or ignored.
type Option func(*config)

type config struct {
	lossInterval time.Duration
	opTimeout    time.Duration
	maxLockConns int
	maxLeases    int
	fenceTable   string // "" = fencing off; else the sanitized identifier
	holderTable  string // "" = no holder records; else the sanitized identifier
	logger       *slog.Logger
	err          error // the first invalid option
}

// fail records the first invalid option.
func (c *config) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: "+format, append([]any{errBadOption}, args...)...)
	}
}

func newConfig(opts []Option) (config, error) {
	c := config{
		lossInterval: DefaultLossInterval,
		opTimeout:    defaultOpTimeout,
		maxLockConns: defaultMaxLockConns,
		maxLeases:    defaultMaxLeasesPerConn,
		logger:       slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c, c.err
}

// WithLossInterval sets the bound on loss detection for connections that
// die silently: every lock connection is pinged every d/2, each ping
// bounded by d/2, so a lease whose network went silent reports the loss
// (Lost closes) within about d. (A session that the server ends —
// terminated, restarted — is noticed within milliseconds, by reading the
// idle connection.) The pings also keep lock
// connections from being idle, so a server's idle_session_timeout larger
// than d/2 never ends a session that holds locks. d must be at least
// 20ms. The default is DefaultLossInterval (1s).
func WithLossInterval(d time.Duration) Option {
	return func(c *config) {
		if d < minLossInterval {
			c.fail("WithLossInterval(%v): below %v", d, minLossInterval)
			return
		}
		c.lossInterval = d
	}
}

// WithOpTimeout bounds each short query the backend runs on a lock
// connection (a try, a ping; a release whose ctx has no deadline — dlock's
// Lock.Release always gives one, its release timeout). A query that does
// not finish in time is taken as the death of its connection: the
// connection is closed, which releases every lock on it, and its leases
// report loss. d must be at least 100ms. The default is 5s.
func WithOpTimeout(d time.Duration) Option {
	return func(c *config) {
		if d < minOpTimeout {
			c.fail("WithOpTimeout(%v): below %v", d, minOpTimeout)
			return
		}
		c.opTimeout = d
	}
}

// WithMaxLockConns sets how many lock connections tries spread over before
// they queue on busy ones; they spread only while the pool has at least
// two connections to give at once, so one is left for a wait. It is not a
// cap on connections: a wait that had to queue on the server brings its
// own connection (when the pool has one to give), which then holds its
// lease (and others) until they are released. n must be at least 1. The
// default is 16.
func WithMaxLockConns(n int) Option {
	return func(c *config) {
		if n < 1 {
			c.fail("WithMaxLockConns(%d): below 1", n)
			return
		}
		c.maxLockConns = n
	}
}

// WithMaxLeasesPerConn sets how many leases a lock connection holds before
// new tries take another connection from the pool (when the pool has one
// to give without waiting; otherwise they share the existing ones).
// PostgreSQL walks every lock of a session at the end of each transaction,
// so each query on a session holding n locks costs O(n) on the server: at
// the default, 512, 5,000 held locks use about 10 connections. n must be at
// least 1.
func WithMaxLeasesPerConn(n int) Option {
	return func(c *config) {
		if n < 1 {
			c.fail("WithMaxLeasesPerConn(%d): below 1", n)
			return
		}
		c.maxLeases = n
	}
}

// WithFencing turns fencing tokens on: every lease carries a token
// (Lease.Token) that strictly increases per lock across all clients. The
// backend creates the table (CREATE TABLE IF NOT EXISTS, one row per lock
// that was ever taken with fencing: (space smallint, key bigint, token
// bigint)) at its first fenced acquisition, so the pool's role needs the
// right to create it once, and to insert and update it. table may be
// schema-qualified ("locks.fencing"); "" means DefaultFencingTable in the
// search path. Each part is used as written, quoted (so case matters); a
// name with more than two parts, an empty part, a NUL byte or a part
// longer than PostgreSQL's 63-byte identifiers is invalid. The token is
// taken in the same statement, hence the same round trip, as the lock; it
// costs a row update (a small write with its commit) per acquisition.
func WithFencing(table string) Option {
	return func(c *config) {
		c.fenceTable = c.table("WithFencing", table, DefaultFencingTable)
	}
}

// WithHolderTable turns holder records on: every acquisition writes who
// takes the lock (this process's host, pid and start, the owner text of
// dlock.WithOwner, the time) into a row of table, in the same statement
// as the lock, and its release deletes the row in the statement of the
// unlock; Guard.Holders then reports them (see the package doc, Holders).
// The backend creates the table (CREATE TABLE IF NOT EXISTS: (space
// smallint, key bigint, pid integer, shared boolean, rec text), one row
// per lock held) at its first acquisition, so the pool's role needs the
// right to create it once, and to insert, update and delete its rows.
// table is named as in WithFencing ("" means DefaultHolderTable). It
// costs a row insert and delete (writes with their commits) per
// acquisition (see the package doc, Holders, for a measurement).
func WithHolderTable(table string) Option {
	return func(c *config) {
		c.holderTable = c.table("WithHolderTable", table, DefaultHolderTable)
	}
}

// table checks the table name given to the option opt and returns it
// sanitized, or "" after recording the error.
func (c *config) table(opt, table, def string) string {
	if table == "" {
		table = def
	}
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		c.fail("%s(%q): more than two dot-separated parts (want \"table\" or \"schema.table\")", opt, table)
		return ""
	}
	for _, p := range parts {
		switch {
		case p == "":
			c.fail("%s(%q): an empty part", opt, table)
			return ""
		case strings.IndexByte(p, 0) >= 0:
			c.fail("%s(%q): a NUL byte", opt, table)
			return ""
		case len(p) > maxIdentLen:
			c.fail("%s(%q): a part of %d bytes (PostgreSQL identifiers have at most %d)", opt, table, len(p), maxIdentLen)
			return ""
		}
	}
	return pgx.Identifier(parts).Sanitize()
}

// WithLogger sets the logger for rare events (a connection found dead, a
// release that failed). The default, also given by a nil l, discards
// everything.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}
