package dlock_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/dlocktest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from this run")

// errorCase is one error path: what it does, and the error it returns.
type errorCase struct {
	what string
	err  func(t *testing.T) error
}

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
	cases := []errorCase{
		{"try of a held lock", func(t *testing.T) error {
			held(t, "job")
			_, err := mu.TryAcquire(ctx, "job")
			return err
		}},
		{"wait ended by its deadline", func(t *testing.T) error {
			held(t, "job")
			c, cancel := deadline()
			defer cancel()
			_, err := mu.Acquire(c, "job")
			return err
		}},
		{"wait cancelled with a cause", func(t *testing.T) error {
			held(t, "job")
			c, cancel := context.WithCancelCause(ctx)
			time.AfterFunc(10*time.Millisecond, func() { cancel(errors.New("shutting down")) })
			_, err := mu.Acquire(c, "job")
			return err
		}},
		{"wait ended during a server outage", func(t *testing.T) error {
			f := &flaky{m: dlocktest.NewMemory()}
			f.down.Store(true)
			c, cancel := deadline()
			defer cancel()
			_, err := dlock.NewMutex(flakyWaiter{f}, dlock.WithBackoff(time.Millisecond, time.Millisecond)).Acquire(c, "job")
			return err
		}},
		{"wait ended by a permanent error", func(t *testing.T) error {
			f := &flaky{m: dlocktest.NewMemory(), err: backend.Permanent(errors.New("WRONGPASS invalid username-password pair"))}
			f.down.Store(true)
			_, err := dlock.NewMutex(flakyWaiter{f}).Acquire(ctx, "job")
			return err
		}},
		{"empty name", func(t *testing.T) error { _, err := mu.TryAcquire(ctx, ""); return err }},
		{"nil fn", func(t *testing.T) error { return mu.Do(ctx, "job", nil) }},
		{"semaphore limit 0", func(t *testing.T) error {
			_, err := dlock.NewSemaphore(mem, 0).TryAcquire(ctx, "job")
			return err
		}},
		{"nil backend", func(t *testing.T) error {
			_, err := dlock.NewMutex[*dlocktest.MemoryLease](nil).TryAcquire(ctx, "job")
			return err
		}},
		{"long name", func(t *testing.T) error {
			name := strings.Repeat("n", 100)
			held(t, name)
			_, err := mu.TryAcquire(ctx, name)
			return err
		}},
		{"lock lost in Do", func(t *testing.T) error {
			c := &capture{m: mem}
			return dlock.NewMutex(c).TryDo(ctx, "job", func(ctx context.Context) error {
				mem.Lose(c.lease)
				<-ctx.Done()
				return nil
			})
		}},
		{"second release", func(t *testing.T) error {
			lk := held(t, "job")
			_ = lk.Release(ctx)
			return lk.Release(ctx)
		}},
		{"release of a lost lock", func(t *testing.T) error {
			lk := held(t, "job")
			mem.Lose(lk.Lease())
			return lk.Release(ctx)
		}},
		{"Err after a loss", func(t *testing.T) error {
			lk := held(t, "job")
			mem.Lose(lk.Lease())
			return lk.Err()
		}},
		{"Err after a release", func(t *testing.T) error {
			lk := held(t, "job")
			_ = lk.Release(ctx)
			return lk.Err()
		}},
	}
	compareGolden(t, "testdata/errors.golden", cases)
}

// compareGolden runs each case and compares "what: message" lines with
// the golden file.
func compareGolden(t *testing.T, path string, cases []errorCase) {
	t.Helper()
	var b strings.Builder
	for _, c := range cases {
		var err error
		t.Run(strings.ReplaceAll(c.what, " ", "_"), func(t *testing.T) { err = c.err(t) })
		if err == nil {
			t.Errorf("%s: no error", c.what)
			continue
		}
		fmt.Fprintf(&b, "%s:\n\t%s\n", c.what, err)
	}
	got := b.String()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with -update)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("error messages differ from %s (-want +got); if intended, rerun with -update:\n%s", path, d)
	}
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
