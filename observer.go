package dlock

import (
	"context"
	"errors"
	"log/slog"
	"path"
	"reflect"
	"time"
)

// Observer is told of the life of a Guard's locks, for logs, traces and
// metrics: acquisitions that start and end, releases, losses. Set one with
// WithObserver; WithLogger sets one that logs with log/slog, and the
// OpenTelemetry adapter (module github.com/dlock-go/dlock/otel) is another.
//
// dlock calls an Observer on the goroutine of the call that caused the
// event, except Lost, which may come from the goroutine that learned of the
// loss. Its methods must be quick, must not block, and must not call the
// Guard. With no Observer set, dlock does no observing work at all.
//
// Contexts flow through the observers in the order they were added: each
// AcquireStart gets the ctx the previous one returned, and the last one's
// is the ctx of the backend's calls (so a pgx or valkey-go tracer's spans
// nest under an acquisition span); likewise AcquireEnd, whose last ctx is
// kept with the held lock, passed to Released and Lost, and is the parent
// of Do's fn ctx. An observer must return a ctx derived from the one it is
// given, so that cancellation still flows from the caller.
type Observer interface {
	// AcquireStart is called when an acquisition (Do, TryDo, Acquire,
	// TryAcquire, Hold, TryHold) begins. The ctx it returns (derived from
	// ctx) is used for the acquisition and passed to AcquireEnd: a tracer
	// keeps its span there.
	AcquireStart(ctx context.Context, e AcquireEvent) context.Context
	// AcquireEnd is called when the acquisition ends, with e's Wait,
	// Attempts and Retried set; err is nil when the lock was taken. When it
	// was, the ctx returned is kept with the held lock and passed to
	// Released and Lost.
	AcquireEnd(ctx context.Context, e AcquireEvent, err error) context.Context
	// Released is called when a held lock is given up, with Release's
	// error (nil, or one matching ErrLockLost or another failure).
	Released(ctx context.Context, e HoldEvent, err error)
	// Lost is called once when dlock learns that a held lock was lost:
	// while held (Lost closed) or, with e.AtRelease set, only by Release.
	Lost(ctx context.Context, e HoldEvent)
}

// AcquireEvent describes an acquisition.
type AcquireEvent struct {
	Kind    string    // "mutex", "rwmutex read", "rwmutex write" or "semaphore"
	Backend string    // the backend's package name: "pg", "valkey", "fs", …
	Name    string    // the lock's name (may carry user data: see the otel module)
	Try     bool      // a single attempt (TryDo, TryAcquire, TryHold)
	Start   time.Time // when it began
	// Set for AcquireEnd:
	Wait     time.Duration // how long it took
	Attempts int           // backend calls made (a native wait counts once per call)
	Retried  int           // server errors a wait rode out
}

// HoldEvent describes a held lock.
type HoldEvent struct {
	Kind, Backend, Name string
	Acquired            time.Time     // when it was taken
	Held                time.Duration // how long it was held, up to the event
	Token               uint64        // its fencing token, 0 if none
	AtRelease           bool          // Lost: the loss was first learned by Release
}

// WithObserver adds o to the Guard's observers; they are told of every
// event in the order they were added. A nil o is ignored.
func WithObserver(o Observer) Option {
	return func(opts *options) {
		if o != nil {
			opts.observers = append(opts.observers, o)
		}
	}
}

// backendName is the package name of lease type L's backend.
func backendName[L any]() string {
	t := reflect.TypeFor[L]()
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if p := t.PkgPath(); p != "" {
		return path.Base(p)
	}
	return t.String()
}

// observed is an acquisition that observers are told of; nil when the
// Guard has none.
type observed struct {
	obs []Observer
	ctx context.Context // through the observers
	e   AcquireEvent
}

// observeStart tells the observers that an acquisition begins, and returns
// it with the ctx to acquire with; nil and ctx when there are none.
func (g *Guard[L]) observeStart(ctx context.Context, name string, try bool) (*observed, context.Context) {
	if len(g.opts.observers) == 0 {
		return nil, ctx
	}
	o := &observed{obs: g.opts.observers,
		e: AcquireEvent{Kind: g.kind, Backend: g.backend, Name: name, Try: try, Start: time.Now()}}
	for _, ob := range o.obs {
		ctx = ob.AcquireStart(ctx, o.e)
	}
	o.ctx = ctx
	return o, ctx
}

// end tells the observers how the acquisition ended and returns the ctx
// to keep with a taken lock.
func (o *observed) end(attempts, retried int, err error) context.Context {
	o.e.Wait, o.e.Attempts, o.e.Retried = time.Since(o.e.Start), attempts, retried
	ctx := o.ctx
	for _, ob := range o.obs {
		ctx = ob.AcquireEnd(ctx, o.e, err)
	}
	return ctx
}

// holdEvent describes l now.
func (l *Lock[L]) holdEvent() HoldEvent {
	tok, _ := l.Token()
	return HoldEvent{Kind: l.g.kind, Backend: l.g.backend, Name: l.name, Acquired: l.obs.acquired, Held: time.Since(l.obs.acquired), Token: tok}
}

// observeLost tells l's observers, once, that l was lost.
func (l *Lock[L]) observeLost(atRelease bool) {
	if l.obs == nil || !l.obs.lostTold.CompareAndSwap(false, true) {
		return
	}
	e := l.holdEvent()
	e.AtRelease = atRelease
	for _, ob := range l.g.opts.observers {
		ob.Lost(l.obs.ctx, e)
	}
}

// observeReleased tells l's observers of its release.
func (l *Lock[L]) observeReleased(err error) {
	if l.obs == nil {
		return
	}
	e := l.holdEvent()
	for _, ob := range l.g.opts.observers {
		ob.Released(l.obs.ctx, e, err)
	}
}

// logObserver is the Observer of WithLogger.
type logObserver struct{ l *slog.Logger }

func (o logObserver) AcquireStart(ctx context.Context, e AcquireEvent) context.Context { return ctx }

func (o logObserver) AcquireEnd(ctx context.Context, e AcquireEvent, err error) context.Context {
	switch {
	case err == nil:
		o.log(ctx, slog.LevelDebug, "dlock: acquired", e.Kind, e.Name, nil,
			slog.Duration("wait", e.Wait), slog.Int("attempts", e.Attempts), slog.Int("retried", e.Retried))
	case e.Retried > 0 || !isNotAcquired(err):
		o.log(ctx, slog.LevelWarn, "dlock: not acquired", e.Kind, e.Name, err,
			slog.Duration("wait", e.Wait), slog.Int("attempts", e.Attempts), slog.Int("retried", e.Retried))
	default:
		o.log(ctx, slog.LevelDebug, "dlock: not acquired", e.Kind, e.Name, err, slog.Duration("wait", e.Wait))
	}
	return ctx
}

func (o logObserver) Released(ctx context.Context, e HoldEvent, err error) {
	if err != nil {
		o.log(ctx, slog.LevelWarn, "dlock: release failed", e.Kind, e.Name, err, slog.Duration("held", e.Held))
		return
	}
	o.log(ctx, slog.LevelDebug, "dlock: released", e.Kind, e.Name, nil, slog.Duration("held", e.Held))
}

func (o logObserver) Lost(ctx context.Context, e HoldEvent) {
	msg := "dlock: lock lost while held"
	if e.AtRelease {
		msg = "dlock: lock lost, learned at release"
	}
	o.log(ctx, slog.LevelWarn, msg, e.Kind, e.Name, nil, slog.Duration("held", e.Held))
}

func (o logObserver) log(ctx context.Context, level slog.Level, msg, kind, name string, err error, extra ...slog.Attr) {
	if !o.l.Enabled(ctx, level) {
		return
	}
	attrs := append([]slog.Attr{slog.String("kind", kind), slog.String("name", logName(name))}, extra...)
	if err != nil {
		attrs = append(attrs, slog.Any("err", err))
	}
	o.l.LogAttrs(ctx, level, msg, attrs...)
}

// isNotAcquired reports whether err is an acquisition that did not take
// the lock because it was held (or the wait's ctx ended).
func isNotAcquired(err error) bool { return errors.Is(err, ErrNotAcquired) }
