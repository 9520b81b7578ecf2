package dlockotel_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
	dlockotel "github.com/dlock-go/dlock/otel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is an Observer over in-memory exporters.
type rig struct {
	obs    *dlockotel.Observer
	spans  *tracetest.InMemoryExporter
	reader *sdkmetric.ManualReader
	tracer trace.Tracer
}

func newRig(t *testing.T, opts ...dlockotel.Option) *rig {
	t.Helper()
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		ctx := context.Background()
		if err := tp.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := mp.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	opts = append([]dlockotel.Option{dlockotel.WithTracerProvider(tp), dlockotel.WithMeterProvider(mp)}, opts...)
	return &rig{obs: dlockotel.NewObserver(opts...), spans: spans, reader: reader, tracer: tp.Tracer("test")}
}

// span returns the one ended span named name.
func (r *rig) span(t *testing.T, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range r.spans.GetSpans() {
		if s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d spans named %s, want 1; spans: %v", len(found), name, spanNames(r.spans.GetSpans()))
	}
	return found[0]
}

func spanNames(spans tracetest.SpanStubs) []string {
	var names []string
	for _, s := range spans {
		names = append(names, s.Name)
	}
	return names
}

// points returns the metric points as lines "name{attrs} value", sorted:
// a sum's value, a histogram's count.
func (r *rig) points(t *testing.T) []string {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != dlockotel.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, dlockotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s{%s} %d", m.Name, attrs(p.Attributes.ToSlice()), p.Value))
				}
			case metricdata.Histogram[float64]:
				if m.Unit != "s" {
					t.Errorf("%s: unit %q, want s", m.Name, m.Unit)
				}
				for _, p := range d.DataPoints {
					lines = append(lines, fmt.Sprintf("%s{%s} count=%d", m.Name, attrs(p.Attributes.ToSlice()), p.Count))
				}
			default:
				t.Errorf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	sort.Strings(lines)
	return lines
}

// attrs formats kvs as sorted k=v pairs, leaving out dlock.acquire.wait
// (a duration).
func attrs(kvs []attribute.KeyValue) string {
	var s []string
	for _, kv := range kvs {
		if kv.Key == dlockotel.KeyWait {
			continue
		}
		s = append(s, string(kv.Key)+"="+kv.Value.String())
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func wantLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot:\n\t%s\nwant:\n\t%s", what, strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func attr(kvs []attribute.KeyValue, k attribute.Key) (attribute.Value, bool) {
	for _, kv := range kvs {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func TestDo(t *testing.T) {
	r := newRig(t)
	mu := dlock.NewMutex(dlocktest.NewMemory(), dlock.WithObserver(r.obs))
	ctx, parent := r.tracer.Start(context.Background(), "job")
	ran := false
	if err := mu.Do(ctx, "nightly-report", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("Do: %v, ran %v", err, ran)
	}
	parent.End()
	noName(t, r.spans.GetSpans(), "nightly-report")

	acq, hold := r.span(t, dlockotel.SpanAcquire), r.span(t, dlockotel.SpanHold)
	job := r.span(t, "job")
	for _, s := range []tracetest.SpanStub{acq, hold} {
		if s.Parent.SpanID() != job.SpanContext.SpanID() {
			t.Errorf("%s: parent %v, want the job span %v", s.Name, s.Parent.SpanID(), job.SpanContext.SpanID())
		}
		if s.SpanKind != trace.SpanKindInternal {
			t.Errorf("%s: kind %v", s.Name, s.SpanKind)
		}
		if s.Status.Code != codes.Unset {
			t.Errorf("%s: status %v", s.Name, s.Status)
		}
		if _, ok := attr(s.Attributes, dlockotel.KeyName); ok {
			t.Errorf("%s records the lock's name without WithLockNames", s.Name)
		}
	}
	if len(hold.Links) != 1 || hold.Links[0].SpanContext.SpanID() != acq.SpanContext.SpanID() {
		t.Errorf("hold span links %v, want the acquire span %v", hold.Links, acq.SpanContext.SpanID())
	}
	if hold.StartTime.Before(acq.EndTime) {
		t.Errorf("hold span starts at %v, before the acquire span ends at %v", hold.StartTime, acq.EndTime)
	}
	wantLines(t, "acquire span", []string{attrs(acq.Attributes)}, []string{
		"dlock.acquire.attempts=1,dlock.acquire.outcome=acquired,dlock.acquire.retried=0,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex",
	})
	if w, ok := attr(acq.Attributes, dlockotel.KeyWait); !ok || w.AsFloat64() <= 0 || w.AsFloat64()-acq.EndTime.Sub(acq.StartTime).Seconds() > 0.01 {
		t.Errorf("acquire span: wait %v (set %v), span lasted %v", w.AsFloat64(), ok, acq.EndTime.Sub(acq.StartTime))
	}
	wantLines(t, "hold span", []string{attrs(hold.Attributes)}, []string{
		"dlock.backend=dlocktest,dlock.hold.outcome=released,dlock.lock.kind=mutex,dlock.lock.token=1",
	})

	wantLines(t, "metrics", r.points(t), []string{
		"dlock.acquire.duration{dlock.acquire.outcome=acquired,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} count=1",
		"dlock.acquired{dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} 1",
		"dlock.held{dlock.backend=dlocktest,dlock.lock.kind=mutex} 0",
		"dlock.hold.duration{dlock.backend=dlocktest,dlock.hold.outcome=released,dlock.lock.kind=mutex} count=1",
	})
}

// With no span in the caller's ctx, the hold span is the acquire span's
// child: one trace.
func TestNoParent(t *testing.T) {
	r := newRig(t)
	mu := dlock.NewMutex(dlocktest.NewMemory(), dlock.WithObserver(r.obs))
	if err := mu.Do(context.Background(), "x", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	acq, hold := r.span(t, dlockotel.SpanAcquire), r.span(t, dlockotel.SpanHold)
	if acq.Parent.IsValid() {
		t.Errorf("acquire span has parent %v, want none", acq.Parent)
	}
	if hold.Parent.SpanID() != acq.SpanContext.SpanID() || hold.SpanContext.TraceID() != acq.SpanContext.TraceID() {
		t.Errorf("hold span's parent %v, want the acquire span %v", hold.Parent.SpanID(), acq.SpanContext.SpanID())
	}
	if len(hold.Links) != 1 || hold.Links[0].SpanContext.SpanID() != acq.SpanContext.SpanID() {
		t.Errorf("hold span links %v, want the acquire span", hold.Links)
	}
}

// A wait that its ctx deadline ends, and a try that finds the lock held:
// expected outcomes, not errors.
func TestNotAcquired(t *testing.T) {
	r := newRig(t)
	mem := dlocktest.NewMemory()
	other, err := dlock.NewMutex(mem).Acquire(context.Background(), "nightly-report") // unobserved
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release(context.Background())
	mu := dlock.NewMutex(mem, dlock.WithObserver(r.obs))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = mu.Do(ctx, "nightly-report", func(context.Context) error { t.Error("fn ran"); return nil })
	if !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do: %v, want ErrNotAcquired and DeadlineExceeded", err)
	}
	acq := r.span(t, dlockotel.SpanAcquire)
	if acq.Status.Code != codes.Unset {
		t.Errorf("timed-out acquire span: status %v, want unset", acq.Status)
	}
	if got := acq.EndTime.Sub(acq.StartTime); got < 25*time.Millisecond {
		t.Errorf("timed-out acquire span lasted %v, want about the 30ms timeout", got)
	}
	if v, _ := attr(acq.Attributes, dlockotel.KeyAcquireOutcome); v.AsString() != dlockotel.OutcomeTimeout {
		t.Errorf("timed-out acquire span: outcome %q", v.AsString())
	}
	if v, _ := attr(acq.Attributes, dlockotel.KeyAttempts); v.AsInt64() < 1 {
		t.Errorf("timed-out acquire span: attempts %d", v.AsInt64())
	}
	r.spans.Reset()

	err = mu.TryDo(context.Background(), "nightly-report", func(context.Context) error { t.Error("fn ran"); return nil })
	if !errors.Is(err, dlock.ErrNotAcquired) {
		t.Fatalf("TryDo: %v, want ErrNotAcquired", err)
	}
	acq = r.span(t, dlockotel.SpanAcquire)
	wantLines(t, "held try's acquire span", []string{attrs(acq.Attributes)}, []string{
		"dlock.acquire.attempts=1,dlock.acquire.outcome=held,dlock.acquire.retried=0,dlock.acquire.try=true,dlock.backend=dlocktest,dlock.lock.kind=mutex",
	})
	if acq.Status.Code != codes.Unset {
		t.Errorf("held try's acquire span: status %v, want unset", acq.Status)
	}
	if n := len(r.spans.GetSpans()); n != 1 {
		t.Errorf("%d spans, want the acquire span only: %v", n, spanNames(r.spans.GetSpans()))
	}

	wantLines(t, "metrics", r.points(t), []string{
		"dlock.acquire.duration{dlock.acquire.outcome=timeout,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} count=1",
		"dlock.acquire.duration{dlock.acquire.outcome=held,dlock.acquire.try=true,dlock.backend=dlocktest,dlock.lock.kind=mutex} count=1",
		"dlock.not_acquired{dlock.acquire.outcome=timeout,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} 1",
		"dlock.not_acquired{dlock.acquire.outcome=held,dlock.acquire.try=true,dlock.backend=dlocktest,dlock.lock.kind=mutex} 1",
	})
}

// A failure other than held or ctx is an error on the acquire span; its
// text, which names the lock, is recorded only with WithLockNames.
func TestAcquireError(t *testing.T) {
	for _, names := range []bool{false, true} {
		t.Run(fmt.Sprintf("names=%v", names), func(t *testing.T) {
			var opts []dlockotel.Option
			if names {
				opts = append(opts, dlockotel.WithLockNames())
			}
			r := newRig(t, opts...)
			sem := dlock.NewSemaphore(dlocktest.NewMemory(), 0, dlock.WithObserver(r.obs))
			if err := sem.Do(context.Background(), "secret-name", func(context.Context) error { return nil }); !errors.Is(err, dlock.ErrInvalidLimit) {
				t.Fatalf("Do with limit 0: %v", err)
			}
			acq := r.span(t, dlockotel.SpanAcquire)
			if v, _ := attr(acq.Attributes, dlockotel.KeyErrorType); v.AsString() != "invalid_limit" {
				t.Errorf("error.type %q, want invalid_limit", v.AsString())
			}
			if !names {
				if acq.Status.Code != codes.Error || acq.Status.Description != "acquire failed: invalid_limit" {
					t.Errorf("status %v, want error %q", acq.Status, "acquire failed: invalid_limit")
				}
				noName(t, r.spans.GetSpans(), "secret-name")
			} else {
				if acq.Status.Code != codes.Error || !strings.Contains(acq.Status.Description, "secret-name") {
					t.Errorf("status %v, want the error's text", acq.Status)
				}
				if len(acq.Events) != 1 || acq.Events[0].Name != "exception" {
					t.Errorf("events %v, want the recorded error", acq.Events)
				}
			}
			wantLines(t, "metrics", r.points(t), []string{
				"dlock.acquire.duration{dlock.acquire.outcome=error,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=semaphore,error.type=invalid_limit} count=1",
				"dlock.not_acquired{dlock.acquire.outcome=error,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=semaphore,error.type=invalid_limit} 1",
			})
		})
	}
}

// noName fails t if name appears anywhere in spans: attributes, status,
// events, links.
func noName(t *testing.T, spans tracetest.SpanStubs, name string) {
	t.Helper()
	for _, s := range spans {
		if strings.Contains(fmt.Sprintf("%+v %+v %+v %+v", s.Attributes, s.Status, s.Events, s.Links), name) {
			t.Errorf("span %s carries the lock's name %q without WithLockNames: %+v", s.Name, name, s)
		}
	}
}

// A lock lost while held: an event on the hold span, which ends in error.
func TestLost(t *testing.T) {
	r := newRig(t)
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem, dlock.WithObserver(r.obs))
	ctx := context.Background()
	lk, err := mu.Acquire(ctx, "leader")
	if err != nil {
		t.Fatal(err)
	}
	wantLines(t, "metrics while held", r.points(t), []string{
		"dlock.acquire.duration{dlock.acquire.outcome=acquired,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} count=1",
		"dlock.acquired{dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} 1",
		"dlock.held{dlock.backend=dlocktest,dlock.lock.kind=mutex} 1",
	})
	mem.Lose(lk.Lease())
	<-lk.Lost()
	if err := lk.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Release of a lost lock: %v", err)
	}
	noName(t, r.spans.GetSpans(), "leader")
	hold := r.span(t, dlockotel.SpanHold)
	if hold.Status.Code != codes.Error || hold.Status.Description != "lock lost" {
		t.Errorf("hold span: status %v, want error %q", hold.Status, "lock lost")
	}
	if len(hold.Events) != 1 || hold.Events[0].Name != dlockotel.EventLost ||
		attrs(hold.Events[0].Attributes) != "dlock.lost.at_release=false" {
		t.Errorf("hold span events %+v, want one dlock.lost with at_release=false", hold.Events)
	}
	if v, _ := attr(hold.Attributes, dlockotel.KeyHoldOutcome); v.AsString() != dlockotel.OutcomeLost {
		t.Errorf("hold span: outcome %q, want lost", v.AsString())
	}
	wantLines(t, "metrics", r.points(t), []string{
		"dlock.acquire.duration{dlock.acquire.outcome=acquired,dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} count=1",
		"dlock.acquired{dlock.acquire.try=false,dlock.backend=dlocktest,dlock.lock.kind=mutex} 1",
		"dlock.held{dlock.backend=dlocktest,dlock.lock.kind=mutex} 0",
		"dlock.hold.duration{dlock.backend=dlocktest,dlock.hold.outcome=lost,dlock.lock.kind=mutex} count=1",
		"dlock.lost{dlock.backend=dlocktest,dlock.lock.kind=mutex,dlock.lost.at_release=false} 1",
	})
}

// Do's loss: fn's ctx is cancelled and the hold span gets the event.
func TestLostInDo(t *testing.T) {
	r := newRig(t)
	mem := &recordingMemory{Memory: dlocktest.NewMemory()}
	mu := dlock.NewMutex(mem, dlock.WithObserver(r.obs))
	err := mu.Do(context.Background(), "job", func(ctx context.Context) error {
		mem.Lose(mem.last)
		<-ctx.Done()
		return nil
	})
	if !errors.Is(err, dlock.ErrLockLost) {
		t.Fatalf("Do: %v, want ErrLockLost", err)
	}
	hold := r.span(t, dlockotel.SpanHold)
	if len(hold.Events) != 1 || hold.Events[0].Name != dlockotel.EventLost {
		t.Errorf("hold span events %+v, want dlock.lost", hold.Events)
	}
	if v, _ := attr(hold.Attributes, dlockotel.KeyHoldOutcome); v.AsString() != dlockotel.OutcomeLost || hold.Status.Code != codes.Error {
		t.Errorf("hold span: outcome %q, status %v; want lost, error", v.AsString(), hold.Status)
	}
}

// recordingMemory is a Memory that keeps the last lease its mutex wait
// granted, for Do's callback to lose it.
type recordingMemory struct {
	*dlocktest.Memory
	last *dlocktest.MemoryLease
}

func (m *recordingMemory) Lock(ctx context.Context, name string) (*dlocktest.MemoryLease, error) {
	l, err := m.Memory.Lock(ctx, name)
	m.last = l
	return l, err
}

func TestLockNames(t *testing.T) {
	r := newRig(t, dlockotel.WithLockNames())
	rw := dlock.NewRWMutex(dlocktest.NewMemory(), dlock.WithObserver(r.obs))
	if err := rw.Read().Do(context.Background(), "customer-42", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{dlockotel.SpanAcquire, dlockotel.SpanHold} {
		s := r.span(t, name)
		if v, _ := attr(s.Attributes, dlockotel.KeyName); v.AsString() != "customer-42" {
			t.Errorf("%s: name %q, want customer-42", name, v.AsString())
		}
		if v, _ := attr(s.Attributes, dlockotel.KeyKind); v.AsString() != "rwmutex" {
			t.Errorf("%s: kind %q, want rwmutex", name, v.AsString())
		}
		if v, _ := attr(s.Attributes, dlockotel.KeyMode); v.AsString() != "read" {
			t.Errorf("%s: mode %q, want read", name, v.AsString())
		}
	}
	for _, p := range r.points(t) {
		if strings.Contains(p, "customer-42") {
			t.Errorf("a metric carries the lock's name: %s", p)
		}
		if !strings.Contains(p, "dlock.lock.kind=rwmutex,dlock.lock.mode=read") {
			t.Errorf("metric without kind rwmutex and mode read: %s", p)
		}
	}
}

// The events dlock cannot easily be made to produce here: a loss learned
// at release, a release that fails otherwise.
func TestObserverDirect(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	start := time.Now()
	e := dlock.AcquireEvent{Kind: "semaphore", Backend: "valkey", Name: "n", Start: start}
	actx := r.obs.AcquireStart(ctx, e)
	e.Wait, e.Attempts, e.Retried = time.Millisecond, 3, 2
	hctx := r.obs.AcquireEnd(actx, e, nil)
	h := dlock.HoldEvent{Kind: "semaphore", Backend: "valkey", Name: "n", Acquired: start, Held: time.Second, AtRelease: true}
	r.obs.Lost(hctx, h)
	r.obs.Released(hctx, h, fmt.Errorf("dlock: semaphore n: %w", dlock.ErrLockLost))

	hctx = r.obs.AcquireEnd(r.obs.AcquireStart(ctx, e), e, nil)
	r.obs.Released(hctx, h, errors.New("connection reset"))

	var holds []tracetest.SpanStub
	for _, s := range r.spans.GetSpans() {
		if s.Name == dlockotel.SpanHold {
			holds = append(holds, s)
		}
	}
	if len(holds) != 2 {
		t.Fatalf("%d hold spans, want 2", len(holds))
	}
	if len(holds[0].Events) != 1 || attrs(holds[0].Events[0].Attributes) != "dlock.lost.at_release=true" {
		t.Errorf("first hold span's events %+v, want dlock.lost at release", holds[0].Events)
	}
	if v, _ := attr(holds[1].Attributes, dlockotel.KeyErrorType); v.AsString() != "_OTHER" || holds[1].Status.Code != codes.Error {
		t.Errorf("failed release: error.type %q, status %v", v.AsString(), holds[1].Status)
	}
	wantLines(t, "metrics", r.points(t), []string{
		"dlock.acquire.duration{dlock.acquire.outcome=acquired,dlock.acquire.try=false,dlock.backend=valkey,dlock.lock.kind=semaphore} count=2",
		"dlock.acquired{dlock.acquire.try=false,dlock.backend=valkey,dlock.lock.kind=semaphore} 2",
		"dlock.held{dlock.backend=valkey,dlock.lock.kind=semaphore} 0",
		"dlock.hold.duration{dlock.backend=valkey,dlock.hold.outcome=error,dlock.lock.kind=semaphore,error.type=_OTHER} count=1",
		"dlock.hold.duration{dlock.backend=valkey,dlock.hold.outcome=lost,dlock.lock.kind=semaphore} count=1",
		"dlock.lost{dlock.backend=valkey,dlock.lock.kind=semaphore,dlock.lost.at_release=true} 1",
	})
}

// With the default (global, no-op) providers nothing is recorded and
// nothing breaks.
func TestGlobalNoop(t *testing.T) {
	mu := dlock.NewMutex(dlocktest.NewMemory(), dlock.WithObserver(dlockotel.NewObserver()))
	if err := mu.Do(context.Background(), "x", func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

// Guards of every kind share one Observer from many goroutines: the
// counts add up and the held gauge returns to 0 (run with -race).
func TestConcurrent(t *testing.T) {
	r := newRig(t)
	mem := dlocktest.NewMemory()
	obs := dlock.WithObserver(r.obs)
	rw := dlock.NewRWMutex(mem, obs)
	guards := []dlock.Locker{dlock.NewMutex(mem, obs), dlock.NewSemaphore(mem, 2, obs), rw.Read(), rw.Write()}
	const perGuard = 20
	var wg sync.WaitGroup
	for _, g := range guards {
		for range 2 {
			wg.Go(func() {
				for range perGuard / 2 {
					if err := g.Do(context.Background(), "shared", func(context.Context) error { return nil }); err != nil {
						t.Error(err)
					}
				}
			})
		}
	}
	wg.Wait()
	got := r.points(t)
	var acquired, held int
	for _, p := range got {
		var n int
		switch {
		case strings.HasPrefix(p, dlockotel.MetricAcquired+"{"):
			fmt.Sscan(p[strings.LastIndexByte(p, ' ')+1:], &n)
			acquired += n
		case strings.HasPrefix(p, dlockotel.MetricHeld+"{"):
			fmt.Sscan(p[strings.LastIndexByte(p, ' ')+1:], &n)
			held += n
		}
	}
	if acquired != len(guards)*perGuard || held != 0 {
		t.Errorf("acquired %d, held %d; want %d, 0:\n%s", acquired, held, len(guards)*perGuard, strings.Join(got, "\n"))
	}
	if n := len(r.spans.GetSpans()); n != 2*len(guards)*perGuard {
		t.Errorf("%d spans, want %d", n, 2*len(guards)*perGuard)
	}
}
