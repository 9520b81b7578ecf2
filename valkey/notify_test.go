package valkey

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/dlocktest"
)

// TestNotifierWakesOne: on a mutex's or semaphore's channel a release
// wakes the first waiter only; a waiter that gives its turn up (passOn)
// wakes the next; on a reader-writer channel a release wakes everyone.
func TestNotifierWakesOne(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	n := b.c.nodes[0].notif
	c := b.c.nodes[0].client
	ctx := testCtx(t)
	publish := func(ch string) {
		t.Helper()
		if err := c.Do(ctx, c.B().Publish().Channel(ch).Message("").Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	got := func(w chan struct{}) bool {
		select {
		case <-w:
			return true
		case <-time.After(2 * time.Second):
			return false
		}
	}
	quiet := func(ws ...chan struct{}) {
		t.Helper()
		time.Sleep(50 * time.Millisecond)
		for i, w := range ws {
			if len(w) != 0 {
				t.Fatalf("waiter %d woken too", i)
			}
		}
	}
	for _, one := range []bool{true, false} {
		ch := testPrefix(t.TempDir()) + "chan"
		ws := []chan struct{}{make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)}
		var subs []*subscription
		for _, w := range ws {
			s, err := n.subscribe(ctx, ch, one, "", w)
			if err != nil {
				t.Fatal(err)
			}
			subs = append(subs, s)
		}
		publish(ch)
		if !one {
			for i, w := range ws {
				if !got(w) {
					t.Fatalf("broadcast: waiter %d not woken", i)
				}
			}
			for _, s := range subs {
				s.close()
			}
			continue
		}
		if !got(ws[0]) {
			t.Fatal("the first waiter was not woken")
		}
		quiet(ws[1], ws[2])
		// The first waiter stops without using its turn: the second gets it.
		subs[0].passOn()
		subs[0].close()
		if !got(ws[1]) {
			t.Fatal("the turn was not passed on")
		}
		quiet(ws[2])
		// Two releases before anyone took a signal wake two waiters.
		publish(ch)
		publish(ch)
		for end := time.Now().Add(2 * time.Second); len(ws[1]) == 0 || len(ws[2]) == 0; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("two releases did not wake two waiters")
			}
		}
		for _, s := range subs[1:] {
			s.close()
		}
	}
}

// TestWaitPassesTurnOn: a mutex waiter woken by a release that does not
// take the lock (its attempt fails, or its ctx ends) passes the turn to
// the next waiter of the Backend; a semaphore waiter that takes a ticket
// passes one on too (there may be room for more); a mutex waiter that
// takes the lock does not.
func TestWaitPassesTurnOn(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	c := b.c
	c.fair = "0" // as a RedLock's: turns are passed on
	n := c.nodes[0].notif
	cl := c.nodes[0].client
	errGaveUp := errors.New("gave up")
	for _, tc := range []struct {
		name   string
		k      kind
		woken  func(context.CancelFunc) (attempt, error) // A's attempt after its wake-up
		passes bool
	}{
		{"mutex-attempt-fails", kindMutex, func(context.CancelFunc) (attempt, error) { return attempt{}, errGaveUp }, true},
		{"mutex-ctx-ends", kindMutex, func(cancel context.CancelFunc) (attempt, error) {
			cancel()
			return attempt{hint: time.Hour}, nil
		}, true},
		{"mutex-acquired", kindMutex, func(context.CancelFunc) (attempt, error) { return attempt{lease: &Lease{}}, nil }, false},
		{"sem-acquired", kindSem, func(context.CancelFunc) (attempt, error) { return attempt{lease: &Lease{}}, nil }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, _ := keyBase(c.cfg.prefix, tc.name)
			ch := channel(base, tc.k)
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			var calls atomic.Int32
			subscribed := make(chan struct{})
			woke := make(chan struct{})
			try := func(context.Context, *request, string, string) (attempt, error) {
				switch calls.Add(1) {
				case 1:
					return attempt{hint: time.Hour}, nil // fails, then subscribes
				case 2:
					close(subscribed) // the retry after subscribing
					return attempt{hint: time.Hour}, nil
				default:
					<-woke
					return tc.woken(cancel)
				}
			}
			done := make(chan error, 1)
			go func() {
				_, err := c.waitWith(ctx, newRequest(tc.k, tc.name, base, nil), try)
				done <- err
			}()
			<-subscribed
			w := make(chan struct{}, 1)
			s, err := n.subscribe(testCtx(t), ch, true, "", w) // B, behind A
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if err := cl.Do(testCtx(t), cl.B().Publish().Channel(ch).Message("").Build()).Error(); err != nil {
				t.Fatal(err)
			}
			// A is woken (its next attempt runs), not B.
			for calls.Load() < 3 {
				time.Sleep(time.Millisecond)
			}
			if len(w) != 0 {
				t.Fatal("B was woken by the release, A was first")
			}
			close(woke)
			<-done
			select {
			case <-w:
				if !tc.passes {
					t.Fatal("the turn was passed on")
				}
			case <-time.After(300 * time.Millisecond):
				if tc.passes {
					t.Fatal("the turn was not passed on")
				}
			}
		})
	}
}

// TestNotifierWakesByID: a message naming a waiter wakes that waiter
// only; one naming a waiter that has not yet joined the channel's
// subscription wakes it when it joins; a subscription that was answered
// before a given generation is reported live since then.
func TestNotifierWakesByID(t *testing.T) {
	addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	b := newTestBackend(t, t.TempDir(), addr)
	n := b.c.nodes[0].notif
	c := b.c.nodes[0].client
	ctx := testCtx(t)
	ch := testPrefix(t.TempDir()) + "chan"
	publish := func(msg string) {
		t.Helper()
		if err := c.Do(ctx, c.B().Publish().Channel(ch).Message(msg).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	wa, wb, wc := make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)
	gen0 := n.Gen()
	a, live, err := n.subscribeSince(ctx, ch, true, "a", wa, gen0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	if live {
		t.Fatal("a new subscription reported live before it was made")
	}
	gen1 := n.Gen()
	bs, live, err := n.subscribeSince(ctx, ch, true, "b", wb, gen1)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.close()
	if !live {
		t.Fatal("joining a subscription answered before gen1 is not reported live")
	}
	publish("b")
	select {
	case <-wb:
	case <-time.After(5 * time.Second):
		t.Fatal("the named waiter was not woken")
	}
	if len(wa) != 0 {
		t.Fatal("a waiter not named was woken")
	}
	publish("c") // c has not joined yet
	deadline := time.Now().Add(5 * time.Second)
	for {
		n.mu.Lock()
		seen := a.e.unclaimed[0] == "c" || a.e.unclaimed[1] == "c"
		n.mu.Unlock()
		if seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the message naming c was not kept")
		}
		time.Sleep(time.Millisecond)
	}
	cs, _, err := n.subscribeSince(ctx, ch, true, "c", wc, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.close()
	if len(wc) != 1 || len(wa) != 0 {
		t.Fatalf("after joining: c woken %v, a woken %v; want c only", len(wc) == 1, len(wa) == 1)
	}
}
