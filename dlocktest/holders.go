package dlocktest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// sinceSlack is how far a holder's Since may be from the moment the test
// took the lock: a backend may record a server's clock.
const sinceSlack = 5 * time.Second

// describes reports whether g's backend records holders (a free name has
// none); it skips t when the backend does not.
func describes[L backend.Lease](t *testing.T, g *dlock.Guard[L], ctx context.Context, name string) {
	t.Helper()
	hs, err := g.Holders(ctx, name)
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip("the backend does not record holders (no backend.LockDescriber, RWDescriber or SemaphoreDescriber)")
	}
	if err != nil || len(hs) != 0 {
		t.Fatalf("Holders of a free name: %v, %v; want none", hs, err)
	}
}

// expectHolders checks that g.Holders(name) lists exactly the holders
// want: by process id, owner text and Shared, in any order, each with this
// machine's host name and a Since within sinceSlack of [from, to] — or,
// under Harness.HoldersWithoutOwner, by process id and Shared only.
func (s *suite[L]) expectHolders(t *testing.T, g *dlock.Guard[L], name string, from, to time.Time, want ...backend.Holder) {
	t.Helper()
	noOwner := s.h.HoldersWithoutOwner
	hs, err := g.Holders(context.Background(), name)
	if err != nil {
		t.Fatalf("Holders: %v", err)
	}
	if len(hs) != len(want) {
		t.Fatalf("Holders listed %d holders (%+v), want %d (%+v)", len(hs), hs, len(want), want)
	}
	host, _ := os.Hostname()
	left := append([]backend.Holder(nil), want...)
	for _, h := range hs {
		if h.Host != host {
			t.Errorf("holder %+v: Host %q, want %q", h, h.Host, host)
		}
		if !noOwner && (h.Since.Before(from.Add(-sinceSlack)) || h.Since.After(to.Add(sinceSlack))) {
			t.Errorf("holder %+v: Since %v, want between %v and %v", h, h.Since, from, to)
		}
		if !h.ProcessStart.IsZero() && !h.Since.IsZero() && h.ProcessStart.After(h.Since.Add(sinceSlack)) {
			t.Errorf("holder %+v: its process started after it took the lock", h)
		}
		found := false
		for i, w := range left {
			if w.PID == h.PID && (noOwner || w.Owner == h.Owner) && w.Shared == h.Shared {
				left = append(left[:i], left[i+1:]...)
				found = true
				break
			}
		}
		if !found {
			t.Errorf("Holders listed %+v, which is none of %+v", h, want)
		}
	}
}

// testHolders checks that Holders tells who holds a name — this process
// with its owner text, or a helper process — and that a free name has
// none (guarantee 13).
func (s *suite[L]) testHolders(t *testing.T, k kind[L]) {
	a, b := k.guard(s.node(t)), k.guard(s.node(t))
	name := s.name(t)
	ctx := s.ctx(t)
	describes(t, b, ctx, name)
	owner := "dlocktest owner é \"" + t.Name() + "\""
	from := time.Now()
	lk, err := a.TryAcquire(dlock.ContextWithOwner(ctx, owner), name)
	if err != nil {
		t.Fatalf("TryAcquire: %v", err)
	}
	s.expectHolders(t, b, name, from, time.Now(), backend.Holder{PID: os.Getpid(), Owner: owner, Shared: k.shared})
	release(t, lk)
	s.expectHolders(t, b, name, from, time.Now())
	if s.h.InProcess {
		return
	}
	from = time.Now()
	c, _ := startOwnedChild(t, s.top, s.space, k.child, name, k.limit, "helper process")
	s.expectHolders(t, b, name, from, time.Now(), backend.Holder{PID: c.cmd.Process.Pid, Owner: "helper process", Shared: k.shared})
	c.release(t)
	s.expectHolders(t, b, name, from, time.Now())
}

// testReadersHolders checks that Holders lists every reader of an RW
// lock (Shared), then its writer, from either side.
func (s *suite[L]) testReadersHolders(t *testing.T) {
	a, b := s.rwOf(t), s.rwOf(t)
	name := s.name(t)
	ctx := s.ctx(t)
	describes(t, b.Write(), ctx, name)
	from := time.Now()
	r1, err := a.Read().TryAcquire(dlock.ContextWithOwner(ctx, "reader 1"), name)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := b.Read().TryAcquire(dlock.ContextWithOwner(ctx, "reader 2"), name)
	if err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	readers := []backend.Holder{{PID: pid, Owner: "reader 1", Shared: true}, {PID: pid, Owner: "reader 2", Shared: true}}
	s.expectHolders(t, b.Write(), name, from, time.Now(), readers...)
	s.expectHolders(t, a.Read(), name, from, time.Now(), readers...)
	release(t, r1)
	release(t, r2)
	w, err := a.Write().TryAcquire(dlock.ContextWithOwner(ctx, "writer"), name)
	if err != nil {
		t.Fatal(err)
	}
	s.expectHolders(t, b.Read(), name, from, time.Now(), backend.Holder{PID: pid, Owner: "writer"})
	release(t, w)
	s.expectHolders(t, b.Read(), name, from, time.Now())
}

// testSemaphoreHolders checks that Holders lists one entry per ticket
// held.
func (s *suite[L]) testSemaphoreHolders(t *testing.T) {
	a, b := s.semOf(t, 3), s.semOf(t, 3)
	name := s.name(t)
	ctx := s.ctx(t)
	describes(t, b, ctx, name)
	from := time.Now()
	var lks []*dlock.Lock[L]
	for _, owner := range []string{"ticket 1", "ticket 2"} {
		lk, err := a.TryAcquire(dlock.ContextWithOwner(ctx, owner), name)
		if err != nil {
			t.Fatal(err)
		}
		lks = append(lks, lk)
	}
	pid := os.Getpid()
	s.expectHolders(t, b, name, from, time.Now(), backend.Holder{PID: pid, Owner: "ticket 1"}, backend.Holder{PID: pid, Owner: "ticket 2"})
	for _, lk := range lks {
		release(t, lk)
	}
	s.expectHolders(t, b, name, from, time.Now())
}
