package dlockotel_test

import (
	"context"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
	dlockotel "github.com/dlock-go/dlock/otel"
)

// discard is a span exporter that drops what it is given.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// BenchmarkDo measures the observer's cost on the cheapest lock there is,
// a free mutex of dlocktest.Memory, so that the figures are the observer's
// overhead and not a server's round trip:
//
//	none    no observer
//	empty   an Observer that does nothing: the engine's own cost of observing
//	noop    the OTel observer over no-op providers (OTel's default until an SDK is installed)
//	sdk     the OTel observer over the SDK: every span sampled and batched to an
//	        exporter that drops it, metrics aggregated for a reader
//	metrics the SDK's metrics alone (a no-op TracerProvider)
//	sampled the SDK with a parent-based 1-in-10 ratio sampler
//
// Besides ns/op (wall clock) it reports cpu-ns/op, the process's CPU time
// per Do, which a busy shared machine disturbs less.
//
// go test -run '^$' -bench Do -benchmem ./ (in otel/)
func BenchmarkDo(b *testing.B) {
	fn := func(context.Context) error { return nil }
	run := func(b *testing.B, opts ...dlock.Option) {
		mu := dlock.NewMutex(dlocktest.NewMemory(), opts...)
		ctx := context.Background()
		b.ReportAllocs()
		cpu := cpuTime()
		for b.Loop() {
			if err := mu.Do(ctx, "bench", fn); err != nil {
				b.Fatal(err)
			}
		}
		if cpu != 0 {
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		}
	}
	sdk := func(b *testing.B, sampler sdktrace.Sampler) *dlockotel.Observer {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithBatcher(discard{}))
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() {
			_ = tp.Shutdown(context.Background())
			_ = mp.Shutdown(context.Background())
		})
		return dlockotel.NewObserver(dlockotel.WithTracerProvider(tp), dlockotel.WithMeterProvider(mp))
	}
	b.Run("none", func(b *testing.B) { run(b) })
	b.Run("empty", func(b *testing.B) { run(b, dlock.WithObserver(empty{})) })
	b.Run("noop", func(b *testing.B) {
		run(b, dlock.WithObserver(dlockotel.NewObserver(
			dlockotel.WithTracerProvider(tracenoop.NewTracerProvider()),
			dlockotel.WithMeterProvider(metricnoop.NewMeterProvider()))))
	})
	b.Run("sdk", func(b *testing.B) {
		run(b, dlock.WithObserver(sdk(b, sdktrace.AlwaysSample())))
	})
	b.Run("metrics", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		run(b, dlock.WithObserver(dlockotel.NewObserver(
			dlockotel.WithTracerProvider(tracenoop.NewTracerProvider()), dlockotel.WithMeterProvider(mp))))
	})
	b.Run("sampled", func(b *testing.B) {
		run(b, dlock.WithObserver(sdk(b, sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.1)))))
	})
}

// empty is an Observer that does nothing: the engine's own cost of having
// an observer.
type empty struct{}

func (empty) AcquireStart(ctx context.Context, _ dlock.AcquireEvent) context.Context { return ctx }
func (empty) AcquireEnd(ctx context.Context, _ dlock.AcquireEvent, _ error) context.Context {
	return ctx
}
func (empty) Released(context.Context, dlock.HoldEvent, error) {}
func (empty) Lost(context.Context, dlock.HoldEvent)            {}
