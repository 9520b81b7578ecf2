package dlockotel_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
	dlockotel "github.com/dlock-go/dlock/otel"
)

// A job takes its lock with Do; a second instance of it tries the same lock
// while the first holds it and gives up; a leader loses its lock. The span
// tree shows each acquisition, each hold (linked to the acquisition that
// took it) and the loss. In a program, the providers would be the global
// ones, exporting to a collector: dlockotel.NewObserver() alone.
func Example() {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	defer tp.Shutdown(context.Background())

	obs := dlockotel.NewObserver(dlockotel.WithTracerProvider(tp), dlockotel.WithLockNames())
	mem := dlocktest.NewMemory() // pg.New(pool), valkey.New(client), fs.New(dir) alike
	mu := dlock.NewMutex(mem, dlock.WithObserver(obs))

	ctx, job := tp.Tracer("example").Start(context.Background(), "nightly-job")
	_ = mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
		// A second instance finds the lock held.
		return mu.TryDo(ctx, "nightly-report", func(ctx context.Context) error { return nil })
	})
	lk, _ := mu.Acquire(ctx, "leader")
	mem.Lose(lk.Lease()) // as when a server restarts
	_ = lk.Release(ctx)
	job.End()

	printTree(os.Stdout, spans.GetSpans())
	// Output:
	// nightly-job
	// ├── dlock.acquire  dlock.lock.kind=mutex dlock.backend=dlocktest dlock.acquire.try=false dlock.lock.name=nightly-report dlock.acquire.outcome=acquired dlock.acquire.attempts=1 dlock.acquire.retried=0
	// ├── dlock.hold  dlock.lock.kind=mutex dlock.backend=dlocktest dlock.lock.name=nightly-report dlock.hold.outcome=released dlock.lock.token=1  (link: dlock.acquire #1)
	// │   └── dlock.acquire  dlock.lock.kind=mutex dlock.backend=dlocktest dlock.acquire.try=true dlock.lock.name=nightly-report dlock.acquire.outcome=held dlock.acquire.attempts=1 dlock.acquire.retried=0
	// ├── dlock.acquire  dlock.lock.kind=mutex dlock.backend=dlocktest dlock.acquire.try=false dlock.lock.name=leader dlock.acquire.outcome=acquired dlock.acquire.attempts=1 dlock.acquire.retried=0
	// └── dlock.hold  dlock.lock.kind=mutex dlock.backend=dlocktest dlock.lock.name=leader dlock.hold.outcome=lost dlock.lock.token=1  status=Error "lock lost"  (link: dlock.acquire #3)
	//     └── event dlock.lost  dlock.lost.at_release=false
}

// printTree prints spans as a tree, children in the order they started,
// with their attributes (but not durations, which vary), links (to the
// linked span's name and its number among the root's children), status and
// events.
func printTree(w io.Writer, spans tracetest.SpanStubs) {
	children := map[trace.SpanID][]tracetest.SpanStub{}
	var roots []tracetest.SpanStub
	for _, s := range spans {
		if s.Parent.IsValid() {
			children[s.Parent.SpanID()] = append(children[s.Parent.SpanID()], s)
		} else {
			roots = append(roots, s)
		}
	}
	for _, c := range children {
		slices.SortStableFunc(c, func(a, b tracetest.SpanStub) int { return a.StartTime.Compare(b.StartTime) })
	}
	for _, r := range roots {
		fmt.Fprintln(w, r.Name)
		printKids(w, children, children[r.SpanContext.SpanID()], "")
	}
}

// printKids prints the spans kids (siblings) and, below each, its own
// children, prefixing every line with prefix.
func printKids(w io.Writer, children map[trace.SpanID][]tracetest.SpanStub, kids []tracetest.SpanStub, prefix string) {
	number := map[trace.SpanID]int{}
	for i, k := range kids {
		number[k.SpanContext.SpanID()] = i + 1
	}
	for i, k := range kids {
		branch, indent := "├── ", "│   "
		if i == len(kids)-1 {
			branch, indent = "└── ", "    "
		}
		line := []string{k.Name + " "}
		for _, kv := range k.Attributes {
			if kv.Key == dlockotel.KeyWait {
				continue
			}
			line = append(line, fmt.Sprintf("%s=%s", kv.Key, kv.Value.String()))
		}
		if k.Status.Code != 0 {
			line = append(line, fmt.Sprintf(" status=%s %q", k.Status.Code, k.Status.Description))
		}
		for _, l := range k.Links {
			for _, s := range kids {
				if s.SpanContext.SpanID() == l.SpanContext.SpanID() {
					line = append(line, fmt.Sprintf(" (link: %s #%d)", s.Name, number[s.SpanContext.SpanID()]))
				}
			}
		}
		fmt.Fprintln(w, prefix+branch+strings.Join(line, " "))
		grand := children[k.SpanContext.SpanID()]
		for j, e := range k.Events {
			ev := []string{"event " + e.Name + " "}
			for _, kv := range e.Attributes {
				ev = append(ev, fmt.Sprintf("%s=%s", kv.Key, kv.Value.String()))
			}
			b := "└── "
			if j < len(k.Events)-1 || len(grand) > 0 {
				b = "├── "
			}
			fmt.Fprintln(w, prefix+indent+b+strings.Join(ev, " "))
		}
		printKids(w, children, grand, prefix+indent)
	}
}
