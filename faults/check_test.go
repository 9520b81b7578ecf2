package faults

import (
	"path/filepath"

	"github.com/anishathalye/porcupine"
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
	// Holder 1, black-holed from 2 to 7, is told at 8 that its lease ran
	// out; 2 enters at 9: fine.
	hole := []Fault{{Kind: "timeout", Proc: 1, Start: 2, End: 7}}
	a := sec(1, KindExclusive, 0, 1, 10, 1)
	a.Lost, a.Told = true, 8
	b := sec(2, KindExclusive, 0, 9, 20, 2)
	if r := Check([]Section{a, b}, hole, nil, Spec{}); r.Violations() != 0 || r.Excused != 1 {
		t.Fatalf("told-then-taken rejected: %+v", r)
	}
	// 2 enters at 7, before 1 was told, and no fault could revoke: a lease
	// was lost after someone else took it.
	b.Enter = 7
	if r := Check([]Section{a, b}, hole, nil, Spec{}); r.Violations() == 0 {
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
	// Entry after the kill, before the reaping: the release is of unknown
	// outcome from the kill on.
	c.Enter = 4
	if r := Check([]Section{k, c}, nil, deaths, Spec{}); r.Violations() != 0 {
		t.Fatalf("entry between kill and reaping rejected: %+v", r)
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
	// A leave record (written before Release) without its exit: the
	// section was killed after it called (or was about to call) Release.
	p2 := filepath.Join(t.TempDir(), "h")
	w, err = NewRecorder(p2)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Record{enter, {Ev: "leave", Proc: 1, G: 2, Seq: 3, Kind: KindExclusive, Leave: 19}} {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	ss, err = ReadRecords(p2)
	if err != nil || len(ss) != 1 || ss[0].Done || ss[0].Leave != 19 || ss[0].Enter != 11 || ss[0].Token != 4 {
		t.Fatalf("records with a leave: %+v %v", ss, err)
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
	hole := []Fault{{Kind: "timeout", Proc: 1, Start: 9, End: 29}}
	a := sec(1, KindExclusive, 0, 1, 10, 1)
	a.Lost, a.Told, a.Rel = true, 30, 30
	b := sec(2, KindExclusive, 0, 15, 20, 2)
	if r := Check([]Section{a, b}, hole, nil, Spec{}); r.Violations() != 0 {
		t.Fatalf("entry after a release that was reported lost rejected: %+v", r)
	}
	b.Enter = 5 // before the holder left: a violation
	if r := Check([]Section{a, b}, hole, nil, Spec{}); r.Violations() == 0 {
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

// Hole 1 of issue 12: a holder j whose lock a revoking fault may have taken
// before j entered is no excuse for an overlap with a holder i that entered
// before the revocation and was never told: i held its lock all along, so
// j's grant (before the revocation) came while i held.
func hole1(fault string, proc int) ([]Section, []Fault) {
	i := sec(1, KindExclusive, 40, 50, 300, 0)
	j := sec(2, KindExclusive, 99, 102, 150, 0)
	j.Lost, j.Told = true, 151 // told only by its Release
	return []Section{i, j}, []Fault{{Kind: fault, Proc: proc, Start: 100, End: 101, Revokes: true}}
}

func TestCheckRevokedBeforeEntryNeedsLaterEntry(t *testing.T) {
	for _, f := range []struct {
		kind string
		proc int
	}{{"terminate", -1}, {"keydel", -1}, {"restart", -1}, {"pause", 2}} {
		ss, faults := hole1(f.kind, f.proc)
		if r := Check(ss, faults, nil, Spec{}); r.Violations() == 0 {
			t.Errorf("%s: an untold holder beside one revoked before its entry excused: %+v", f.kind, r)
		}
	}
	// The same with tickets of a semaphore of limit 2: three holders at
	// once when j was granted; j does not count for no time.
	a := sec(1, KindTicket, 40, 50, 300, 0)
	b := sec(3, KindTicket, 41, 51, 300, 0)
	j := sec(2, KindTicket, 99, 102, 150, 0)
	j.Lost, j.Told = true, 151
	del := []Fault{{Kind: "keydel", Proc: -1, Start: 100, End: 101, Revokes: true}}
	if r := Check([]Section{a, b, j}, del, nil, Spec{Limit: 2}); r.Violations() == 0 {
		t.Errorf("three holders of a two-ticket semaphore excused by a revocation before entry: %+v", r)
	}
	// Still excused where the other holder entered after the revocation.
	ss, faults := hole1("keydel", -1)
	ss[0].Call, ss[0].Enter = 100, 101
	if r := Check(ss, faults, nil, Spec{}); r.Violations() != 0 || r.Excused != 1 {
		t.Errorf("a holder entering after another's revocation rejected: %+v", r)
	}
}

// Hole 2: the model knows who holds the lock, so j's release cannot free
// i's hold; the history of hole 1 is illegal on its own.
func TestCheckModelKnowsHolders(t *testing.T) {
	ss, faults := hole1("terminate", -1)
	if r := Check(ss, faults, nil, Spec{}); r.Linearizable != "Illegal" {
		t.Errorf("hole 1's history linearizable: %+v", r)
	}
	// A release by one who does not hold, then that one's acquisition
	// while the first still holds: illegal for the mutex, RW and semaphore
	// models.
	for _, c := range []struct {
		kind  string
		limit int
	}{{KindExclusive, 1}, {KindShared, 1}, {KindTicket, 1}} {
		x := KindExclusive
		if c.kind == KindTicket {
			x = KindTicket
		}
		ops := []porcupine.Operation{
			{ClientId: 1, Input: lockInput{true, x, 1}, Call: 0, Return: 1},
			{ClientId: 2, Input: lockInput{false, c.kind, 2}, Call: 2, Return: 3},
			{ClientId: 2, Input: lockInput{true, c.kind, 2}, Call: 4, Return: 5},
			{ClientId: 1, Input: lockInput{false, x, 1}, Call: 6, Return: 7},
		}
		if r := porcupine.CheckOperations(LockModel(c.limit), ops); r {
			t.Errorf("%s: a release by a non-holder freed the holder's lock", c.kind)
		}
		good := []porcupine.Operation{ops[0], ops[3],
			{ClientId: 2, Input: lockInput{true, c.kind, 2}, Call: 8, Return: 9},
			{ClientId: 2, Input: lockInput{false, c.kind, 2}, Call: 10, Return: 11}}
		if !porcupine.CheckOperations(LockModel(c.limit), good) {
			t.Errorf("%s: a good history rejected", c.kind)
		}
	}
	// Readers: each releases its own read hold only.
	rd := []porcupine.Operation{
		{ClientId: 1, Input: lockInput{true, KindShared, 1}, Call: 0, Return: 1},
		{ClientId: 2, Input: lockInput{true, KindShared, 2}, Call: 0, Return: 1},
		{ClientId: 1, Input: lockInput{false, KindShared, 1}, Call: 2, Return: 3},
		{ClientId: 1, Input: lockInput{false, KindShared, 1}, Call: 4, Return: 5}, // twice
		{ClientId: 3, Input: lockInput{true, KindExclusive, 3}, Call: 6, Return: 7},
	}
	if porcupine.CheckOperations(LockModel(1), rd) {
		t.Error("a reader releasing twice freed another reader's hold")
	}
}

// Hole 3: a lock that tells its holder, then hands itself to another, with
// no fault to cut the holder off, breaks exclusion however politely: a loss
// must be explained by a fault reaching the holder.
func TestCheckLossNeedsAFault(t *testing.T) {
	var ss []Section
	for k := range 49 { // 49 thefts
		base := int64(k) * 100
		i := sec(1, KindExclusive, base, base+1, base+20, uint64(2*k+1))
		i.Seq, i.Lost, i.Told = 2*k, true, base+10
		j := sec(2, KindExclusive, base+5, base+11, base+30, uint64(2*k+2))
		j.Seq = 2*k + 1
		ss = append(ss, i, j)
	}
	if r := Check(ss, nil, nil, Spec{}); r.Violations() == 0 {
		t.Errorf("49 thefts without a fault passed: %+v", r)
	}
	// A fault on another worker explains nothing.
	other := []Fault{{Kind: "timeout", Proc: 3, Start: 0, End: 10000}}
	if r := Check(ss, other, nil, Spec{}); r.Violations() == 0 {
		t.Errorf("thefts beside a fault on another worker passed: %+v", r)
	}
	// A black hole on the holder explains its giving up; the next holder
	// entered after it was told.
	hole := []Fault{{Kind: "timeout", Proc: 1, Start: 0, End: 10000}}
	if r := Check(ss, hole, nil, Spec{}); r.Violations() != 0 {
		t.Errorf("losses under a black hole rejected: %+v", r)
	}
	// ... but told after the next holder's acquisition returned is not.
	late := append([]Section(nil), ss[:2]...)
	late[0].Told = 12
	if r := Check(late, hole, nil, Spec{}); r.Violations() == 0 {
		t.Errorf("told after the next holder's acquisition returned passed: %+v", r)
	}
	// A loss told a little after the fault healed is within LossSlack.
	short := []Fault{{Kind: "reset_peer", Proc: 1, Start: 95, End: 98}}
	if r := Check(ss[2:4], short, nil, Spec{LossSlack: 10}); r.Violations() != 0 {
		t.Errorf("a loss told within the slack rejected: %+v", r)
	}
	if r := Check(ss[2:4], short, nil, Spec{}); r.Violations() == 0 {
		t.Errorf("a loss told after the slack passed: %+v", r)
	}
}

// Hole 4: a killed holder held its lock until it was killed (it writes
// before it releases, and records leaving before its Release); its release
// is of unknown outcome only from the kill (or its leave record) to the
// reaping.
func TestCheckKilledHolders(t *testing.T) {
	k := Section{Record: Record{Proc: 3, Seq: 1, Kind: KindExclusive, Call: 0, Enter: 1}}
	deaths := []Death{{Proc: 3, Kill: 10, Reap: 11}}
	c := sec(4, KindExclusive, 0, 5, 12, 0)
	if r := Check([]Section{k, c}, nil, deaths, Spec{}); r.Violations() == 0 {
		t.Errorf("entry beside a killed holder before its kill passed: %+v", r)
	}
	left := k
	left.Leave = 4 // it had called Release at 4
	if r := Check([]Section{left, c}, nil, deaths, Spec{}); r.Violations() != 0 {
		t.Errorf("entry after a killed holder's leave record rejected: %+v", r)
	}
	// A torn read beside a killed writer before the kill is no stale write
	// of a dead holder: the writer held its lock then.
	rd := sec(5, KindShared, 0, 5, 8, 0)
	rd.Torn = true
	if r := Check([]Section{k, rd}, nil, deaths, Spec{}); r.Violations() == 0 || r.TornExcused != 0 {
		t.Errorf("a torn read beside a live killed writer excused: %+v", r)
	}
	// Killed ticket holders count until their kill.
	kt := Section{Record: Record{Proc: 3, Seq: 1, Kind: KindTicket, Call: 0, Enter: 1}}
	a := sec(1, KindTicket, 0, 2, 20, 0)
	b := sec(2, KindTicket, 0, 3, 20, 0)
	if r := Check([]Section{kt, a, b}, nil, deaths, Spec{Limit: 2}); r.Violations() == 0 || r.OverLimit == 0 {
		t.Errorf("three holders of a two-ticket semaphore beside a killed holder passed: %+v", r)
	}
	a.Enter, b.Enter = 10, 11
	if r := Check([]Section{kt, a, b}, nil, deaths, Spec{Limit: 2}); r.Violations() != 0 {
		t.Errorf("tickets taken after a holder's kill rejected: %+v", r)
	}
}

// Hole 5: a section with no exit record whose worker was not killed never
// released, as far as the history says: a violation.
func TestCheckUnfinishedSection(t *testing.T) {
	open := Section{Record: Record{Proc: 3, Seq: 1, Kind: KindExclusive, Call: 0, Enter: 1}}
	after := sec(4, KindExclusive, 50, 100, 110, 0)
	if r := Check([]Section{open}, nil, nil, Spec{}); r.Violations() == 0 {
		t.Errorf("a section without exit passed: %+v", r)
	}
	if r := Check([]Section{open, after}, nil, nil, Spec{}); r.Violations() == 0 {
		t.Errorf("a section without exit, then another holder, passed: %+v", r)
	}
}

// Hole 6: the fenced counter loses nothing by construction, which says
// nothing about exclusion; the shadow counter beside it, enforcing nothing,
// counts what a user without fencing loses.
func TestStoreShadowCountsWhatFencingSaves(t *testing.T) {
	dir := t.TempDir()
	st := NewStore(filepath.Join(dir, "fenced"), filepath.Join(dir, "shadow"))
	// Holder 1 (token 1) reads; its lock is revoked; holder 2 (token 2)
	// reads and writes; holder 1, untold, writes last.
	a, err := st.Read(1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Read(2)
	if err != nil {
		t.Fatal(err)
	}
	if wrote, err := b.Write(); err != nil || !wrote {
		t.Fatalf("holder 2's write: %v %v", wrote, err)
	}
	if wrote, err := a.Write(); err != nil || wrote || !a.Refused {
		t.Fatalf("holder 1's stale write: wrote %v refused %v err %v", wrote, a.Refused, err)
	}
	f, _ := st.Fenced.State()
	s, _ := st.Shadow.State()
	if f.Lost != 0 || f.Refused != 1 || f.Value != 1 {
		t.Errorf("fenced counter: %+v", f)
	}
	if s.Lost != 1 || s.Stale != 1 || s.Value != 1 || s.Writes != 2 {
		t.Errorf("shadow counter: %+v", s)
	}
	// A stale read refused by the fenced counter still goes through to the
	// shadow.
	c, err := st.Read(1)
	if err != nil || !c.Refused {
		t.Fatalf("stale read: %+v %v", c, err)
	}
	if _, err := c.Write(); err != nil {
		t.Fatal(err)
	}
	if s, _ := st.Shadow.State(); s.Writes != 3 || s.Value != 2 {
		t.Errorf("shadow counter after a refused read: %+v", s)
	}
}

// The exposure windows are split by how the holder was told: by Lost()
// inside its section, or only by its Release (the worker then records the
// telling at the Release's return).
func TestCheckWindowsByTelling(t *testing.T) {
	term := []Fault{{Kind: "terminate", Proc: -1, Start: 100, End: 101, Revokes: true}}
	inside := sec(1, KindTicket, 0, 50, 200, 1)
	inside.Lost, inside.Told = true, 103 // Lost() closed inside
	byRelease := sec(2, KindTicket, 0, 60, 130, 2)
	byRelease.Lost, byRelease.Told = true, byRelease.Rel // Release said ErrLockLost
	r := Check([]Section{inside, byRelease}, term, nil, Spec{Limit: 2, LossSlack: 1000})
	if r.Violations() != 0 {
		t.Fatalf("two told ticket holders rejected: %+v", r)
	}
	if len(r.Windows) != 2 || len(r.WindowsLost) != 1 || len(r.WindowsRelease) != 1 ||
		r.WindowsLost[0] != 3 || r.WindowsRelease[0] != byRelease.Rel-100 {
		t.Fatalf("windows %v, by Lost() %v, by Release %v; want 3 and %d", r.Windows, r.WindowsLost, r.WindowsRelease, byRelease.Rel-100)
	}
}
