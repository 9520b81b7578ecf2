package faults

import (
	"fmt"
	"math"
	"sort"
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
}

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
	n := r.Untold + r.TokenViolations + r.OverLimit + r.Torn
	if r.Linearizable != string(porcupine.Ok) {
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
//     effect between entry (the worker may have released and died before
//     recording it) and the moment the process was reaped (a dead process
//     knows of no lock);
//   - a section with no exit whose worker was not killed: unbounded.
func releaseWindow(s Section, faults []Fault, deaths map[int]Death) (window, bool) {
	switch {
	case s.Done && !s.Lost:
		return window{s.Leave, s.Rel}, true
	case s.Done:
		// Its Release began at Leave: a release the server applied but
		// whose answer was lost (then reported as a loss) took effect after
		// Leave, before the holder was told.
		x := min(s.Told, s.Leave)
		for _, f := range faults {
			// A fault that ended after the acquisition began may have
			// revoked a lock the server granted before the holder saw it.
			if f.Revokes && (f.Proc < 0 || f.Proc == s.Proc) && f.Start <= s.Told && f.End >= s.Call {
				x = min(x, max(f.Start, s.Call))
			}
		}
		return window{x, s.Told}, true
	default:
		if d, ok := deaths[s.Proc]; ok {
			// The worker may have released (and died before writing its
			// exit record) any time after it entered.
			return window{s.Enter, d.Reap}, true
		}
		return window{s.Enter, math.MaxInt64 / 2}, false
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
		w, ok := releaseWindow(s, faults, dm)
		if !ok {
			rep.problem("section %d/%d/%d has no exit and its worker was not killed", s.Proc, s.G, s.Seq)
		}
		rel[i] = w
		switch {
		case s.Done:
			rawEnd[i] = s.Leave
		default:
			rep.Killed++
			rawEnd[i] = w.ret
		}
		if s.Lost {
			rep.Told++
		}
		if s.Token == 0 {
			rep.Tokenless++
		}
	}

	// revokedBeforeEntry: the section was told of a loss that a revoking
	// fault may have caused before it even entered (the server granted the
	// lock, the fault took it, another acquired it, and only then did this
	// holder record its entry). Its lock is not known to have been held at
	// any moment of the section.
	revokedBeforeEntry := func(i int) bool {
		return ss[i].Done && ss[i].Lost && rel[i].call <= ss[i].Enter
	}

	// Overlaps of conflicting sections (readers and semaphore tickets do
	// not conflict among themselves; semaphores are counted below). An
	// overlap is excused when one of the two held a lock already revoked
	// and was told: the earlier one, revoked (or killed) before the later
	// one entered; or the later one, revoked before it entered.
	underRevoked := make([]bool, len(ss)) // entered beside a revoked, excused holder
	for i := range ss {
		for j := i + 1; j < len(ss) && ss[j].Enter < rawEnd[i]; j++ {
			if !conflict(ss[i].Kind, ss[j].Kind) {
				continue
			}
			rep.Overlaps++
			if (ss[i].Lost || !ss[i].Done) && ss[j].Enter >= rel[i].call {
				rep.Excused++
				underRevoked[j] = true
				continue
			}
			if revokedBeforeEntry(j) {
				rep.Excused++
				underRevoked[i] = true
				continue
			}
			rep.Untold++
			if ss[i].RelErr != "" {
				rep.UntoldRelErr++
			}
			rep.problem("%s %d/%d/%d entered at %d while %s %d/%d/%d held the lock untold (entered %d, left %d, lost %v told %d, release error %q)",
				ss[j].Kind, ss[j].Proc, ss[j].G, ss[j].Seq, ss[j].Enter,
				ss[i].Kind, ss[i].Proc, ss[i].G, ss[i].Seq, ss[i].Enter, ss[i].Leave, ss[i].Lost, ss[i].Told, ss[i].RelErr)
		}
	}

	// Torn reads: a reader that saw a write under it is a violation, unless
	// its own lock was lost (and it was told), or the writer was a revoked
	// holder it was excused to overlap (the stale write fencing answers).
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
	// the earliest moment a lost lock may have gone for the limit.
	if len(ss) > 0 && ss[0].Kind == KindTicket {
		rep.MaxConcurrent = maxAtOnce(ss, func(i int) int64 { return rawEnd[i] })
		eff := func(i int) int64 {
			if ss[i].Lost || !ss[i].Done {
				// A lock revoked before its entry holds no ticket at all
				// (not a negative one before the entry).
				return max(rel[i].call, ss[i].Enter)
			}
			return rawEnd[i]
		}
		if m, when := maxAtOnceWhen(ss, eff); m > spec.Limit {
			rep.OverLimit = m - spec.Limit
			rep.problem("%d holders at once, limit %d, at %d:", m, spec.Limit, when)
			for i := range ss {
				if ss[i].Enter <= when && eff(i) > when {
					rep.problem("  holder %d/%d/%d token %d: call %d, entered %d, left %d, released %d, lost %v told %d, release error %q",
						ss[i].Proc, ss[i].G, ss[i].Seq, ss[i].Token, ss[i].Call, ss[i].Enter, ss[i].Leave, ss[i].Rel,
						ss[i].Lost, ss[i].Told, ss[i].RelErr)
				}
			}
		}
	} else {
		rep.MaxConcurrent = maxAtOnce(ss, func(i int) int64 { return rawEnd[i] })
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

func maxAtOnce(ss []Section, end func(int) int64) int {
	m, _ := maxAtOnceWhen(ss, end)
	return m
}

// maxAtOnceWhen returns the largest number of sections open at once (each
// from its entry to end) and the first moment it was reached.
func maxAtOnceWhen(ss []Section, end func(int) int64) (int, int64) {
	type ev struct {
		t int64
		d int
	}
	evs := make([]ev, 0, 2*len(ss))
	for i := range ss {
		evs = append(evs, ev{ss[i].Enter, 1}, ev{end(i), -1})
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].t != evs[j].t {
			return evs[i].t < evs[j].t
		}
		return evs[i].d < evs[j].d // leave before enter at the same instant
	})
	n, m := 0, 0
	var when int64
	for _, e := range evs {
		n += e.d
		if n > m {
			m, when = n, e.t
		}
	}
	return m, when
}

// lockInput is a porcupine operation on the lock.
type lockInput struct {
	Acquire bool
	Kind    string
}

// lockState is the model's state: exclusive holders and shared holders.
type lockState struct{ X, S int }

// LockModel returns the porcupine model of a lock: a mutex (every section
// KindExclusive), an RW mutex (KindExclusive and KindShared), or a
// semaphore of limit (KindTicket).
func LockModel(limit int) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return lockState{} },
		Step: func(state, input, _ any) (bool, any) {
			s, in := state.(lockState), input.(lockInput)
			switch {
			case in.Acquire && in.Kind == KindExclusive:
				if s.X == 0 && s.S == 0 {
					return true, lockState{X: 1}
				}
			case in.Acquire && in.Kind == KindShared:
				if s.X == 0 {
					return true, lockState{S: s.S + 1}
				}
			case in.Acquire: // ticket
				if s.S < limit {
					return true, lockState{S: s.S + 1}
				}
			case in.Kind == KindExclusive:
				if s.X == 1 {
					return true, lockState{S: s.S}
				}
			default:
				if s.S > 0 {
					return true, lockState{X: s.X, S: s.S - 1}
				}
			}
			return false, s
		},
		Equal: func(a, b any) bool { return a.(lockState) == b.(lockState) },
		DescribeOperation: func(input, _ any) string {
			in := input.(lockInput)
			if in.Acquire {
				return "acquire " + in.Kind
			}
			return "release " + in.Kind
		},
	}
}

// linearizable checks the acquire and release operations against the lock
// model. The history is cut where no section is open (every section before
// the cut has released before any after it began): the model is empty
// there, so the pieces are checked on their own.
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
		part = append(part,
			porcupine.Operation{ClientId: client, Input: lockInput{true, s.Kind}, Call: s.Call, Return: s.Enter},
			porcupine.Operation{ClientId: client, Input: lockInput{false, s.Kind}, Call: rel[i].call, Return: rel[i].ret},
		)
		reach = max(reach, rel[i].ret)
	}
	return check()
}
