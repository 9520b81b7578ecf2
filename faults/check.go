package faults

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Fault is a fault the scenario injected, as the checker needs to know it.
type Fault struct {
	Kind  string `json:"kind"`
	Proc  int    `json:"proc"`  // the worker it targeted, or -1 for all
	Start int64  `json:"start"` // Now when the injection began
	End   int64  `json:"end"`   // Now when it was healed (or, for an instant fault, done)
	// Revokes says the fault can take a lock away from its holder before
	// the holder can know (the server frees it at once, or the holder is
	// frozen past its lease): a key deleted, a session killed, a server
	// restarted, a lock file removed, a holder paused. A holder of a lost
	// lock may then overlap the next holder until it is told; fencing
	// tokens are the answer. For every other fault the holder must be told
	// before anyone else can take the lock.
	Revokes bool `json:"revokes"`
	// Frees is, for a revoking fault, the latest moment the server can have
	// freed a lock the fault revoked (0: Start). A paused holder's lease
	// expires at the latest a lease after the pause began. It is where the
	// exposure window of a revocation starts.
	Frees int64 `json:"frees,omitempty"`
}

// frees returns the moment from which f's revocations are measured.
func (f Fault) frees() int64 {
	if f.Frees != 0 {
		return f.Frees
	}
	return f.Start
}

// reaches says f can act on a holder in worker proc.
func (f Fault) reaches(proc int) bool { return f.Proc < 0 || f.Proc == proc }

// Death records a worker killed with SIGKILL.
type Death struct {
	Proc int   `json:"proc"`
	Kill int64 `json:"kill"` // SIGKILL sent
	Reap int64 `json:"reap"` // wait(2) returned: the process is gone
}

// Spec says what is checked: the primitive's model.
type Spec struct {
	// Limit is the semaphore's limit (1 for a mutex; ignored for an RW
	// mutex, whose readers are unlimited).
	Limit int
	// CheckTimeout bounds porcupine's search (default 2 minutes).
	CheckTimeout time.Duration
	// LossSlack is how long after a fault healed a holder may still be told
	// of a loss the fault caused (the backend's loss-detection interval,
	// with room for a loaded machine). A holder told of a loss that no
	// fault reaching it, slackened by this, can explain was robbed of its
	// lock by the lock itself: a violation.
	LossSlack time.Duration
}

// Report is what Check found.
type Report struct {
	Sections int `json:"sections"` // critical sections entered
	Killed   int `json:"killed"`   // sections whose worker was killed inside them
	Told     int `json:"told"`     // sections whose holder was told the lock was lost

	// Linearizability of the lock operations (acquire: from call to entry;
	// release: see Check) against the lock model: "Ok" is the only pass.
	Linearizable string `json:"linearizable"`

	Overlaps int `json:"overlaps"` // pairs of conflicting sections overlapping in time
	// Excused overlaps: the earlier holder's lock was revoked by a fault
	// (or its worker was killed) before the later one entered, and it was
	// told (or dead). They are the overlaps fencing must catch.
	Excused int `json:"excused"`
	// Untold overlaps are violations: the later holder entered while the
	// earlier one held the lock and had not been told of any loss.
	Untold int `json:"untold"`
	// UntoldRelErr counts the untold overlaps whose earlier holder's
	// Release failed with an error that did not say the lock was lost.
	UntoldRelErr int `json:"untoldRelErr"`

	// Unexplained counts holders told of a loss that no fault reaching
	// them can explain (violations: the lock was taken from a holder that
	// nothing had cut off, however politely it was told).
	Unexplained int `json:"unexplained"`
	// Unfinished counts sections with no exit record whose worker was not
	// killed (violations: the history cannot say when they released).
	Unfinished int `json:"unfinished"`
	// Windows are the exposure windows of the revocations, in ns: for each
	// holder told of a loss a revoking fault caused, the time from the
	// moment the server freed its lock (at the latest) to the moment it
	// was told. Another holder may be inside during that window.
	Windows []int64 `json:"windows,omitempty"`
	// WindowsLost and WindowsRelease split Windows by how the holder was
	// told: by Lost() closing while it was inside its section (its lock
	// connection, if any, idle), or only by its Release (the loss met
	// the release on its way, or was not seen before it).
	WindowsLost    []int64 `json:"windowsLost,omitempty"`
	WindowsRelease []int64 `json:"windowsRelease,omitempty"`

	TokenViolations int      `json:"tokenViolations"` // pairs whose tokens disagree with the order of entry
	Tokenless       int      `json:"tokenless"`       // sections without a fencing token
	MaxConcurrent   int      `json:"maxConcurrent"`   // largest number of holders at once (raw intervals)
	OverLimit       int      `json:"overLimit"`       // moments with more holders than the limit, excused ones left out
	Torn            int      `json:"torn"`            // readers that saw a write under them
	TornExcused     int      `json:"tornExcused"`     // readers that saw a write under them after their lock was revoked and told
	Problems        []string `json:"problems,omitempty"`
}

// Violations returns the number of safety violations in r.
func (r Report) Violations() int {
	n := r.Untold + r.TokenViolations + r.OverLimit + r.Torn + r.Unexplained + r.Unfinished
	if r.Linearizable != "" && r.Linearizable != string(porcupine.Ok) { // "": not checked (the CLI rows)
		n++
	}
	return n
}

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) < 20 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

type window struct{ call, ret int64 }

// forever is a time after every history.
const forever = math.MaxInt64 / 2

// releaseWindow returns the interval in which the section's lock was given
// up:
//
//   - a section that ended normally: from Release's call to its return;
//   - a section told its lock was lost: it was lost at the latest when the
//     holder was told; at the earliest at the start of a revoking fault
//     that could reach the holder (not before the acquisition began), or
//     when its Release began; otherwise — a lease that ran out, a
//     connection that broke — not before the holder was told, which is the
//     guarantee of Lost;
//   - a section whose worker was killed inside it (no exit record): its
//     release is an operation of unknown outcome, as in Jepsen; it took
//     effect between the moment the worker called Release (its "leave"
//     record, written before the call) or, without that record, the kill
//     (a live worker that has not called Release holds its lock: it writes
//     before it releases), and the moment the process was reaped (a dead
//     process knows of no lock);
//   - a section with no exit whose worker was not killed: never (a
//     violation of its own).
func releaseWindow(s Section, faults []Fault, deaths map[int]Death) window {
	switch {
	case s.Done && !s.Lost:
		return window{s.Leave, s.Rel}
	case s.Done:
		// Its Release began at Leave: a release the server applied but
		// whose answer was lost (then reported as a loss) took effect after
		// Leave, before the holder was told.
		x := min(s.Told, s.Leave)
		for _, f := range faults {
			// A fault that ended after the acquisition began may have
			// revoked a lock the server granted before the holder saw it.
			if f.Revokes && f.reaches(s.Proc) && f.Start <= s.Told && f.End >= s.Call {
				x = min(x, max(f.Start, s.Call))
			}
		}
		return window{x, s.Told}
	default:
		if d, ok := deaths[s.Proc]; ok {
			from := d.Kill
			if s.Leave != 0 {
				from = min(from, s.Leave)
			}
			return window{max(from, s.Enter), max(d.Reap, s.Enter)}
		}
		return window{forever, forever}
	}
}

func conflict(a, b string) bool { return a == KindExclusive || b == KindExclusive }

// Check checks a history of sections of one lock name.
func Check(sections []Section, faults []Fault, deaths []Death, spec Spec) Report {
	if spec.Limit < 1 {
		spec.Limit = 1
	}
	if spec.CheckTimeout <= 0 {
		spec.CheckTimeout = 2 * time.Minute
	}
	dm := map[int]Death{}
	for _, d := range deaths {
		dm[d.Proc] = d
	}
	ss := append([]Section(nil), sections...)
	sort.Slice(ss, func(i, j int) bool { return ss[i].Enter < ss[j].Enter })
	rep := Report{Sections: len(ss)}
	rel := make([]window, len(ss))
	rawEnd := make([]int64, len(ss))
	for i, s := range ss {
		rel[i] = releaseWindow(s, faults, dm)
		switch {
		case s.Done:
			rawEnd[i] = s.Leave
		default:
			rawEnd[i] = rel[i].ret
			if _, killed := dm[s.Proc]; killed {
				rep.Killed++
			} else {
				rep.Unfinished++
				rep.problem("section %d/%d/%d (entered %d) has no exit and its worker was not killed", s.Proc, s.G, s.Seq, s.Enter)
			}
		}
		if s.Lost {
			rep.Told++
			rep.explainLoss(s, faults, spec)
		}
		if s.Token == 0 {
			rep.Tokenless++
		}
	}

	// revokedBeforeEntry: the section was told of a loss that a revoking
	// fault may have caused before it even entered (the server granted the
	// lock, the fault took it, another acquired it, and only then did this
	// holder record its entry).
	revokedBeforeEntry := func(i int) bool {
		return ss[i].Done && ss[i].Lost && rel[i].call <= ss[i].Enter
	}

	// Overlaps of conflicting sections (readers and semaphore tickets do
	// not conflict among themselves; semaphores are counted below). A
	// section surely holds its lock from its entry to the earliest moment
	// it may have given it up (rel.call: its Release, or for a holder told
	// of a loss the revoking fault or the telling, or for a killed holder
	// its Release or its kill). Two conflicting sections may overlap only
	// where one of them no longer surely held: the later one entered after
	// the earlier one's lock was gone (revoked and told, or dead), or the
	// later one's lock was revoked (and it told) before the earlier one
	// even entered. Anything else is two holders at once, untold.
	underRevoked := make([]bool, len(ss)) // entered beside a holder whose lock was gone
	for i := range ss {
		for j := i + 1; j < len(ss) && ss[j].Enter < rawEnd[i]; j++ {
			if !conflict(ss[i].Kind, ss[j].Kind) {
				continue
			}
			rep.Overlaps++
			switch {
			case ss[j].Enter >= rel[i].call:
				rep.Excused++
				underRevoked[j] = true
			case ss[i].Enter >= rel[j].call:
				rep.Excused++
				underRevoked[i] = true
			default:
				rep.Untold++
				if ss[i].RelErr != "" {
					rep.UntoldRelErr++
				}
				rep.problem("%s %d/%d/%d (call %d, entered %d, left %d, lost %v told %d) entered while %s %d/%d/%d held the lock untold (call %d, entered %d, left %d, lost %v told %d, release error %q)",
					ss[j].Kind, ss[j].Proc, ss[j].G, ss[j].Seq, ss[j].Call, ss[j].Enter, ss[j].Leave, ss[j].Lost, ss[j].Told,
					ss[i].Kind, ss[i].Proc, ss[i].G, ss[i].Seq, ss[i].Call, ss[i].Enter, ss[i].Leave, ss[i].Lost, ss[i].Told, ss[i].RelErr)
			}
		}
	}

	// Torn reads: a reader that saw a write under it is a violation, unless
	// its own lock was lost (and it was told), or it entered beside a
	// writer whose lock was gone by then (revoked and told: the stale write
	// fencing answers; or dead).
	for i, s := range ss {
		switch {
		case !s.Torn:
		case s.Lost || underRevoked[i]:
			rep.TornExcused++
		default:
			rep.Torn++
			rep.problem("reader %d/%d/%d saw the value change under it", s.Proc, s.G, s.Seq)
		}
	}

	// Holders at once: raw intervals for the record, and intervals cut at
	// the earliest moment a lock may have gone for the limit.
	enter := func(i int) int64 { return ss[i].Enter }
	rep.MaxConcurrent = maxAtOnce(len(ss), enter, func(i int) int64 { return rawEnd[i] })
	if len(ss) > 0 && ss[0].Kind == KindTicket {
		// A ticket surely holds from its entry to the earliest moment it may
		// have been given up. A ticket revoked before its entry surely held
		// only at its grant, some moment between its call and its entry (and
		// its telling): it is over the limit if every moment there had
		// limit sure holders already.
		end := func(i int) int64 {
			if revokedBeforeEntry(i) {
				return ss[i].Enter // no time
			}
			if !ss[i].Done || ss[i].Lost {
				return max(rel[i].call, ss[i].Enter)
			}
			return rawEnd[i]
		}
		if m, when := maxAtOnceWhen(len(ss), enter, end); m > spec.Limit {
			rep.OverLimit = m - spec.Limit
			rep.problem("%d holders at once, limit %d, at %d:", m, spec.Limit, when)
			for i := range ss {
				if ss[i].Enter <= when && end(i) > when {
					rep.holder(ss[i])
				}
			}
		}
		for j := range ss {
			if !revokedBeforeEntry(j) {
				continue
			}
			from, to := ss[j].Call, min(ss[j].Enter, ss[j].Told)
			if least := minAtOnce(len(ss), enter, end, from, to); least >= spec.Limit {
				rep.OverLimit++
				rep.problem("ticket %d/%d/%d, revoked before its entry, was granted between %d and %d, when %d others held at every moment:",
					ss[j].Proc, ss[j].G, ss[j].Seq, from, to, least)
				rep.holder(ss[j])
			}
		}
	}

	// Fencing tokens: strictly increasing in the order the acquisitions took
	// effect. Conflicting sections that held their locks from the grant to
	// their entry took effect in their order of entry (had the later-entered
	// one been granted first, both would have held at the earlier entry);
	// a section revoked before its entry may have been granted before one
	// that entered earlier. Other pairs are ordered only when one's
	// acquisition returned before the other's began. Tokens are never
	// shared.
	seen := map[uint64]int{}
	for i := range ss {
		if ss[i].Token == 0 {
			continue
		}
		if j, dup := seen[ss[i].Token]; dup {
			rep.TokenViolations++
			rep.problem("token %d given to %d/%d/%d and %d/%d/%d", ss[i].Token,
				ss[j].Proc, ss[j].G, ss[j].Seq, ss[i].Proc, ss[i].G, ss[i].Seq)
		}
		seen[ss[i].Token] = i
		for j := i + 1; j < len(ss); j++ {
			if ss[j].Token == 0 || ss[j].Token == ss[i].Token {
				continue
			}
			ordered := ss[i].Enter < ss[j].Call ||
				conflict(ss[i].Kind, ss[j].Kind) && !revokedBeforeEntry(i) && !revokedBeforeEntry(j)
			if ordered && ss[j].Token < ss[i].Token {
				rep.TokenViolations++
				rep.problem("token %d of %d/%d/%d (entered %d) after token %d of %d/%d/%d (entered %d)",
					ss[j].Token, ss[j].Proc, ss[j].G, ss[j].Seq, ss[j].Enter,
					ss[i].Token, ss[i].Proc, ss[i].G, ss[i].Seq, ss[i].Enter)
			}
		}
	}

	rep.Linearizable = string(linearizable(ss, rel, spec))
	if rep.Linearizable != string(porcupine.Ok) {
		rep.problem("porcupine: %s", rep.Linearizable)
	}
	return rep
}

// explainLoss checks that a holder told of a loss was reached by a fault
// that can explain it (any fault: a black hole or a broken connection may
// rightly make a holder give up a lock the server still holds), and
// records the exposure window when the fault revokes. The promise of Lost
// is that the holder is told before anyone else can acquire; a lock that
// tells its holder and then hands itself to another, with nothing cutting
// the holder off, keeps the letter of it and breaks exclusion all the same.
func (r *Report) explainLoss(s Section, faults []Fault, spec Spec) {
	explained := false
	var rev *Fault
	for k := range faults {
		f := &faults[k]
		if !f.reaches(s.Proc) || f.Start > s.Told || f.End+int64(spec.LossSlack) < s.Call {
			continue
		}
		explained = true
		if f.Revokes && f.End >= s.Call && (rev == nil || f.Start > rev.Start) {
			rev = f
		}
	}
	if !explained {
		r.Unexplained++
		r.problem("%s %d/%d/%d (call %d, entered %d, left %d) was told at %d of a loss no fault can explain (release error %q)",
			s.Kind, s.Proc, s.G, s.Seq, s.Call, s.Enter, s.Leave, s.Told, s.RelErr)
	}
	if rev != nil {
		w := max(0, s.Told-max(rev.frees(), s.Call))
		r.Windows = append(r.Windows, w)
		if s.Done && s.Told == s.Rel { // the worker records Release's ErrLockLost so
			r.WindowsRelease = append(r.WindowsRelease, w)
		} else {
			r.WindowsLost = append(r.WindowsLost, w)
		}
	}
}

func (r *Report) holder(s Section) {
	r.problem("  holder %d/%d/%d token %d: call %d, entered %d, left %d, released %d, lost %v told %d, done %v, release error %q",
		s.Proc, s.G, s.Seq, s.Token, s.Call, s.Enter, s.Leave, s.Rel, s.Lost, s.Told, s.Done, s.RelErr)
}

// minAtOnce returns the least number of the n intervals [start(i), end(i))
// open at any moment of [from, to].
func minAtOnce(n int, start, end func(int) int64, from, to int64) int {
	type ev struct {
		t int64
		d int
	}
	var evs []ev
	c := 0
	for i := range n {
		s, e := start(i), end(i)
		if s >= e || e <= from || s > to {
			continue
		}
		if s <= from {
			c++ // open at from
		} else {
			evs = append(evs, ev{s, 1})
		}
		if e <= to {
			evs = append(evs, ev{e, -1})
		}
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].t != evs[j].t {
			return evs[i].t < evs[j].t
		}
		return evs[i].d < evs[j].d // leave before enter: the gap counts
	})
	least := c
	for _, e := range evs {
		c += e.d
		least = min(least, c)
	}
	return least
}

func maxAtOnce(n int, start, end func(int) int64) int {
	m, _ := maxAtOnceWhen(n, start, end)
	return m
}

// maxAtOnceWhen returns the largest number of the n intervals [start(i),
// end(i)) open at once and the first moment it was reached.
func maxAtOnceWhen(n int, start, end func(int) int64) (int, int64) {
	type ev struct {
		t int64
		d int
	}
	evs := make([]ev, 0, 2*n)
	for i := range n {
		evs = append(evs, ev{start(i), 1}, ev{end(i), -1})
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].t != evs[j].t {
			return evs[i].t < evs[j].t
		}
		return evs[i].d < evs[j].d // leave before enter at the same instant
	})
	c, m := 0, 0
	var when int64
	for _, e := range evs {
		c += e.d
		if c > m {
			m, when = c, e.t
		}
	}
	return m, when
}

// lockInput is a porcupine operation on the lock by one holder (a critical
// section, numbered from 1).
type lockInput struct {
	Acquire bool
	Kind    string
	Holder  int
}

// lockState is the model's state: who holds the lock. X is the exclusive
// holder (0: none); S the shared holders (readers or ticket holders), as a
// sorted set encoded in a string so that states compare with ==.
type lockState struct {
	X int
	S string
}

func (s lockState) holders() []int {
	if s.S == "" {
		return nil
	}
	var out []int
	for _, f := range strings.Split(s.S, ",") {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

func encodeHolders(hs []int) string {
	sort.Ints(hs)
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = strconv.Itoa(h)
	}
	return strings.Join(parts, ",")
}

// LockModel returns the porcupine model of a lock: a mutex (every section
// KindExclusive), an RW mutex (KindExclusive and KindShared), or a
// semaphore of limit (KindTicket). The model knows its holders: a holder
// can release only a lock it holds, so only after its own acquisition, and
// never frees another's.
func LockModel(limit int) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return lockState{} },
		Step: func(state, input, _ any) (bool, any) {
			s, in := state.(lockState), input.(lockInput)
			hs := s.holders()
			switch {
			case in.Acquire && in.Kind == KindExclusive:
				if s.X == 0 && len(hs) == 0 {
					return true, lockState{X: in.Holder}
				}
			case in.Acquire && in.Kind == KindShared:
				if s.X == 0 && !slices.Contains(hs, in.Holder) {
					return true, lockState{S: encodeHolders(append(hs, in.Holder))}
				}
			case in.Acquire: // ticket
				if len(hs) < limit && !slices.Contains(hs, in.Holder) {
					return true, lockState{S: encodeHolders(append(hs, in.Holder))}
				}
			case in.Kind == KindExclusive:
				if s.X == in.Holder {
					return true, lockState{S: s.S}
				}
			default:
				if k := slices.Index(hs, in.Holder); k >= 0 {
					return true, lockState{X: s.X, S: encodeHolders(slices.Delete(hs, k, k+1))}
				}
			}
			return false, s
		},
		Equal: func(a, b any) bool { return a.(lockState) == b.(lockState) },
		DescribeOperation: func(input, _ any) string {
			in := input.(lockInput)
			if in.Acquire {
				return fmt.Sprintf("%d acquires %s", in.Holder, in.Kind)
			}
			return fmt.Sprintf("%d releases %s", in.Holder, in.Kind)
		},
	}
}

// linearizable checks the acquire and release operations against the lock
// model. The history is cut where no section is open (every section before
// the cut has released before any after it began): the model is empty
// there, so the pieces are checked on their own. A section that never
// released (no exit, worker not killed: a violation of its own) has no
// release operation and is forgotten at the next cut.
func linearizable(ss []Section, rel []window, spec Spec) porcupine.CheckResult {
	if len(ss) == 0 {
		return porcupine.Ok
	}
	idx := make([]int, len(ss))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return ss[idx[a]].Call < ss[idx[b]].Call })
	model := LockModel(spec.Limit)
	deadline := time.Now().Add(spec.CheckTimeout)
	var part []porcupine.Operation
	var reach int64 = math.MinInt64
	check := func() porcupine.CheckResult {
		if len(part) == 0 {
			return porcupine.Ok
		}
		left := time.Until(deadline)
		if left <= 0 {
			return porcupine.Unknown
		}
		r := porcupine.CheckOperationsTimeout(model, part, left)
		part = part[:0]
		return r
	}
	for _, i := range idx {
		s := ss[i]
		if s.Call > reach && len(part) > 0 {
			if r := check(); r != porcupine.Ok {
				return r
			}
		}
		client := s.Proc*1000 + s.G
		part = append(part, porcupine.Operation{ClientId: client, Input: lockInput{true, s.Kind, i + 1}, Call: s.Call, Return: s.Enter})
		reach = max(reach, s.Enter)
		if rel[i].call < forever {
			part = append(part, porcupine.Operation{ClientId: client, Input: lockInput{false, s.Kind, i + 1}, Call: rel[i].call, Return: rel[i].ret})
			reach = max(reach, rel[i].ret)
		}
	}
	return check()
}
