package detach

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

type strKey struct{}

// The context package's key is found on this Go, so that Value answers it
// without allocating; values under every other key, *int ones too, come
// from the caller's ctx, and its cancellation does not.
func TestValue(t *testing.T) {
	if cancelKey == nil {
		t.Fatal("the context package's cancellation key was not found: Value allocates for it")
	}
	var intKey int
	cause := errors.New("the caller's cause")
	parent, cancelParent := context.WithCancelCause(context.WithValue(context.WithValue(context.Background(), &intKey, "i"), strKey{}, "s"))
	cancelParent(cause)
	var c Ctx
	c.Init(parent, time.Hour, nil)
	defer c.End()
	if c.Value(&intKey) != "i" || c.Value(strKey{}) != "s" {
		t.Fatalf("values lost: %v, %v", c.Value(&intKey), c.Value(strKey{}))
	}
	if c.Value(cancelKey) != nil {
		t.Fatal("the caller's cancellable ctx shows through")
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = c.Value(strKey{}), c.Value(cancelKey) }); n != 0 {
		t.Errorf("Value costs %v allocations", n)
	}
	c.End()
	child, cancel := context.WithCancel(&c)
	defer cancel()
	if got := context.Cause(child); got != context.Canceled {
		t.Fatalf("a child's cause = %v, want context.Canceled", got)
	}
}

// AfterFunc functions run once each when the ctx ends, unless stopped in
// time; a stop reports whether it stopped its own function and no other.
func TestAfterFunc(t *testing.T) {
	defer goleak.VerifyNone(t)
	var c Ctx
	c.Init(context.Background(), time.Hour, nil)
	var ran [4]atomic.Int32
	done := make(chan int, 4)
	f := func(i int) func() { return func() { ran[i].Add(1); done <- i } }
	stop0 := c.AfterFunc(f(0))
	if !stop0() || stop0() {
		t.Fatal("stop of a pending function: want true, then false")
	}
	stop1 := c.AfterFunc(f(1)) // after the first was stopped
	stop2 := c.AfterFunc(f(2))
	if !stop2() {
		t.Fatal("stop2 did not stop f2")
	}
	_ = c.AfterFunc(f(3))
	if stop0() {
		t.Fatal("the first function's stop, again, stopped another")
	}
	c.End()
	got := map[int]bool{<-done: true, <-done: true}
	if !got[1] || !got[3] {
		t.Fatalf("ran %v, want 1 and 3", got)
	}
	if stop1() {
		t.Fatal("stop of a started function reports it stopped it")
	}
	// After the end: f runs at once.
	_ = c.AfterFunc(f(0))
	if i := <-done; i != 0 {
		t.Fatalf("ran %d", i)
	}
	select {
	case i := <-done:
		t.Fatalf("%d ran again", i)
	case <-time.After(10 * time.Millisecond):
	}
	for i := range ran {
		if n := ran[i].Load(); n > 1 {
			t.Errorf("f%d ran %d times", i, n)
		}
	}
}

// What a release that waits on Done, and one under pgx (which watches its
// query's ctx with context.AfterFunc and stops watching when the query
// returns), cost beyond the Ctx itself.
func TestAllocs(t *testing.T) {
	defer goleak.VerifyNone(t)
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	var c Ctx
	for _, tc := range []struct {
		name string
		max  float64
		f    func(ctx context.Context)
	}{
		{"Done", 3, func(ctx context.Context) { _ = ctx.Done() }}, // its channel and timer (the timer and its function)
		// context.AfterFunc's own 4 (its ctx and stop, and, for a parent
		// of a type of its own, a function and a stopCtx) and the stop of
		// this one's AfterFunc, and the timer (2).
		{"AfterFunc", 3 + 5, func(ctx context.Context) {
			if !context.AfterFunc(ctx, func() {})() {
				t.Error("stop did not stop")
			}
		}},
	} {
		n := testing.AllocsPerRun(100, func() {
			c = Ctx{}
			c.Init(parent, time.Minute, nil)
			tc.f(&c)
			c.End()
		})
		if n > tc.max {
			t.Errorf("%s costs %v allocations, want %v", tc.name, n, tc.max)
		}
	}
}

// Each Ctx whose Done was made ends at its deadline, not before, whatever
// the order of the deadlines, also when some end first.
func TestTimers(t *testing.T) {
	defer goleak.VerifyNone(t)
	const n = 60
	start := time.Now()
	cs := make([]*Ctx, n)
	for i := range cs {
		cs[i] = new(Ctx)
		// Deadlines out of order, some equal: 50 to 89 ms from start.
		cs[i].Init(context.Background(), time.Duration(50+(i*7)%40)*time.Millisecond-time.Since(start), nil)
		_ = cs[i].Done()
	}
	// On a slow machine an End may come after its Ctx's deadline; that
	// Ctx may then have ended by its deadline instead.
	late := make([]bool, n)
	for i := 0; i < n; i += 3 {
		dl, _ := cs[i].Deadline()
		late[i] = !time.Now().Before(dl)
		cs[i].End()
	}
	for i, c := range cs {
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("ctx %d did not end", i)
		}
		want := context.DeadlineExceeded
		if i%3 == 0 {
			if !late[i] || c.Err() != want {
				want = context.Canceled
			}
		} else if dl, _ := c.Deadline(); time.Now().Before(dl) {
			t.Errorf("ctx %d ended %v before its deadline", i, time.Until(dl))
		}
		if err := c.Err(); err != want {
			t.Errorf("ctx %d: Err = %v, want %v", i, err, want)
		}
		c.End()
	}
	// A Ctx made later but due first ends first.
	later, early := new(Ctx), new(Ctx)
	later.Init(context.Background(), time.Hour, nil)
	_ = later.Done()
	early.Init(context.Background(), 10*time.Millisecond, nil)
	select {
	case <-early.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a ctx due before an earlier one did not end")
	}
	if later.Err() != nil {
		t.Fatal("the later ctx ended too")
	}
	later.End()
}

// Deadline is timeout after Init, by the monotonic clock and (the wall
// clock not being stepped meanwhile) by the wall clock too.
func TestDeadline(t *testing.T) {
	before := time.Now()
	var c Ctx
	c.Init(context.Background(), time.Minute, nil)
	after := time.Now()
	defer c.End()
	dl, ok := c.Deadline()
	if !ok || dl.Before(before.Add(time.Minute)) || dl.After(after.Add(time.Minute)) {
		t.Fatalf("Deadline = %v, %v; want between %v and %v", dl, ok, before.Add(time.Minute), after.Add(time.Minute))
	}
	if wall, want := dl.Round(0), after.Add(time.Minute).Round(0); wall.Sub(want).Abs() > time.Second {
		t.Fatalf("Deadline's wall clock reading %v, want about %v", wall, want)
	}
}

// Ctxs with the same Deadlines and deadline share one done channel, and
// each still behaves as a context of its own: it ends at its deadline
// (rounded up to Grain, never before), with Done closed exactly when Err
// turns non-nil; End ends one sharer and not the others; a channel no
// sharer uses any more is closed once a later one replaces it, and the
// latest at its deadline.
func TestDeadlinesShared(t *testing.T) {
	defer goleak.VerifyNone(t)
	var ds Deadlines
	before := time.Now()
	a, b, c := new(Ctx), new(Ctx), new(Ctx)
	a.Init(context.Background(), 60*time.Millisecond, &ds)
	for _, x := range []*Ctx{b, c} {
		x.Init(context.Background(), 60*time.Millisecond, &ds)
		x.due = a.due // as if made in the same Grain
	}
	if a.due%Grain != 0 {
		t.Fatalf("deadline %v not rounded up to %v", a.due, Grain)
	}
	if dl, _ := a.Deadline(); dl.Before(before.Add(60 * time.Millisecond)) {
		t.Fatalf("deadline %v before the timeout", time.Until(dl))
	}
	da, db, dc := a.Done(), b.Done(), c.Done()
	if da != db || db != dc {
		t.Fatal("Ctxs of one deadline do not share their done channel")
	}
	b.End()
	if b.Err() != context.Canceled {
		t.Fatalf("the ended sharer's Err = %v", b.Err())
	}
	if d := b.Done(); !isClosed(d) || d == da {
		t.Fatal("the ended sharer's Done, asked after End, is not closed, or is the shared one")
	}
	if isClosed(da) || a.Err() != nil || c.Err() != nil {
		t.Fatal("one sharer's End ended the others")
	}
	// a waits on Done, c on Err: each ends at the deadline, not before,
	// with Done and Err agreeing.
	<-da
	if dl, _ := a.Deadline(); time.Now().Before(dl) {
		t.Fatalf("shared Done closed %v before the deadline", time.Until(dl))
	}
	if a.Err() != context.DeadlineExceeded || c.Err() != context.DeadlineExceeded {
		t.Fatalf("Err after the deadline: %v, %v", a.Err(), c.Err())
	}
	a.End()
	c.End()

	// Err notices the deadline first: it closes the shared channel then.
	d, e := new(Ctx), new(Ctx)
	d.Init(context.Background(), 20*time.Millisecond, &ds)
	e.Init(context.Background(), 20*time.Millisecond, &ds)
	e.due = d.due
	dd := d.Done()
	_ = e.Done()
	for d.Err() == nil {
		if isClosed(dd) {
			t.Fatal("Done closed while Err is nil")
		}
		time.Sleep(100 * time.Microsecond)
	}
	if !isClosed(dd) || e.Err() != context.DeadlineExceeded {
		t.Fatal("Err turned non-nil with Done open, or the other sharer live")
	}
	d.End()
	e.End()

	// A channel nobody uses is closed when a later one replaces it.
	f := new(Ctx)
	f.Init(context.Background(), time.Hour, &ds)
	df := f.Done()
	f.End()
	if isClosed(df) {
		t.Fatal("the latest channel was closed when its one user ended: the next Ctx of its Grain cannot share it")
	}
	g := new(Ctx)
	g.Init(context.Background(), time.Hour+Grain, &ds)
	_ = g.Done()
	if !isClosed(df) {
		t.Fatal("a replaced channel nobody uses is still open")
	}
	g.End()
	// The latest, unused, closes at its deadline (goleak checks its timer
	// goroutine is gone).
	h := new(Ctx)
	h.Init(context.Background(), 5*time.Millisecond, &ds)
	dh := h.Done()
	h.End()
	select {
	case <-dh:
	case <-time.After(5 * time.Second):
		t.Fatal("an unused latest channel did not close at its deadline")
	}
}

// A Ctx whose Done is shared still ends its derived contexts and runs its
// AfterFunc functions at its deadline, and at End.
func TestDeadlinesDerived(t *testing.T) {
	defer goleak.VerifyNone(t)
	var ds Deadlines
	for _, end := range []bool{false, true} {
		c := new(Ctx)
		c.Init(context.Background(), 20*time.Millisecond, &ds)
		child, cancel := context.WithCancel(c) // asks Done, then AfterFunc
		ran := make(chan struct{})
		context.AfterFunc(c, func() { close(ran) })
		want := context.DeadlineExceeded
		if end {
			c.End()
			want = context.Canceled
		}
		select {
		case <-child.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("end=%v: the derived ctx did not end", end)
		}
		<-ran
		if err := child.Err(); err != want {
			t.Errorf("end=%v: derived Err = %v, want %v", end, err, want)
		}
		cancel()
		c.End()
	}
}

// Many releases at once: the race detector checks the sharing, and every
// Ctx ends by its deadline or End with the matching Err.
func TestDeadlinesConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t)
	var ds Deadlines
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				var c Ctx
				c.Init(context.Background(), time.Duration(i%3)*time.Millisecond, &ds)
				done := c.Done()
				if i%2 == g%2 {
					<-done
					if c.Err() != context.DeadlineExceeded {
						t.Errorf("Err after Done = %v", c.Err())
					}
				}
				c.End()
				if c.Err() == nil {
					t.Error("Err nil after End")
				}
			}
		})
	}
	wg.Wait()
	// Let the last channel's timer fire, for goleak.
	time.Sleep(5 * time.Millisecond)
}

// A release's Done costs no allocation when the Guard's releases share a
// Grain (one channel and timer per Grain).
func TestDeadlinesAllocs(t *testing.T) {
	var ds Deadlines
	var c Ctx
	n := testing.AllocsPerRun(1000, func() {
		c = Ctx{}
		c.Init(context.Background(), time.Minute, &ds)
		_ = c.Done()
		c.End()
	})
	if n != 0 {
		t.Errorf("a shared Done costs %v allocations", n)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
