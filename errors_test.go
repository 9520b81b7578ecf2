package dlock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/internal/golden"
)

// Every error path of the engine prints one readable message: the kind
// and name once, one "dlock:" prefix, the sentinel's text once, long names
// cut. The messages are compared with testdata/errors.golden; after an
// intended change, rewrite it with go test -run TestErrorMessages -update.
func TestErrorMessages(t *testing.T) {
	ctx := context.Background()
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem)
	held := func(t *testing.T, name string) *dlock.Lock[*dlocktest.MemoryLease] {
		lk, err := mu.TryAcquire(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = lk.Release(ctx) })
		return lk
	}
	deadline := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 20*time.Millisecond) }
	cases := []golden.Case{
		golden.C("try of a held lock", func(t *testing.T) error {
			held(t, "job")
			_, err := mu.TryAcquire(ctx, "job")
			return err
		}),
		golden.C("wait ended by its deadline", func(t *testing.T) error {
			held(t, "job")
			c, cancel := deadline()
			defer cancel()
			_, err := mu.Acquire(c, "job")
			return err
		}),
		golden.C("wait cancelled with a cause", func(t *testing.T) error {
			held(t, "job")
			c, cancel := context.WithCancelCause(ctx)
			time.AfterFunc(10*time.Millisecond, func() { cancel(errors.New("shutting down")) })
			_, err := mu.Acquire(c, "job")
			return err
		}),
		golden.C("wait ended during a server outage", func(t *testing.T) error {
			f := &flaky{m: dlocktest.NewMemory()}
			f.down.Store(true)
			c, cancel := deadline()
			defer cancel()
			_, err := dlock.NewMutex(flakyWaiter{f}, dlock.WithBackoff(time.Millisecond, time.Millisecond)).Acquire(c, "job")
			return err
		}),
		golden.C("wait ended by a permanent error", func(t *testing.T) error {
			f := &flaky{m: dlocktest.NewMemory(), err: backend.Permanent(errors.New("WRONGPASS invalid username-password pair"))}
			f.down.Store(true)
			_, err := dlock.NewMutex(flakyWaiter{f}).Acquire(ctx, "job")
			return err
		}),
		golden.C("empty name", func(t *testing.T) error { _, err := mu.TryAcquire(ctx, ""); return err }),
		golden.C("nil fn", func(t *testing.T) error { return mu.Do(ctx, "job", nil) }),
		golden.C("semaphore limit 0", func(t *testing.T) error {
			_, err := dlock.NewSemaphore(mem, 0).TryAcquire(ctx, "job")
			return err
		}),
		golden.C("nil backend", func(t *testing.T) error {
			_, err := dlock.NewMutex[*dlocktest.MemoryLease](nil).TryAcquire(ctx, "job")
			return err
		}),
		golden.C("long name", func(t *testing.T) error {
			name := strings.Repeat("n", 100)
			held(t, name)
			_, err := mu.TryAcquire(ctx, name)
			return err
		}),
		golden.C("lock lost in Do", func(t *testing.T) error {
			c := &capture{m: mem}
			return dlock.NewMutex(c).TryDo(ctx, "job", func(ctx context.Context) error {
				mem.Lose(c.lease)
				<-ctx.Done()
				return nil
			})
		}),
		golden.C("second release", func(t *testing.T) error {
			lk := held(t, "job")
			_ = lk.Release(ctx)
			return lk.Release(ctx)
		}),
		golden.C("release of a lost lock", func(t *testing.T) error {
			lk := held(t, "job")
			mem.Lose(lk.Lease())
			return lk.Release(ctx)
		}),
		golden.C("Err after a loss", func(t *testing.T) error {
			lk := held(t, "job")
			mem.Lose(lk.Lease())
			return lk.Err()
		}),
		golden.C("Err after a release", func(t *testing.T) error {
			lk := held(t, "job")
			_ = lk.Release(ctx)
			return lk.Err()
		}),
	}
	golden.Check(t, "testdata/errors.golden", cases)
}

// capture keeps the last lease it handed out.
type capture struct {
	m     *dlocktest.Memory
	lease *dlocktest.MemoryLease
}

func (c *capture) TryLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	l, ok, err := c.m.TryLock(ctx, name)
	c.lease = l
	return l, ok, err
}
