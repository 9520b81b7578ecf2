package main

import (
	"fmt"
	"math"
	"strings"
)

// ---------------------------------------------------------------- issue 16

// measure is one row kind of issue 16's table.
type measure struct {
	title string
	// value returns the figure of lib on backend be.
	value       func(r *results, be, lib string) float64
	format      func(float64) string
	lowerBetter bool
}

var (
	mUncontended = measure{"uncontended acquire+release p50", func(r *results, be, lib string) float64 {
		return r.uncontended(be, lib)
	}, dur, true}
	mKeys = measure{"64 goroutines, distinct names", func(r *results, be, lib string) float64 {
		return r.get("ThroughputKeys", be, lib, "ops/s")
	}, opsPerSec, false}
	mHot = measure{"64 goroutines, one name", func(r *results, be, lib string) float64 {
		return r.get("ThroughputHot", be, lib, "ops/s")
	}, opsPerSec, false}
	mHandoff = measure{"hand-off p50", func(r *results, be, lib string) float64 {
		return r.get("Handoff", be, lib, "p50-ns")
	}, dur, true}
	mAllocs = measure{"allocations per acquire+release", func(r *results, be, lib string) float64 {
		return r.get("Uncontended", be, lib, "allocs/op")
	}, whole, true}
)

func opsPerSec(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 10000:
		return fmt.Sprintf("%.1fk/s", v/1000)
	default:
		return fmt.Sprintf("%.0f/s", v)
	}
}

// goal is a target of issue 16: dlock ÷ reference against a bound.
type goal struct {
	bound float64
	// strict: dlock must be strictly below the reference (allocations).
	strict bool
}

func (g goal) String(m measure) string {
	switch {
	case g.strict:
		return "fewer"
	case g.bound == 0:
		return "—"
	case m.lowerBetter:
		return fmt.Sprintf("≤ %.2g×", g.bound)
	default:
		return fmt.Sprintf("≥ %.2g×", g.bound)
	}
}

// met reports whether a (dlock) against b (the reference) meets g.
func (g goal) met(m measure, a, b float64) bool {
	switch {
	case g.strict:
		return a < b
	case m.lowerBetter:
		return a/b <= g.bound
	default:
		return a/b >= g.bound
	}
}

// floorGoal is issue 16's target for dlock against the hand-written floor
// on backend be for m (for the hand-off on valkey, where the issue sets
// none against the floor, the pg bound, to judge guarantee floors only).
func floorGoal(be string, m measure) goal {
	switch {
	case m.title == mUncontended.title:
		return goal{bound: 1.2}
	case m.title == mKeys.title || m.title == mHot.title:
		return goal{bound: 0.9}
	case m.title == mHandoff.title && be == "fs":
		return goal{bound: 2}
	case m.title == mHandoff.title:
		return goal{bound: 1.2}
	}
	return goal{}
}

// guaranteeFloor names, per backend, the hand-written lock that gives
// dlock's default guarantees (bench/floors*_test.go).
var guaranteeFloor = map[string]string{"pg": "floor-watched", "valkey": "floor-defaults-fair", "fs": "floor-fair-samecalls"}

// explained says why dlock's figure d misses row's target, when the
// guarantee floor of row's backend explains it: dlock meets the floor's
// target against that floor, and that floor itself misses row's target
// against row's reference (ref, its figure). Else "".
func explained(r *results, row row16, d, ref float64) string {
	gf := guaranteeFloor[row.backend]
	g := row.m.value(r, row.backend, gf)
	fg := floorGoal(row.backend, row.m)
	if math.IsNaN(g) || row.goal.strict || fg.bound == 0 || !fg.met(row.m, d, g) || row.goal.met(row.m, g, ref) {
		return ""
	}
	return fmt.Sprintf("explained: %s `%s` (dlock's guarantees by hand), which is %s the reference", ratio(d, g), gf, ratio(g, ref))
}

type row16 struct {
	backend string
	m       measure
	ref     string // the reference library ("floor", a peer, "2rtt")
	goal    goal   // bound 0: no target (context only)
}

// issue16Rows lists issue 16's rows: per backend and measure, dlock against
// the hand-written floor and against every peer, with the issue's targets.
func issue16Rows(r *results) []row16 {
	var rows []row16
	for _, be := range []string{"pg", "valkey", "fs"} {
		var peers []string
		for _, lib := range r.libs[be] {
			if !isFloor(lib) && !strings.HasPrefix(lib, "dlock") {
				peers = append(peers, lib)
			}
		}
		add := func(m measure, ref string, g goal) { rows = append(rows, row16{be, m, ref, g}) }
		var guaranteeFloors []string // floor-…: context rows, what a guarantee costs by hand
		for _, lib := range r.libs[be] {
			if isFloor(lib) && strings.HasPrefix(lib, "floor-") {
				guaranteeFloors = append(guaranteeFloors, lib)
			}
		}
		add(mUncontended, "floor", floorGoal(be, mUncontended))
		add(mUncontended, "2rtt", goal{})
		for _, f := range guaranteeFloors {
			add(mUncontended, f, goal{})
		}
		for _, p := range peers {
			add(mUncontended, p, goal{})
		}
		for _, m := range []measure{mKeys, mHot} {
			add(m, "floor", floorGoal(be, m))
			for _, f := range guaranteeFloors {
				add(m, f, goal{}) // one that does not wait has no hot-name figure: skipped
			}
			for _, p := range peers {
				add(m, p, goal{bound: 1})
			}
		}
		if be == "valkey" {
			add(mHandoff, "floor", goal{}) // the issue's valkey hand-off targets are the peers
		} else {
			add(mHandoff, "floor", floorGoal(be, mHandoff))
		}
		for _, f := range guaranteeFloors {
			add(mHandoff, f, goal{})
		}
		for _, p := range peers {
			g := goal{}
			if be == "valkey" {
				g = goal{bound: 1}
			}
			add(mHandoff, p, g)
		}
		add(mAllocs, "floor", goal{})
		for _, p := range peers {
			add(mAllocs, p, goal{strict: true})
		}
	}
	return rows
}

// refLabel names a reference in issue 16's table.
func refLabel(be, ref string) string {
	switch {
	case ref == "floor":
		return map[string]string{
			"pg":     "hand-written: pooled conn + prepared `pg_advisory_lock` / `pg_advisory_unlock`",
			"valkey": "hand-written: `SET NX PX` + `EVALSHA` compare-and-delete",
			"fs":     "hand-written: open + `flock` + unlock + close",
		}[be]
	case ref == "floor-fenced":
		return "hand-written with a fencing token: one script (`SET NX PX` + `INCR`) + compare-and-delete"
	case ref == "floor-samecalls":
		return "hand-written, making dlock's 11 system calls (queue check, path checks, counter and record, record mark)"
	case ref == "floor-defaults":
		return "hand-written with the server work of dlock's defaults: queue check, holder record with the server's time, clock-floored fencing token"
	case ref == "floor-defaults-fair":
		return "floor-defaults waiting as dlock does: arrival order in a process (a queue per name) and across processes (the server's queue), cancellable"
	case ref == "floor-watched":
		return "hand-written with dlock's pg guarantees: try first, else lock_timeout and pg_advisory_lock in one statement; loss watcher (a peek at the socket) after 1 ms"
	case ref == "floor-fair":
		return "hand-written, waiting as dlock does (cancellable: inotify; arrival order in a process), the floor's 4 calls"
	case ref == "floor-fair-samecalls":
		return "hand-written, waiting as dlock does, with dlock's 11 system calls and its queue's ticket"
	case ref == "2rtt":
		return map[string]string{"pg": "two round trips (`SELECT 1` ×2)", "valkey": "two round trips (`PING` ×2)"}[be]
	}
	return ref
}

func writeIssue16(w func(string, ...any), r *results) {
	hasBefore := false
	for _, be := range backends {
		for _, lib := range r.libs[be] {
			if lib == before {
				hasBefore = true
			}
		}
	}
	w("## Issue 16: dlock against the hand-written floor and the peers\n\n")
	w("Each row: dlock's figure, the reference's, their ratio (dlock ÷ reference), the issue's target for that ratio, and whether this run meets it. ")
	w("Rows without a target are context (the two-round-trip figure, the guarantee floors, peers where the issue sets no target). ")
	w("Throughput targets are ≥ (dlock does more), the others ≤. ")
	w("A miss is marked *explained* when the hand-written lock that gives dlock's default guarantees (`floor-watched` on pg, `floor-defaults-fair` on valkey, `floor-fair-samecalls` on files) misses the same target itself, and dlock meets, against that lock, the target the issue sets against the plain floor (≤ 1.2× uncontended, ≥ 0.9× throughput, ≤ 1.2× hand-off, ≤ 2× on files): the guarantees cost the difference, not dlock's code.\n\n")
	if hasBefore {
		w("| backend | measure | dlock | dlock before | reference | reference's | ratio | target | met |\n")
		w("| --- | --- | ---: | ---: | --- | ---: | ---: | :---: | :---: |\n")
	} else {
		w("| backend | measure | dlock | reference | reference's | ratio | target | met |\n")
		w("| --- | --- | ---: | --- | ---: | ---: | :---: | :---: |\n")
	}
	for _, row := range issue16Rows(r) {
		d := row.m.value(r, row.backend, "dlock")
		ref := row.m.value(r, row.backend, row.ref)
		if math.IsNaN(ref) && row.goal.bound == 0 && !row.goal.strict {
			continue // context that this run did not measure
		}
		mark := "—"
		switch {
		case row.goal.bound == 0 && !row.goal.strict:
		case math.IsNaN(d) || math.IsNaN(ref):
			mark = "not measured"
		case row.goal.met(row.m, d, ref):
			mark = "met"
		default:
			mark = "**not met**"
			if why := explained(r, row, d, ref); why != "" {
				mark += "; " + why
			}
		}
		rat := ratio(d, ref)
		if row.m.title == mAllocs.title {
			rat = fmt.Sprintf("%s vs %s", whole(d), whole(ref))
		}
		if hasBefore {
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.backend, row.m.title, row.m.format(d),
				row.m.format(row.m.value(r, row.backend, before)), refLabel(row.backend, row.ref), row.m.format(ref),
				rat, row.goal.String(row.m), mark)
		} else {
			w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", row.backend, row.m.title, row.m.format(d),
				refLabel(row.backend, row.ref), row.m.format(ref), rat, row.goal.String(row.m), mark)
		}
	}
	w("\n")
}

// ---------------------------------------------------------------- issue 14

// fairBackends are the backends of BenchmarkFairness, in table order.
var fairBackends = []string{"fs", "pg", "valkey", "valkey-cluster", "redlock"}

// fairTargeted are the backends on which issue 14 sets targets for dlock
// (RedLock: best effort).
var fairTargeted = map[string]bool{"fs": true, "pg": true, "valkey": true, "valkey-cluster": true}

// Settings of BenchmarkFairness (bench/fair_test.go).
const (
	fairClients = 8
	fairHoldNS  = 1e6
)

func writeFairness(w func(string, ...any), r *results) {
	measured := false
	for _, be := range fairBackends {
		for _, lib := range r.libs[be] {
			if r.count("Fairness", be, lib, "jain") > 0 {
				measured = true
			}
		}
	}
	if !measured {
		return
	}
	w("## Issue 14: fairness under saturation\n\n")
	w("%d clients, each in its own process (the benchmark binary re-executed), take one lock over and over for the run's saturation time, ", fairClients)
	w("holding it 1 ms (`time.Sleep`) each time. Per row: the fewest and most acquisitions of a client, Jain's fairness index ")
	w("(Σx)²/(n·Σx²) of the acquisitions per client (1 = equal shares), the median, p99 and longest wait of any acquisition, ")
	w("the acquisitions per second, and the hand-off under saturation (mean time per acquisition when nobody held the lock, ")
	w("release included). Targets (issue 14, for dlock on fs, pg, valkey and cluster; RedLock best effort; peers and floors shown for comparison, marked the same way): ")
	w("Jain ≥ 0.95, and longest wait ≤ 3 × (clients × hold + hand-off), the hold and hand-off being this row's own ")
	w("(the hold as measured: a 1 ms sleep lasts longer on a loaded machine). ")
	w("Every figure is the median over the rounds (%d for dlock on fs).\n\n", r.count("Fairness", "fs", "dlock", "jain"))
	w("| backend | library | acquisitions per client | Jain | wait p50 | wait p99 | longest wait | acquisitions/s | hold | hand-off | longest-wait bound | Jain ≥ 0.95 | longest wait ≤ bound |\n")
	w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | :---: |\n")
	for _, be := range fairBackends {
		for _, lib := range r.libs[be] {
			if r.count("Fairness", be, lib, "jain") == 0 {
				continue
			}
			g := func(unit string) float64 { return r.get("Fairness", be, lib, unit) }
			jain, maxWait, gap := g("jain"), g("max-wait-ns"), g("gap-ns")
			hold := g("hold-ns")
			if math.IsNaN(hold) {
				hold = fairHoldNS
			}
			bound := 3 * (fairClients*hold + gap)
			mark := func(ok bool) string {
				if ok {
					return "met"
				}
				return "**not met**"
			}
			name := libLabel(lib)
			if lib == "dlock" {
				name = "**dlock**"
			}
			longest := dur(maxWait)
			if g("stuck") > 0 {
				longest = "≥ " + longest + fmt.Sprintf(" (%s stuck)", num(g("stuck")))
			}
			note := ""
			if lib == "dlock" && !fairTargeted[be] {
				note = " (best effort)"
			}
			w("| %s | %s | %s–%s | %.3f | %s | %s | %s | %s | %s | %s | %s | %s%s | %s%s |\n", be, name,
				whole(g("min-acq")), whole(g("max-acq")), jain, dur(g("p50-wait-ns")), dur(g("p99-wait-ns")), longest,
				num(g("ops/s")), dur(hold), dur(gap), dur(bound), mark(jain >= 0.95), note, mark(maxWait <= bound), note)
		}
	}
	w("\n\"stuck\": clients (median over rounds) whose last wait was never woken, though every other client had stopped; ")
	w("it was abandoned 3 s after the end and counts as at least that long.\n\n")
}

// ---------------------------------------------------------------- issue 17

// compositeSizes are BenchmarkComposite's set sizes.
var compositeSizes = []int{2, 8, 32}

// writeComposite writes issue 17's table: a set of N free names taken
// with the library's composite lock against N single acquisitions in a
// row, per backend.
func writeComposite(w func(string, ...any), r *results) {
	if r.count("Composite", "valkey", "dlock-all2", "ns/op") == 0 {
		return
	}
	w("## Issue 17: several names at once\n\n")
	w("Taking and releasing a set of N free names: with the library's composite lock (dlock's `AcquireAll`, redislock's `ObtainMulti`) ")
	w("against N single acquisitions one after another (sorted), by the same library on one client. p50 over the rounds' medians ")
	w("(%d rounds); ratio = composite / one after another (below 1 is faster).\n\n", r.count("Composite", "valkey", "dlock-all2", "p50-ns"))
	w("| backend | library | N | composite p50 | one after another p50 | ratio | allocations (composite) |\n")
	w("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, be := range backends {
		for _, lib := range []string{"dlock", "redislock"} {
			for _, n := range compositeSizes {
				all := r.get("Composite", be, fmt.Sprintf("%s-all%d", lib, n), "p50-ns")
				seq := r.get("Composite", be, fmt.Sprintf("%s-seq%d", lib, n), "p50-ns")
				if math.IsNaN(all) || math.IsNaN(seq) {
					continue
				}
				w("| %s | %s | %d | %s | %s | %.2f× | %s |\n", be, lib, n, dur(all), dur(seq), all/seq,
					whole(r.get("Composite", be, fmt.Sprintf("%s-all%d", lib, n), "allocs/op")))
			}
		}
	}
	w("\n")
}
