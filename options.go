package dlock

import (
	"log/slog"
	"time"
)

// Option configures a Guard (a Mutex, either side of an RWMutex, or a
// Semaphore).
type Option func(*options)

type options struct {
	minWait, maxWait time.Duration
	releaseTimeout   time.Duration
	observers        []Observer
	owner            string // WithOwner
}

// Defaults for the options.
const (
	// DefaultMinWait and DefaultMaxWait bound the pause between two attempts
	// when a backend offers no native wait.
	DefaultMinWait = 10 * time.Millisecond
	DefaultMaxWait = 500 * time.Millisecond
	// DefaultReleaseTimeout bounds a Release whose ctx is already done.
	DefaultReleaseTimeout = 10 * time.Second
)

func newOptions(opts []Option) options {
	o := options{
		minWait:        DefaultMinWait,
		maxWait:        DefaultMaxWait,
		releaseTimeout: DefaultReleaseTimeout,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithBackoff sets the pause between two attempts to take a lock, for
// backends that offer no native wait, and between two attempts of a wait
// that rides out a server error (for every backend): it starts at min, doubles after each
// failed attempt up to max, and is jittered by ±50% so that waiters do not
// move in step. Values below a microsecond are raised to one; a max below
// min is raised to min.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) {
		o.minWait, o.maxWait = min, max // pace.New raises them as documented
	}
}

// WithReleaseTimeout bounds how long a release may take. A release runs even
// when the caller's ctx is already cancelled (Do releases after its ctx
// ends; Release detaches from ctx's cancellation), so this timeout is what
// stops it from hanging on a dead server. It is the one bound: it is the
// deadline of the ctx the backend's release gets (rounded up to the next
// millisecond, so that the releases running at once share one timer), and
// every backend honours that deadline rather than one of its own.
// Non-positive values keep the default, DefaultReleaseTimeout.
func WithReleaseTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.releaseTimeout = d
		}
	}
}

// WithLogger adds an Observer that logs with l: acquisitions and releases
// at Debug level; losses, failed releases (also one that failed after fn
// had returned its own error, so could not be returned) and waits that
// failed or rode out server errors at Warn. Attributes: kind, name
// (unquoted, cut to 64 bytes), err, and wait, attempts, retried or held.
// dlock is silent by default; a nil logger adds nothing.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.observers = append(o.observers, logObserver{l})
		}
	}
}
