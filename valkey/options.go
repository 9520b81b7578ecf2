package valkey

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// Defaults of the options.
const (
	// DefaultKeyPrefix starts every key and channel name this package uses.
	DefaultKeyPrefix = "dlock:"
	// DefaultLease is how long a lock outlives its holder when the holder
	// stops extending it (it crashed, or lost its network).
	DefaultLease = 30 * time.Second
)

// errBadOption is wrapped by every option error: backend.ErrInvalidOption
// (dlock.ErrInvalidOption).
var errBadOption = fmt.Errorf("valkey: %w", backend.ErrInvalidOption)

// Option configures a Backend or a RedLock.
type Option func(*config)

type config struct {
	prefix      string
	lease       time.Duration
	extendEvery time.Duration // 0: lease/3
	drift       time.Duration // -1: lease/100 + 2ms
	logger      *slog.Logger
	err         error

	// WithReplicas (replicas.go); 0: off.
	replicas       int
	replicaTimeout time.Duration
}

// WithKeyPrefix sets the prefix of every key and pub/sub channel (default
// "dlock:"). It must not contain '{' or '}', which would change the cluster
// hash slot of the keys.
func WithKeyPrefix(prefix string) Option {
	return func(c *config) {
		if strings.ContainsAny(prefix, "{}") {
			c.fail(fmt.Errorf("%w: key prefix %q contains '{' or '}'", errBadOption, prefix))
			return
		}
		c.prefix = prefix
	}
}

// WithLease sets the lease time (default 30s): how long a lock stays held
// on the server after its holder last extended it. A holder that crashes
// frees its locks within this time. At least 10ms.
func WithLease(d time.Duration) Option {
	return func(c *config) {
		if d < 10*time.Millisecond {
			c.fail(fmt.Errorf("%w: lease %v is below 10ms", errBadOption, d))
			return
		}
		c.lease = d
	}
}

// WithExtendEvery sets how often held leases are extended (default a third
// of the lease). It must leave time to retry before the lease's validity
// ends: below lease minus the drift allowance.
func WithExtendEvery(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail(fmt.Errorf("%w: extension period %v is not positive", errBadOption, d))
			return
		}
		c.extendEvery = d
	}
}

// WithDriftAllowance sets the clock-drift allowance (default 1% of the
// lease plus 2ms): a holder considers its lease valid until lease minus
// this allowance after it sent the request that acquired or last extended
// it, so that it learns of a loss before a server, whose clock may run a
// little fast, lets anyone else in. Zero is allowed; it must be below the
// lease.
func WithDriftAllowance(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail(fmt.Errorf("%w: drift allowance %v is negative", errBadOption, d))
			return
		}
		c.drift = d
	}
}

// WithLogger sets a logger for background events (extension failures,
// lost leases, lost pub/sub connections, a node that starts or stops
// refusing the client's credentials). The default discards them.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

func (c *config) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

func newConfig(opts []Option) (config, error) {
	c := config{prefix: DefaultKeyPrefix, lease: DefaultLease, drift: -1}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.err != nil {
		return c, c.err
	}
	if c.drift < 0 {
		c.drift = c.lease/100 + 2*time.Millisecond
	}
	if c.drift >= c.lease {
		return c, fmt.Errorf("%w: drift allowance %v is not below the lease %v", errBadOption, c.drift, c.lease)
	}
	if c.extendEvery == 0 {
		c.extendEvery = c.lease / 3
	}
	if c.extendEvery >= c.lease-c.drift {
		return c, fmt.Errorf("%w: extension period %v leaves no time before the lease's validity (%v - %v drift) ends", errBadOption, c.extendEvery, c.lease, c.drift)
	}
	if err := c.checkReplicas(); err != nil {
		return c, err
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}
