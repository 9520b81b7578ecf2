// Package dlockotel turns dlock's events into OpenTelemetry traces and
// metrics: give a Guard the Observer that NewObserver returns.
//
//	obs := dlockotel.NewObserver() // the global TracerProvider and MeterProvider
//	mu := dlock.NewMutex(backend, dlock.WithObserver(obs))
//
// It is a module of its own (github.com/dlock-go/dlock/otel), so that users
// of dlock who do not want OpenTelemetry never download it.
//
// # Spans
//
// Each acquisition is a span named "dlock.acquire", a child of the span in
// the ctx given to Do, TryDo, Acquire (…), from its start to the moment the
// lock was taken or given up. Each lock taken is then a span named
// "dlock.hold", a sibling of the acquire span (the same parent) with a link
// to it, which ends when the lock is released. (When the ctx has no span,
// the acquire span is a root and the hold span its child, so that the two
// stay in one trace.) A loss adds an event named
// "dlock.lost" to the hold span. Their attributes:
//
//	dlock.lock.kind          mutex, rwmutex or semaphore               both spans
//	dlock.lock.mode          read or write (rwmutex only)              both spans
//	dlock.backend            the backend's package: pg, valkey, fs, …  both spans
//	dlock.lock.name          the lock's name, only with WithLockNames  both spans
//	dlock.acquire.try        a single attempt (TryDo, TryAcquire, …)   acquire
//	dlock.acquire.outcome    acquired, held, timeout, canceled, error  acquire
//	dlock.acquire.wait       seconds the acquisition took              acquire
//	dlock.acquire.attempts   backend calls made                        acquire
//	dlock.acquire.retried    server errors a wait rode out             acquire
//	dlock.lock.token         fencing token, where the backend has one  hold
//	dlock.hold.outcome       released, lost or error                   hold
//	dlock.lost.at_release    the loss was learned only by the release  dlock.lost event
//	error.type               what failed, for an outcome of error      both spans
//
// An acquisition that did not take the lock because it was held (a try) or
// because its ctx ended (the ctx deadline is dlock's timeout) is an
// expected outcome, not an error: its span's status stays unset. Any other
// failure to acquire sets the acquire span's status to Error; a lost lock
// or a failed release sets the hold span's. The error's text (which names
// the lock) is recorded, as the status description and an exception event,
// only with WithLockNames; without it the description is what failed and
// its error.type, e.g. "acquire failed: invalid_name".
//
// # Metrics
//
//	dlock.acquire.duration  histogram, s             time acquisitions took, by kind, mode, backend, try, outcome
//	dlock.hold.duration     histogram, s             time locks were held, by kind, mode, backend, hold outcome
//	dlock.acquired          counter, {acquisition}   locks taken, by kind, mode, backend, try
//	dlock.not_acquired      counter, {acquisition}   acquisitions that ended without the lock, by kind, mode, backend, try, outcome
//	dlock.lost              counter, {loss}          locks lost, by kind, mode, backend, at_release
//	dlock.held              updowncounter, {lock}    locks held now (taken and not yet released), by kind, mode, backend
//
// # Lock names
//
// Lock names are often made of user data — an account, an order, a file
// path — so they are recorded only when WithLockNames is given, and then on
// spans only: metrics never carry a name, which would make a time series
// per name.
//
// # Contexts
//
// The ctx that dlock hands back to the Observer carries the spans: the
// acquire span's ctx (trace.SpanFromContext) until the acquisition ends,
// then the hold span's. Metric measurements are recorded with those
// contexts, so an SDK that keeps exemplars links them to the spans.
//
// dlock hands these contexts on: the backend's calls during an
// acquisition get the acquire span's ctx, so spans that a backend's client
// makes (a pgx or valkey-go tracer) are children of dlock.acquire; and
// Do's function gets a ctx derived from the hold span's, so the spans it
// makes are children of dlock.hold.
package dlockotel

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/dlock-go/dlock"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/dlock-go/dlock/otel"

// Span, event and metric names.
const (
	SpanAcquire = "dlock.acquire"
	SpanHold    = "dlock.hold"
	EventLost   = "dlock.lost"

	MetricAcquireDuration = "dlock.acquire.duration"
	MetricHoldDuration    = "dlock.hold.duration"
	MetricAcquired        = "dlock.acquired"
	MetricNotAcquired     = "dlock.not_acquired"
	MetricLost            = "dlock.lost"
	MetricHeld            = "dlock.held"
)

// Attribute keys.
const (
	KeyKind           = attribute.Key("dlock.lock.kind")
	KeyMode           = attribute.Key("dlock.lock.mode")
	KeyBackend        = attribute.Key("dlock.backend")
	KeyName           = attribute.Key("dlock.lock.name")
	KeyTry            = attribute.Key("dlock.acquire.try")
	KeyAcquireOutcome = attribute.Key("dlock.acquire.outcome")
	KeyWait           = attribute.Key("dlock.acquire.wait")
	KeyAttempts       = attribute.Key("dlock.acquire.attempts")
	KeyRetried        = attribute.Key("dlock.acquire.retried")
	KeyToken          = attribute.Key("dlock.lock.token")
	KeyHoldOutcome    = attribute.Key("dlock.hold.outcome")
	KeyLostAtRelease  = attribute.Key("dlock.lost.at_release")
	KeyErrorType      = attribute.Key("error.type") // the semantic conventions' own
)

// Values of dlock.acquire.outcome and dlock.hold.outcome.
const (
	OutcomeAcquired = "acquired" // the lock was taken
	OutcomeHeld     = "held"     // a try found it held elsewhere
	OutcomeTimeout  = "timeout"  // a wait's ctx deadline passed
	OutcomeCanceled = "canceled" // a wait's ctx was canceled
	OutcomeError    = "error"    // anything else: bad input, a server error, …
	OutcomeReleased = "released" // held until released
	OutcomeLost     = "lost"     // lost while held, or learned at release

	errorTypeOther = "_OTHER"
)

// Option configures NewObserver.
type Option func(*config)

type config struct {
	tp    trace.TracerProvider
	mp    metric.MeterProvider
	names bool
}

// WithTracerProvider sets the TracerProvider spans come from; the default
// is the global one (otel.GetTracerProvider) at the time of NewObserver. A
// nil tp is ignored.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) {
		if tp != nil {
			c.tp = tp
		}
	}
}

// WithMeterProvider sets the MeterProvider metrics go to; the default is
// the global one (otel.GetMeterProvider) at the time of NewObserver. A nil
// mp is ignored.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) {
		if mp != nil {
			c.mp = mp
		}
	}
}

// WithLockNames records each lock's name on its spans (attribute
// dlock.lock.name), and the text of errors, which names the lock, in the
// spans' status and exception events. It is off by default because names
// often carry user data (account numbers, e-mail addresses, file paths)
// that should not leave the process; turn it on only when the names are
// safe to export. Metrics never carry names, with or without it.
func WithLockNames() Option {
	return func(c *config) { c.names = true }
}

// Observer is a dlock.Observer that makes OpenTelemetry spans and metrics;
// see the package documentation for what it records. Make one with
// NewObserver; it is safe for concurrent use, and one Observer may serve
// any number of Guards.
type Observer struct {
	tracer trace.Tracer
	names  bool

	acquireDuration metric.Float64Histogram
	holdDuration    metric.Float64Histogram
	acquired        metric.Int64Counter
	notAcquired     metric.Int64Counter
	lost            metric.Int64Counter
	held            metric.Int64UpDownCounter

	sets  cache[setKey, measure]
	spans cache[spanKey, spanOptions]
}

var _ dlock.Observer = (*Observer)(nil)

// Bucket boundaries, in seconds. Waits are usually short (a free lock is
// taken in one round trip) but reach the callers' timeouts; holds span a
// request to a nightly job.
var (
	acquireBuckets = []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	holdBuckets    = []float64{0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400}
)

// NewObserver returns an Observer that records spans with the
// TracerProvider and metrics with the MeterProvider of its options (by
// default the global ones). Set it on Guards with dlock.WithObserver.
//
// When the MeterProvider fails to make an instrument, the error goes to
// otel.Handle and that metric is not recorded; everything else works.
func NewObserver(opts ...Option) *Observer {
	c := config{}
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	o := &Observer{tracer: c.tp.Tracer(ScopeName), names: c.names}
	m := c.mp.Meter(ScopeName)
	noop := metricnoop.Meter{}
	check := func(err error) bool {
		if err != nil {
			otel.Handle(err)
			return false
		}
		return true
	}
	var err error
	if o.acquireDuration, err = m.Float64Histogram(MetricAcquireDuration, metric.WithUnit("s"),
		metric.WithDescription("Time acquisitions of distributed locks took, whether they took the lock or not."),
		metric.WithExplicitBucketBoundaries(acquireBuckets...)); !check(err) {
		o.acquireDuration, _ = noop.Float64Histogram(MetricAcquireDuration)
	}
	if o.holdDuration, err = m.Float64Histogram(MetricHoldDuration, metric.WithUnit("s"),
		metric.WithDescription("Time distributed locks were held, from acquisition to release."),
		metric.WithExplicitBucketBoundaries(holdBuckets...)); !check(err) {
		o.holdDuration, _ = noop.Float64Histogram(MetricHoldDuration)
	}
	if o.acquired, err = m.Int64Counter(MetricAcquired, metric.WithUnit("{acquisition}"),
		metric.WithDescription("Distributed locks taken.")); !check(err) {
		o.acquired, _ = noop.Int64Counter(MetricAcquired)
	}
	if o.notAcquired, err = m.Int64Counter(MetricNotAcquired, metric.WithUnit("{acquisition}"),
		metric.WithDescription("Acquisitions of distributed locks that ended without the lock: held elsewhere, timed out, canceled or failed.")); !check(err) {
		o.notAcquired, _ = noop.Int64Counter(MetricNotAcquired)
	}
	if o.lost, err = m.Int64Counter(MetricLost, metric.WithUnit("{loss}"),
		metric.WithDescription("Distributed locks lost while held.")); !check(err) {
		o.lost, _ = noop.Int64Counter(MetricLost)
	}
	if o.held, err = m.Int64UpDownCounter(MetricHeld, metric.WithUnit("{lock}"),
		metric.WithDescription("Distributed locks held now: taken and not yet released.")); !check(err) {
		o.held, _ = noop.Int64UpDownCounter(MetricHeld)
	}
	return o
}

// origKey keeps, in the acquire span's ctx, the ctx the acquisition was
// started with: the hold span's parent is its span.
type origKey struct{}

// AcquireStart starts the acquire span.
func (o *Observer) AcquireStart(ctx context.Context, e dlock.AcquireEvent) context.Context {
	opts := o.spanOptions(e.Kind, e.Backend, e.Try).acquire
	if o.names {
		opts = append(opts[:len(opts):len(opts)], trace.WithAttributes(KeyName.String(e.Name)))
	}
	sctx, _ := o.tracer.Start(ctx, SpanAcquire, opts...)
	return context.WithValue(sctx, origKey{}, ctx)
}

// AcquireEnd ends the acquire span, records the acquisition's metrics and,
// when the lock was taken, starts the hold span.
func (o *Observer) AcquireEnd(ctx context.Context, e dlock.AcquireEvent, err error) context.Context {
	outcome, errType := acquireOutcome(err)
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		attrs := []attribute.KeyValue{
			KeyAcquireOutcome.String(outcome),
			KeyWait.Float64(e.Wait.Seconds()),
			KeyAttempts.Int(e.Attempts),
			KeyRetried.Int(e.Retried),
		}
		if errType != "" {
			attrs = append(attrs, KeyErrorType.String(errType))
		}
		span.SetAttributes(attrs...)
		if outcome == OutcomeError {
			o.setError(span, "acquire failed", errType, err)
		}
		span.End(trace.WithTimestamp(e.Start.Add(e.Wait)))
	} else {
		span.End()
	}

	acq := o.set(setKey{of: setAcquire, kind: e.Kind, backend: e.Backend, flag: e.Try, outcome: outcome, errType: errType})
	o.acquireDuration.Record(ctx, e.Wait.Seconds(), acq.rec...)
	if err != nil {
		o.notAcquired.Add(ctx, 1, acq.add...)
		return ctx
	}
	o.acquired.Add(ctx, 1, o.set(setKey{of: setAcquired, kind: e.Kind, backend: e.Backend, flag: e.Try}).add...)

	// The hold span is the acquire span's sibling: its parent is the span
	// the acquisition started under. With none, it is the acquire span's
	// child, so that the two stay in one trace (and one sampling
	// decision). The link is added after the start (samplers do not see
	// it) so that an unsampled hold costs nothing more.
	if orig, ok := ctx.Value(origKey{}).(context.Context); ok && trace.SpanContextFromContext(orig).IsValid() {
		ctx = orig
	}
	opts := o.spanOptions(e.Kind, e.Backend, false).hold
	if o.names {
		opts = append(opts[:len(opts):len(opts)], trace.WithAttributes(KeyName.String(e.Name)))
	}
	ctx, hold := o.tracer.Start(ctx, SpanHold, opts...)
	if hold.IsRecording() {
		hold.AddLink(trace.Link{SpanContext: span.SpanContext()})
	}
	o.held.Add(ctx, 1, o.set(setKey{of: setHeld, kind: e.Kind, backend: e.Backend}).add...)
	return ctx
}

// Released ends the hold span and records the hold's metrics.
func (o *Observer) Released(ctx context.Context, e dlock.HoldEvent, err error) {
	outcome, errType := OutcomeReleased, ""
	switch {
	case err == nil:
	case errors.Is(err, dlock.ErrLockLost):
		outcome = OutcomeLost
	default:
		outcome, errType = OutcomeError, errorType(err)
	}
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		attrs := []attribute.KeyValue{KeyHoldOutcome.String(outcome)}
		if e.Token != 0 {
			attrs = append(attrs, KeyToken.Int64(int64(e.Token)))
		}
		if errType != "" {
			attrs = append(attrs, KeyErrorType.String(errType))
		}
		span.SetAttributes(attrs...)
		switch outcome {
		case OutcomeLost:
			span.SetStatus(codes.Error, "lock lost")
		case OutcomeError:
			o.setError(span, "release failed", errType, err)
		}
	}
	span.End()
	o.holdDuration.Record(ctx, e.Held.Seconds(), o.set(setKey{of: setHold, kind: e.Kind, backend: e.Backend, outcome: outcome, errType: errType}).rec...)
	o.held.Add(ctx, -1, o.set(setKey{of: setHeld, kind: e.Kind, backend: e.Backend}).add...)
}

// Lost adds the dlock.lost event to the hold span and counts the loss.
func (o *Observer) Lost(ctx context.Context, e dlock.HoldEvent) {
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		span.AddEvent(EventLost, trace.WithAttributes(KeyLostAtRelease.Bool(e.AtRelease)))
		span.SetStatus(codes.Error, "lock lost")
	}
	o.lost.Add(ctx, 1, o.set(setKey{of: setLost, kind: e.Kind, backend: e.Backend, flag: e.AtRelease}).add...)
}

// setError sets span's status to Error. dlock's errors name the lock, so
// the error's text goes to the span (status and an exception event) only
// with WithLockNames; else the status says what failed and its error.type.
func (o *Observer) setError(span trace.Span, what, errType string, err error) {
	if o.names {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return
	}
	span.SetStatus(codes.Error, what+": "+errType)
}

// acquireOutcome names how an acquisition ended, and for a failure (not
// held, not ctx) its error.type.
func acquireOutcome(err error) (outcome, errType string) {
	switch {
	case err == nil:
		return OutcomeAcquired, ""
	case errors.Is(err, dlock.ErrNotAcquired) && errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout, ""
	case errors.Is(err, dlock.ErrNotAcquired) && errors.Is(err, context.Canceled):
		return OutcomeCanceled, ""
	case errors.Is(err, dlock.ErrNotAcquired):
		return OutcomeHeld, ""
	default:
		return OutcomeError, errorType(err)
	}
}

// errorType is the error.type of err: the dlock sentinel it matches, else
// _OTHER (a backend's errors have no stable, low-cardinality name).
func errorType(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{
		{dlock.ErrInvalidName, "invalid_name"},
		{dlock.ErrInvalidLimit, "invalid_limit"},
		{dlock.ErrNilFunc, "nil_func"},
		{dlock.ErrClosed, "closed"},
		{dlock.ErrNotHeld, "not_held"},
		{context.DeadlineExceeded, "timeout"}, // a release that timed out
		{context.Canceled, "canceled"},
	} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return errorTypeOther
}

// splitKind splits dlock's kind ("mutex", "rwmutex read", …) into the
// dlock.lock.kind and dlock.lock.mode attributes' values.
func splitKind(kind string) (k, mode string) {
	k, mode, _ = strings.Cut(kind, " ")
	return k, mode
}

// spanKey identifies the start options of a lock's spans.
type spanKey struct {
	kind, backend string
	try           bool
}

// spanOptions are the start options of a lock's spans, made once and
// kept: its attributes but the name, and the span kind.
type spanOptions struct {
	acquire, hold []trace.SpanStartOption
}

func (o *Observer) spanOptions(kind, backend string, try bool) spanOptions {
	return o.spans.get(spanKey{kind, backend, try}, func() spanOptions {
		k, mode := splitKind(kind)
		attrs := []attribute.KeyValue{KeyKind.String(k)}
		if mode != "" {
			attrs = append(attrs, KeyMode.String(mode))
		}
		attrs = append(attrs, KeyBackend.String(backend))
		internal := trace.WithSpanKind(trace.SpanKindInternal)
		return spanOptions{
			acquire: []trace.SpanStartOption{internal, trace.WithAttributes(append(attrs[:len(attrs):len(attrs)], KeyTry.Bool(try))...)},
			hold:    []trace.SpanStartOption{internal, trace.WithAttributes(attrs...)},
		}
	})
}

// cache is a map that is written rarely (once per key) and read on every
// event: reads take no lock and allocate nothing.
type cache[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

func (c *cache[K, V]) get(k K, make func() V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
	}
	m := make()
	next := map[K]V{k: m}
	if old != nil {
		for k, v := range *old {
			next[k] = v
		}
	}
	c.m.Store(&next)
	return m
}

// Metric attribute sets are made once per setKey and kept, so recording
// allocates none for them. Their number is bounded: kinds × backends ×
// outcomes.
type setKey struct {
	of            setOf
	kind, backend string
	flag          bool // try, for setAcquire and setAcquired; at_release for setLost
	outcome       string
	errType       string
}

type setOf uint8

const (
	setAcquire  setOf = iota // dlock.acquire.duration, dlock.not_acquired
	setAcquired              // dlock.acquired
	setHold                  // dlock.hold.duration
	setHeld                  // dlock.held
	setLost                  // dlock.lost
)

// measure holds the options of a measurement with an attribute set, as
// the slices Add and Record take, so that passing them allocates nothing.
type measure struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

// set returns the measurement options of k's attributes.
func (o *Observer) set(k setKey) measure {
	return o.sets.get(k, func() measure {
		opt := metric.WithAttributeSet(attribute.NewSet(setAttrs(k)...))
		return measure{add: []metric.AddOption{opt}, rec: []metric.RecordOption{opt}}
	})
}

func setAttrs(k setKey) []attribute.KeyValue {
	kind, mode := splitKind(k.kind)
	attrs := make([]attribute.KeyValue, 0, 6)
	attrs = append(attrs, KeyKind.String(kind), KeyBackend.String(k.backend))
	if mode != "" {
		attrs = append(attrs, KeyMode.String(mode))
	}
	switch k.of {
	case setAcquire:
		attrs = append(attrs, KeyTry.Bool(k.flag), KeyAcquireOutcome.String(k.outcome))
	case setAcquired:
		attrs = append(attrs, KeyTry.Bool(k.flag))
	case setHold:
		attrs = append(attrs, KeyHoldOutcome.String(k.outcome))
	case setLost:
		attrs = append(attrs, KeyLostAtRelease.Bool(k.flag))
	}
	if k.errType != "" {
		attrs = append(attrs, KeyErrorType.String(k.errType))
	}
	return attrs
}
