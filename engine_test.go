package dlock_test

import (
	"context"
	"testing"

	"github.com/dlock-go/dlock"
)

// freeLease is a lease that costs nothing: the engine's own allocations
// are all that TestEngineAllocs counts.
type freeLease struct{ lost chan struct{} }

func (l *freeLease) Release(ctx context.Context) error { return ctx.Err() }

// doneLease is a freeLease whose Release waits on its ctx's Done as a
// network client's does when its connection is busy (valkey-go queueing a
// command behind others).
type doneLease struct{ freeLease }

func (l *doneLease) Release(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	default:
		return nil
	}
}
func (l *freeLease) Lost() <-chan struct{}        { return l.lost }
func (l *freeLease) IsLost() bool                 { return false }
func (l *freeLease) AfterLost(func()) func() bool { return stopFree }

func stopFree() bool { return true }

// freeLocker grants its one lease to every try.
type freeLocker struct{ l *freeLease }

func (f freeLocker) TryLock(context.Context, string) (*freeLease, bool, error) { return f.l, true, nil }

// The engine's own allocations per acquisition and release, over a
// backend that allocates nothing: Acquire + Release makes the Lock and
// nothing else (its release ctx is part of it); Do adds fn's ctx and its
// cancel function (context.WithCancelCause) and the loss watch's function.
func TestEngineAllocs(t *testing.T) {
	mu := dlock.NewMutex(freeLocker{&freeLease{lost: make(chan struct{})}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fn := func(context.Context) error { return nil }
	for _, tc := range []struct {
		name string
		max  float64
		f    func() error
	}{
		{"Acquire+Release", 1, func() error {
			lk, err := mu.Acquire(ctx, "x")
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}},
		{"TryAcquire+Release", 1, func() error {
			lk, err := mu.TryAcquire(ctx, "x")
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}},
		{"Do", 4, func() error { return mu.Do(ctx, "x", fn) }},
		{"TryDo", 4, func() error { return mu.TryDo(ctx, "x", fn) }},
	} {
		var err error
		n := testing.AllocsPerRun(200, func() {
			if e := tc.f(); e != nil {
				err = e
			}
		})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n > tc.max {
			t.Errorf("%s costs %v allocations, want %v", tc.name, n, tc.max)
		}
	}
}

// doneLocker grants its one doneLease to every try.
type doneLocker struct{ l *doneLease }

func (f doneLocker) TryLock(context.Context, string) (*doneLease, bool, error) { return f.l, true, nil }

// BenchmarkEngine measures the engine's own CPU per acquisition and
// release, over backends that do no work: the part of every lock that
// dlock, not its backend, costs. "Done" releases ask the release ctx for
// Done, as a network client under load does.
func BenchmarkEngine(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fn := func(context.Context) error { return nil }
	free := dlock.NewMutex(freeLocker{&freeLease{lost: make(chan struct{})}})
	done := dlock.NewMutex(doneLocker{&doneLease{freeLease{lost: make(chan struct{})}}})
	for _, bc := range []struct {
		name string
		f    func() error
	}{
		{"AcquireRelease", func() error {
			lk, err := free.Acquire(ctx, "x")
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}},
		{"AcquireReleaseDone", func() error {
			lk, err := done.Acquire(ctx, "x")
			if err != nil {
				return err
			}
			return lk.Release(ctx)
		}},
		{"Do", func() error { return free.Do(ctx, "x", fn) }},
		{"DoDone", func() error { return done.Do(ctx, "x", fn) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := bc.f(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
