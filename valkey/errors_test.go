//go:build unix

package valkey

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/internal/golden"
)

// TestErrorMessages: the backend's refusals and failures print one
// readable message each, compared with testdata/errors.golden (node
// addresses shown as $NODE0, $NODE1, ...). After an intended change,
// rewrite it with go test -run TestErrorMessages -update ./valkey.
func TestErrorMessages(t *testing.T) {
	srvs, addrs := startServers(t, 3)
	hide := func(err error) error {
		if err == nil {
			return nil
		}
		msg := err.Error()
		for i, a := range addrs {
			msg = strings.ReplaceAll(msg, a, "$NODE"+strconv.Itoa(i))
		}
		return errors.New(msg)
	}
	clients := make([]valkeygo.Client, len(addrs))
	for i, a := range addrs {
		clients[i] = testClient(t, a)
	}
	ctx := context.Background()
	newRedLock := func(t *testing.T) *RedLock {
		r, err := NewRedLock(clients, testOpts(t.TempDir())...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close() })
		return r
	}
	single := func(t *testing.T) *Backend {
		b, err := New(clients[0], testOpts(t.TempDir())...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	// refused tries until every node that is down says so (a connection
	// in use when its server stopped first reports EOF).
	refused := func(t *testing.T, try func() error) error {
		var err error
		for range 50 {
			if err = try(); err != nil && !strings.Contains(err.Error(), "EOF") {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		return hide(err)
	}
	// The order matters: the last cases take servers down.
	golden.Check(t, "testdata/errors.golden", []golden.Case{
		golden.C("NewRedLock with one client twice", func(t *testing.T) error {
			_, err := NewRedLock([]valkeygo.Client{clients[0], clients[1], clients[0]})
			return hide(err)
		}),
		golden.C("NewRedLock with two clients of one server", func(t *testing.T) error {
			_, err := NewRedLock([]valkeygo.Client{clients[0], clients[1], testClient(t, addrs[1])})
			return hide(err)
		}),
		golden.C("NewRedLock with a nil client", func(t *testing.T) error {
			_, err := NewRedLock([]valkeygo.Client{clients[0], nil})
			return hide(err)
		}),
		golden.C("a key prefix with a brace", func(t *testing.T) error {
			_, err := New(clients[0], WithKeyPrefix("a{"))
			return err
		}),
		golden.C("an empty name", func(t *testing.T) error {
			_, _, err := single(t).TryLock(ctx, "")
			return err
		}),
		golden.C("a semaphore limit of 0", func(t *testing.T) error {
			_, _, err := single(t).TryAcquire(ctx, "job", 0)
			return err
		}),
		golden.C("a try after Close", func(t *testing.T) error {
			b := single(t)
			_ = b.Close()
			_, _, err := b.TryLock(ctx, "job")
			return err
		}),
		golden.C("a second release", func(t *testing.T) error {
			l := mustLock(t, single(t), "job")
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			return l.Release(ctx)
		}),
		golden.C("a release after the key was deleted", func(t *testing.T) error {
			l := mustLock(t, single(t), "job")
			loseLease(t, l)
			return l.Release(ctx)
		}),
		golden.C("RedLock: a try with a majority down", func(t *testing.T) error {
			r := newRedLock(t)
			srvs[1].Stop()
			srvs[2].Stop()
			return refused(t, func() error { _, _, err := r.TryLock(ctx, "job"); return err })
		}),
		golden.C("RedLock: through dlock, a wait that outlasts the outage", func(t *testing.T) error {
			c, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			_, err := dlock.NewMutex(newRedLock(t)).Acquire(c, "job")
			return hide(err)
		}),
		golden.C("a try with the server down", func(t *testing.T) error {
			b := single(t)
			srvs[0].Stop()
			return refused(t, func() error { _, _, err := b.TryLock(ctx, "job"); return err })
		}),
	})
}
