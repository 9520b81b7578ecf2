package faults

import (
	"path/filepath"
	"sync"
	"testing"
)

// sec builds a completed section: acquisition called at call, entered at
// enter, left at leave, released 1 later.
func sec(proc int, kind string, call, enter, leave int64, token uint64) Section {
	return Section{Done: true, Record: Record{Proc: proc, Kind: kind, Call: call, Enter: enter,
		Leave: leave, Rel: leave + 1, Token: token, Seq: int(enter)}}
}

func TestCheckAcceptsGoodHistories(t *testing.T) {
	mutex := []Section{
		sec(1, KindExclusive, 0, 1, 10, 1),
		sec(2, KindExclusive, 0, 12, 20, 2), // waited while 1 held
		sec(1, KindExclusive, 15, 22, 30, 3),
	}
	if r := Check(mutex, nil, nil, Spec{}); r.Violations() != 0 {
		t.Fatalf("good mutex history rejected: %+v", r)
	}
	sem := []Section{
		sec(1, KindTicket, 0, 1, 10, 1),
		sec(2, KindTicket, 0, 2, 12, 2),
		sec(3, KindTicket, 0, 11, 20, 3),
	}
	if r := Check(sem, nil, nil, Spec{Limit: 2}); r.Violations() != 0 || r.MaxConcurrent != 2 {
		t.Fatalf("good semaphore history rejected: %+v", r)
	}
	rw := []Section{
		sec(1, KindShared, 0, 1, 10, 1),
		sec(2, KindShared, 0, 2, 12, 2),
		sec(3, KindExclusive, 0, 14, 20, 3),
		sec(1, KindShared, 15, 22, 30, 4),
	}
	if r := Check(rw, nil, nil, Spec{}); r.Violations() != 0 {
		t.Fatalf("good RW history rejected: %+v", r)
	}
}

func TestCheckFindsViolations(t *testing.T) {
	overlap := []Section{
		sec(1, KindExclusive, 0, 1, 10, 1),
		sec(2, KindExclusive, 0, 5, 20, 2),
	}
	r := Check(overlap, nil, nil, Spec{})
	if r.Untold != 1 || r.Linearizable != "Illegal" || r.Violations() == 0 {
		t.Fatalf("overlap not caught: %+v", r)
	}
	tokens := []Section{
		sec(1, KindExclusive, 0, 1, 10, 5),
		sec(2, KindExclusive, 0, 12, 20, 4),
	}
	if r := Check(tokens, nil, nil, Spec{}); r.TokenViolations != 1 {
		t.Fatalf("token regression not caught: %+v", r)
	}
	dup := []Section{
		sec(1, KindTicket, 0, 1, 10, 7),
		sec(2, KindTicket, 0, 2, 10, 7),
	}
	if r := Check(dup, nil, nil, Spec{Limit: 2}); r.TokenViolations != 1 {
		t.Fatalf("shared token not caught: %+v", r)
	}
	sem := []Section{
		sec(1, KindTicket, 0, 1, 10, 1),
		sec(2, KindTicket, 0, 2, 12, 2),
		sec(3, KindTicket, 0, 3, 20, 3),
	}
	if r := Check(sem, nil, nil, Spec{Limit: 2}); r.OverLimit != 1 || r.Linearizable != "Illegal" {
		t.Fatalf("three holders of a two-ticket semaphore not caught: %+v", r)
	}
	rw := []Section{
		sec(1, KindShared, 0, 1, 10, 1),
		sec(3, KindExclusive, 0, 5, 20, 2),
	}
	if r := Check(rw, nil, nil, Spec{}); r.Untold != 1 || r.Linearizable != "Illegal" {
		t.Fatalf("writer beside a reader not caught: %+v", r)
	}
}

func TestCheckLostLocks(t *testing.T) {
	// Holder 1 is told at 8 that its lease ran out; 2 enters at 9: fine.
	a := sec(1, KindExclusive, 0, 1, 10, 1)
	a.Lost, a.Told = true, 8
	b := sec(2, KindExclusive, 0, 9, 20, 2)
	if r := Check([]Section{a, b}, nil, nil, Spec{}); r.Violations() != 0 || r.Excused != 1 {
		t.Fatalf("told-then-taken rejected: %+v", r)
	}
	// 2 enters at 7, before 1 was told, and no fault could revoke: a lease
	// was lost after someone else took it.
	b.Enter = 7
	if r := Check([]Section{a, b}, nil, nil, Spec{}); r.Violations() == 0 {
		t.Fatalf("entry before the holder was told not caught: %+v", r)
	}
	// ...unless a revoking fault (a key deleted at 5) explains it.
	del := []Fault{{Kind: "keydel", Proc: -1, Start: 5, End: 5, Revokes: true}}
	if r := Check([]Section{a, b}, del, nil, Spec{}); r.Violations() != 0 || r.Excused != 1 {
		t.Fatalf("revoked lock rejected: %+v", r)
	}
	// A holder never told is a violation even with a revoking fault.
	a.Lost = false
	if r := Check([]Section{a, b}, del, nil, Spec{}); r.Untold != 1 {
		t.Fatalf("untold loss not caught: %+v", r)
	}
	// A killed holder (no exit record) frees its lock once dead.
	k := Section{Record: Record{Proc: 3, Kind: KindExclusive, Call: 0, Enter: 1}}
	c := sec(4, KindExclusive, 0, 6, 9, 0)
	deaths := []Death{{Proc: 3, Kill: 4, Reap: 5}}
	if r := Check([]Section{k, c}, nil, deaths, Spec{}); r.Violations() != 0 || r.Killed != 1 {
		t.Fatalf("killed holder's successor rejected: %+v", r)
	}
	// Entry before the kill is allowed too: the killed worker may have
	// released and died before it could record its exit (its release is of
	// unknown outcome from its entry on).
	c.Enter = 3
	if r := Check([]Section{k, c}, nil, deaths, Spec{}); r.Violations() != 0 {
		t.Fatalf("entry after a possible unrecorded release rejected: %+v", r)
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "h")
	w, err := NewRecorder(p)
	if err != nil {
		t.Fatal(err)
	}
	enter := Record{Ev: "enter", Proc: 1, G: 2, Seq: 3, Kind: KindExclusive, Call: 10, Enter: 11, Token: 4}
	exit := enter
	exit.Ev, exit.Leave, exit.Rel, exit.Wrote = "exit", 20, 21, true
	for _, r := range []Record{enter, exit, {Ev: "enter", Proc: 1, G: 1, Seq: 1, Kind: KindExclusive, Call: 1, Enter: 2}} {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	ss, err := ReadRecords(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 || ss[0].Done || !ss[1].Done || ss[1].Leave != 20 || ss[1].Token != 4 || !ss[1].Wrote {
		t.Fatalf("records: %+v", ss)
	}
}

func TestResourceCountsLostUpdates(t *testing.T) {
	r := NewResource(filepath.Join(t.TempDir(), "res"), false)
	// Two overlapping read-modify-writes: one update is lost.
	a, _ := r.Read(1)
	b, _ := r.Read(2)
	if err := r.Write(2, b+1); err != nil {
		t.Fatal(err)
	}
	if err := r.Write(1, a+1); err != nil { // stale, not enforced
		t.Fatal(err)
	}
	st, _ := r.State()
	if st.Value != 1 || st.Lost != 1 || st.Stale != 1 || st.Writes != 2 {
		t.Fatalf("state %+v", st)
	}
	// Enforced: the stale holder is refused, nothing is lost.
	f := NewResource(filepath.Join(t.TempDir(), "res"), true)
	a, _ = f.Read(1)
	b, _ = f.Read(2)
	if err := f.Write(1, a+1); err != ErrStale {
		t.Fatalf("stale write: %v", err)
	}
	if err := f.Write(2, b+1); err != nil {
		t.Fatal(err)
	}
	st, _ = f.State()
	if st.Value != 1 || st.Lost != 0 || st.Refused != 1 {
		t.Fatalf("state %+v", st)
	}
	// Concurrent single accesses are atomic.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				_ = r.update(func(s *ResourceState) error { s.Value++; return nil })
			}
		}()
	}
	wg.Wait()
	if st, _ := r.State(); st.Value != 161 {
		t.Fatalf("value %d, want 161", st.Value)
	}
}

// A holder whose Release began, then was reported lost (its answer lost in
// a black hole), may have been released from the moment it left.
func TestCheckReleaseReportedLost(t *testing.T) {
	a := sec(1, KindExclusive, 0, 1, 10, 1)
	a.Lost, a.Told, a.Rel = true, 30, 30
	b := sec(2, KindExclusive, 0, 15, 20, 2)
	if r := Check([]Section{a, b}, nil, nil, Spec{}); r.Violations() != 0 {
		t.Fatalf("entry after a release that was reported lost rejected: %+v", r)
	}
	b.Enter = 5 // before the holder left: a violation
	if r := Check([]Section{a, b}, nil, nil, Spec{}); r.Violations() == 0 {
		t.Fatalf("entry before the holder left not caught: %+v", r)
	}
}

// A reader that entered beside a writer whose lock was revoked (and who was
// told) may see that writer's stale write: fencing's case, not a violation.
func TestCheckTornUnderRevokedWriter(t *testing.T) {
	w := sec(1, KindExclusive, 0, 1, 10, 1)
	w.Lost, w.Told = true, 12
	r := sec(2, KindShared, 0, 6, 11, 2)
	r.Torn = true
	del := []Fault{{Kind: "terminate", Proc: -1, Start: 5, End: 5, Revokes: true}}
	if rep := Check([]Section{w, r}, del, nil, Spec{}); rep.Violations() != 0 || rep.TornExcused != 1 {
		t.Fatalf("torn read under a revoked writer rejected: %+v", rep)
	}
	w.Lost = false // the writer was never told: a violation
	if rep := Check([]Section{w, r}, del, nil, Spec{}); rep.Violations() == 0 {
		t.Fatalf("torn read under an untold writer not caught: %+v", rep)
	}
}

// A holder whose lock was granted, then revoked by a fault (key deleted)
// before it recorded its entry, may enter after the next holder, with a
// smaller token: the grants were in token order, and the revoked holder is
// told. Found by the short run (valkey/mutex/keydel).
func TestCheckRevokedBeforeEntry(t *testing.T) {
	del := []Fault{{Kind: "keydel", Proc: -1, Start: 100, End: 101, Revokes: true}}
	slow := Section{Done: true, Record: Record{Proc: 2, Seq: 1, Kind: KindExclusive, Call: 90, Enter: 110,
		Leave: 114, Rel: 115, Token: 5, Lost: true, Told: 115}}
	next := Section{Done: true, Record: Record{Proc: 1, Seq: 1, Kind: KindExclusive, Call: 99, Enter: 105,
		Leave: 112, Rel: 113, Token: 6}}
	if r := Check([]Section{slow, next}, del, nil, Spec{}); r.Violations() != 0 || r.Excused != 1 {
		t.Fatalf("a holder revoked before its entry rejected: %+v", r)
	}
	untold := slow
	untold.Lost, untold.Told = false, 0
	if r := Check([]Section{untold, next}, del, nil, Spec{}); r.Untold != 1 || r.TokenViolations != 1 {
		t.Fatalf("an untold holder beside the next not caught: %+v", r)
	}
	if r := Check([]Section{slow, next}, nil, nil, Spec{}); r.Untold != 1 || r.TokenViolations != 1 {
		t.Fatalf("a loss no fault could explain excused: %+v", r)
	}
	// Without an overlap, the token order is still checked where grants
	// are ordered: here the revoked holder entered after the next left.
	late := slow
	late.Enter, late.Leave, late.Rel, late.Told = 120, 121, 122, 122
	if r := Check([]Section{late, next}, del, nil, Spec{}); r.Violations() != 0 {
		t.Fatalf("a revoked holder entering late rejected: %+v", r)
	}
	late.Call = 113 // acquired after the next had entered: ordered, so its smaller token is a violation
	if r := Check([]Section{late, next}, del, nil, Spec{}); r.TokenViolations != 1 {
		t.Fatalf("a token regression across ordered acquisitions not caught: %+v", r)
	}
}
