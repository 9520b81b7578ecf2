// Command report turns the output of dlock's benchmarks (go test -bench in
// bench/, one or more runs concatenated) into BENCHMARKS.md — the machine,
// the command, a table of ratios, the targets met or missed — and an SVG
// chart of hand-off latency and throughput per library.
//
//	go run ./cmd/report -in raw.txt -out ../BENCHMARKS.md -svg ../docs/bench.svg
//
// Every figure is the median of the runs in the input.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	var (
		in        = flag.String("in", "", "benchmark output (go test -bench), several runs concatenated")
		out       = flag.String("out", "BENCHMARKS.md", "report to write")
		svgPath   = flag.String("svg", "bench.svg", "chart to write")
		svgLink   = flag.String("svg-link", "", "path of the chart as BENCHMARKS.md links it (default: svg relative to out)")
		stat      = flag.String("benchstat", "", "benchstat's summary of the same input, appended verbatim (optional)")
		machine   = flag.String("machine", "", "description of the machine (markdown)")
		command   = flag.String("command", "bash bench/run", "the command that produced the input")
		date      = flag.String("date", "", "date of the run")
		settings  = flag.String("settings", "", "run settings line (rounds, benchtime, ...)")
		scaleNote = flag.String("scale-log", "", "file with log lines of the scale benchmark (optional)")
		failures  = flag.String("failures", "", "file listing the benchmarks that failed in the run (optional)")
		notes     = flag.String("notes", "", "markdown with the analysis of the run, appended after the targets (optional)")
	)
	flag.Parse()
	if *in == "" {
		fail(fmt.Errorf("-in is required"))
	}
	f, err := os.Open(*in)
	if err != nil {
		fail(err)
	}
	res, err := parse(f)
	f.Close()
	if err != nil {
		fail(err)
	}
	link := *svgLink
	if link == "" {
		link, err = filepath.Rel(filepath.Dir(*out), *svgPath)
		if err != nil {
			fail(err)
		}
	}
	if err := os.WriteFile(*svgPath, []byte(chart(res)), 0o644); err != nil {
		fail(err)
	}
	var statText, scaleLog string
	if *stat != "" {
		b, err := os.ReadFile(*stat)
		if err != nil {
			fail(err)
		}
		statText = string(b)
	}
	if *scaleNote != "" {
		b, err := os.ReadFile(*scaleNote)
		if err != nil {
			fail(err)
		}
		scaleLog = string(b)
	}
	failText, notesText := readOptional(*failures), readOptional(*notes)
	md := report(res, reportInfo{
		failures: failText, notes: notesText,
		machine: *machine, command: *command, date: *date, settings: *settings,
		chart: filepath.ToSlash(link), benchstat: statText, scaleLog: scaleLog,
	})
	if err := os.WriteFile(*out, []byte(md), 0o644); err != nil {
		fail(err)
	}
}

// readOptional returns the contents of path, or "" when path is "" or
// does not exist.
func readOptional(path string) string {
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		fail(err)
	}
	return string(b)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "report:", err)
	os.Exit(1)
}

// ---------------------------------------------------------------- parsing

// key names one measured quantity: BenchmarkGroup/backend/lib and a unit.
type key struct{ group, backend, lib, unit string }

// results holds every sample of every quantity.
type results struct {
	samples map[key][]float64
	libs    map[string][]string // backend -> libraries in order of appearance
}

var lineRE = regexp.MustCompile(`^Benchmark(\w+)/([\w.-]+)/([\w.-]+?)(?:-\d+)?\s+\d+\s+(.*)$`)

func parse(r io.Reader) (*results, error) {
	res := &results{samples: map[key][]float64{}, libs: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		group, backend, lib := m[1], m[2], m[3]
		// Composite's "libraries" are a library and a set size
		// (dlock-all8): its own table reads them, the others list libraries.
		if group != "Composite" && !slices.Contains(res.libs[backend], lib) {
			res.libs[backend] = append(res.libs[backend], lib)
		}
		fields := strings.Fields(m[4])
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", sc.Text(), err)
			}
			k := key{group, backend, lib, fields[i+1]}
			res.samples[k] = append(res.samples[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(res.samples) == 0 {
		return nil, fmt.Errorf("no benchmark results in the input")
	}
	return res, nil
}

// get returns the median of a quantity, or NaN if it was not measured.
func (r *results) get(group, backend, lib, unit string) float64 {
	s := slices.Clone(r.samples[key{group, backend, lib, unit}])
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// uncontended returns the median of Uncontended's p50, or of its mean where
// the input has no p50.
func (r *results) uncontended(backend, lib string) float64 {
	if v := r.get("Uncontended", backend, lib, "p50-ns"); !math.IsNaN(v) {
		return v
	}
	return r.get("Uncontended", backend, lib, "ns/op")
}

// before is the name of dlock's rows measured on the library before the
// change under test (bench/run's DLOCK_BENCH_BEFORE).
const before = "dlock-before"

func libLabel(lib string) string {
	if lib == before {
		return "dlock (before)"
	}
	return lib
}

func (r *results) count(group, backend, lib, unit string) int {
	return len(r.samples[key{group, backend, lib, unit}])
}

var backends = []string{"valkey", "pg", "fs"}

var backendTitle = map[string]string{"valkey": "Valkey protocol (redis-server)", "pg": "PostgreSQL", "fs": "files"}

// isFloor reports whether lib is a floor rather than a library.
func isFloor(lib string) bool { return strings.HasPrefix(lib, "floor") || lib == "2rtt" }

// ---------------------------------------------------------------- formatting

func dur(ns float64) string {
	switch {
	case math.IsNaN(ns):
		return "—"
	case ns >= 1e9:
		return fmt.Sprintf("%.2f s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.0f µs", ns/1e3)
	default:
		return fmt.Sprintf("%.0f ns", ns)
	}
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func whole(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.0f", v)
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "—"
	}
	r := a / b
	if r >= 10 {
		return fmt.Sprintf("%.0f×", r)
	}
	if r < 0.1 {
		return fmt.Sprintf("%.3f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// ---------------------------------------------------------------- report

type reportInfo struct {
	machine, command, date, settings, chart, benchstat, scaleLog string
	failures, notes                                              string
}

func report(r *results, info reportInfo) string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# Benchmarks\n\n")
	w("dlock against its Go peers on the same servers, in the same run. ")
	w("This file and its chart are written by `bench/cmd/report` from a real run of the command below; ")
	w("do not edit them by hand.\n\n")
	w("- **Date:** %s\n", info.date)
	w("- **Machine:** %s\n", info.machine)
	w("- **Command:** `%s`\n", info.command)
	if info.settings != "" {
		w("- **Settings:** %s\n", info.settings)
	}
	w("\nEach round runs every library once; within a round the libraries of a backend take turns, in a new random order each turn (see the table below), so that the machine's load, which comes and goes over seconds, falls on them alike. ")
	w("Every figure is the median over the rounds of the run; the machine is shared and noisy, so ")
	w("read ratios, not absolute times, and distrust differences under about 1.3×. ")
	w("Ratios are **dlock ÷ the other**: below 1 means dlock is faster (latencies, allocations); ")
	w("above 1 means dlock does more (throughput).\n\n")
	w("![hand-off latency and throughput per library](%s)\n\n", info.chart)

	w("## What is measured\n\n")
	w("| benchmark | what |\n| --- | --- |\n")
	w("| `Uncontended` | one acquire + release of a free lock (the waiting acquire): its median (p50; the mean is in benchstat) and its allocations (counted apart, one library at a time). The libraries of a backend take turns within a round: each turn times 100 of every library, in a new random order |\n")
	w("| `Handoff` | a holder and a waiter on independent instances (clients, pools, backends — as two processes); the waiter starts 5–15 ms (random) before the release; time from the release call to the waiter's acquisition returning. The libraries of a backend take turns within a round: each turn makes one hand-off of every library, in a new random order, so that the machine's load, which comes and goes over seconds, falls on them alike |\n")
	w("| `ThroughputHot` | 64 goroutines on one instance, acquire + release of one hot lock. The libraries of a backend take turns of 100 ms; each turn runs on an instance of its own, with its connections open and the same workload run first off the clock (512 locks or 500 ms), as a running application's connections have run its statements before |\n")
	w("| `ThroughputKeys` | 64 goroutines on one instance, each on its own lock (warmed up the same way) |\n")
	w("| `Fairness` | 8 clients in 8 processes saturating one lock with 1 ms holds (issue 14; its own section below) |\n")
	w("| `Scale` | as many distinct locks as possible held at once by one process |\n\n")
	w("Floors: **floor** is the cheapest correct lock a user could write by hand on the same pool or client — ")
	w("PostgreSQL: a connection from the pgx pool, a prepared `pg_advisory_lock($1)` (it waits in the server's queue), a prepared `pg_advisory_unlock($1)`, the connection back to the pool; ")
	w("Valkey: `SET key token NX PX` with a unique token, released by a compare-and-delete Lua script through `EVALSHA`, waiting by polling every 1 ms (it has no notification); ")
	w("files: `open`, blocking `flock(LOCK_EX)`, `flock(LOCK_UN)`, `close`. ")
	w("**2rtt** is two round trips on one connection (Valkey: `PING` twice; PostgreSQL: `SELECT 1` twice), split as acquire + release: ")
	w("what any lock needing an acquire and a release round trip costs at least. ")
	w("Guarantee floors (`bench/floors_test.go`) measure what a guarantee dlock gives by default costs when written by hand (those that cannot wait only uncontended and on distinct names): ")
	w("**floor-fenced** (Valkey) is the floor with a fencing token, one script running `SET NX PX` and, when it set the key, `INCR` of the name's counter; ")
	w("**floor-samecalls** (files) makes the system calls of dlock's uncontended acquire + release, each for a guarantee: `open`, the waiters' queue check (`F_OFD_GETLK`), `flock`, `fstat` + `statx` (the path still names the locked file), `pread` + `pwrite` (fencing counter and holder record), the holder record's one-byte OFD mark, and at release `statx`, `flock(LOCK_UN)`, `close` — 11 calls against the floor's 4. ")
	w("**floor-defaults** (Valkey) does the server work of dlock's default guarantees in their cheapest form: the acquire script looks whether the name has waiters (`EXISTS`: a try does not jump the queue), reads `TIME`, sets the key `NX PX` to the token followed by a holder record with the server's time, and writes a fencing token max(counter + 1, server time in µs) with one `SET … GET`; the release compares the token as a prefix, deletes, and looks for waiters to wake. ")
	w("**floor-defaults-fair** (Valkey) is floor-defaults waiting as dlock does: the goroutines of one process are served in arrival order by a queue per name in front of the server, so at most one of them works on the server for a name; across processes a waiter whose attempt fails queues on the server in arrival order (two sorted sets, arrival and deadline, as dlock's queue), only the first live waiter may take a free lock, and a waiter that stops leaves the queue. A waiter on the server polls every millisecond (as the plain floor), so its hand-off between two lockers is a poll's. With nobody queued on the server its server work is exactly floor-defaults'. ")
	w("**floor-watched** (PostgreSQL) is the pg floor with the guarantees dlock's pg backend gives by default: a free lock is tried first (`pg_try_advisory_lock`), a wait is one prepared statement that sets `lock_timeout` (from the ctx's deadline, `set_config` local to the statement's transaction) and calls `pg_advisory_lock` when the session's `statement_timeout` is 0 (else it returns at once and the timeouts, `statement_timeout` 0 too, go in one batch with `pg_advisory_lock`), and a lock held longer than 1 ms has a goroutine waiting, without reading, until its connection's socket is readable (the server's FATAL message or close: the lock is lost), which the release marks stale and does not wait for; it waits, so it also appears on the hot-name and hand-off rows. ")
	w("**floor-fair** (files) waits as dlock does, with the floor's four calls per acquisition: the wait can be cancelled (a blocking `flock` cannot be, so the waiter tries `LOCK_NB` and waits for a close in the directory through inotify, one instance per locker), and the goroutines of one locker are served in arrival order (a queue per name in front of the file; across processes the kernel decides). ")
	w("**floor-fair-samecalls** (files) is floor-fair making floor-samecalls' 11 calls, whose waiter also takes a ticket in the file's queue as dlock's does (one OFD lock, dropped once it holds the lock): dlock's calls and its order across processes, written by hand. ")
	w("**dlock (before)**, where present, is dlock's own rows on the library as it was before the change under test (`DLOCK_BENCH_BEFORE`), built from the same benchmark code and run in the same rounds.\n\n")
	w("Peer settings (see `bench/libs_test.go`): valkey-go's valkeylock with `KeyMajority: 1` (one key, one node), its own client; ")
	w("redsync over its go-redis v9 pool, default 50–250 ms random retry delay, tries raised from 32 to unbounded (ctx-bounded) so it can wait under contention, expiry 8 s; ")
	w("bsm/redislock with `LinearBackoff(10ms)` (it does not retry by default), TTL 8 s; ")
	w("cirello.io/pglock over lib/pq with a 1 s lease and 250 ms heartbeat (default lease 20 s: its waiter sleeps one lease between tries, so the default would make every hand-off take up to 20 s); ")
	w("gofrs/flock `TryLockContext` polling every 10 ms. dlock runs with its defaults (fencing tokens on); ")
	w("`fs/dlock-nofencing` is `fs.WithFencing(false)`.\n\n")

	w("## Results\n\n")
	for _, be := range backends {
		libs := r.libs[be]
		if len(libs) == 0 {
			continue
		}
		w("### %s\n\n", backendTitle[be])
		w("| library | uncontended p50 | dlock ÷ | allocs/op | B/op | hand-off p50 | hand-off p99 | dlock ÷ (p50) | hot ops/s | dlock ÷ | keys ops/s | dlock ÷ |\n")
		w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, lib := range libs {
			u := r.uncontended(be, lib)
			p50 := r.get("Handoff", be, lib, "p50-ns")
			hot := r.get("ThroughputHot", be, lib, "ops/s")
			keys := r.get("ThroughputKeys", be, lib, "ops/s")
			name := libLabel(lib)
			if lib == "dlock" {
				name = "**dlock**"
			}
			rel := func(group, unit string, v float64) string {
				if lib == "dlock" {
					return ""
				}
				return ratio(r.get(group, be, "dlock", unit), v)
			}
			relU := func(v float64) string {
				if lib == "dlock" {
					return ""
				}
				return ratio(r.uncontended(be, "dlock"), v)
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name,
				dur(u), relU(u),
				whole(r.get("Uncontended", be, lib, "allocs/op")), whole(r.get("Uncontended", be, lib, "B/op")),
				dur(p50), dur(r.get("Handoff", be, lib, "p99-ns")), rel("Handoff", "p50-ns", p50),
				num(hot), rel("ThroughputHot", "ops/s", hot),
				num(keys), rel("ThroughputKeys", "ops/s", keys))
		}
		w("\n")
	}
	w("Rounds per figure: uncontended %d, hand-off %d (each round of hand-off has its own p50/p99), throughput %d.\n\n",
		r.count("Uncontended", "valkey", "dlock", "ns/op"), r.count("Handoff", "valkey", "dlock", "p50-ns"),
		r.count("ThroughputHot", "valkey", "dlock", "ops/s"))

	w("### Scale: locks held at once by one process\n\n")
	w("| backend | library | held | time per acquire | goroutines per lock | heap per lock | connections |\n")
	w("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, be := range backends {
		for _, lib := range r.libs[be] {
			held := r.get("Scale", be, lib, "held")
			if math.IsNaN(held) {
				continue
			}
			conns := r.get("Scale", be, lib, "conns")
			w("| %s | %s | %s | %s | %s | %s | %s |\n", be, lib, num(held),
				dur(r.get("Scale", be, lib, "ns/op")), num(r.get("Scale", be, lib, "goroutines/lock")),
				bytes(r.get("Scale", be, lib, "heap-B/lock")), num(conns))
		}
	}
	if strings.TrimSpace(info.scaleLog) != "" {
		w("\nWhere a backend stopped short, the first error:\n\n```\n%s\n```\n", strings.TrimSpace(info.scaleLog))
	}
	w("\n")

	writeIssue16(w, r)
	writeComposite(w, r)
	writeFairness(w, r)

	w("## Other targets (earlier issues)\n\n")
	w("| target | measured | met |\n| --- | --- | :---: |\n")
	for _, t := range targets(r) {
		mark := "yes"
		if !t.met {
			mark = "**no**"
		}
		if t.na {
			mark = "n/a"
		}
		w("| %s | %s | %s |\n", t.what, t.measured, mark)
	}
	w("\n")

	if strings.TrimSpace(info.failures) != "" {
		w("## Failures and stalls in this run\n\nThese benchmarks failed, or (peers only) stalled past the benchmark's bound and were skipped, in at least one round (their figures, if any, come from the other rounds):\n\n```\n%s\n```\n\n", strings.TrimSpace(info.failures))
	}
	if strings.TrimSpace(info.notes) != "" {
		w("%s\n\n", strings.TrimSpace(info.notes))
	}
	if info.benchstat != "" {
		w("## benchstat\n\n<details><summary>benchstat summary of the raw output</summary>\n\n```\n%s\n```\n\n</details>\n", strings.TrimSpace(info.benchstat))
	}
	return b.String()
}

func bytes(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 1024:
		return fmt.Sprintf("%.1f KiB", v/1024)
	default:
		return fmt.Sprintf("%.0f B", v)
	}
}

type target struct {
	what, measured string
	met, na        bool
}

func targets(r *results) []target {
	var ts []target
	add := func(what string, a, b, factor float64, lowerBetter bool, detail string) {
		t := target{what: what}
		if math.IsNaN(a) || math.IsNaN(b) {
			t.measured, t.na = "not measured", true
			ts = append(ts, t)
			return
		}
		rr := a / b
		t.measured = fmt.Sprintf("%s (%s)", ratio(a, b), detail)
		if lowerBetter {
			t.met = rr <= factor
		} else {
			t.met = rr >= factor
		}
		ts = append(ts, t)
	}
	g := r.get
	dp50 := g("Handoff", "valkey", "dlock", "p50-ns")
	for _, peer := range []string{"redsync", "redislock"} {
		p := g("Handoff", "valkey", peer, "p50-ns")
		add("valkey hand-off p50 ≥ 20× faster than "+peer, dp50, p, 1.0/20, true,
			fmt.Sprintf("%s vs %s", dur(dp50), dur(p)))
	}
	vl := g("Handoff", "valkey", "valkeylock", "p50-ns")
	add("valkey hand-off p50 no slower than valkeylock", dp50, vl, 1, true, fmt.Sprintf("%s vs %s", dur(dp50), dur(vl)))
	// One round trip: half of the two-round-trip floor (valkey, pg); the
	// raw flock hand-off for files.
	for _, be := range []string{"valkey", "pg"} {
		p50 := g("Handoff", be, "dlock", "p50-ns")
		rtt := r.uncontended(be, "2rtt") / 2
		add(be+" hand-off p50 about one round trip (≤ 2× one RTT)", p50, rtt, 2, true,
			fmt.Sprintf("%s vs one RTT %s", dur(p50), dur(rtt)))
	}
	for _, grp := range []string{"ThroughputHot", "ThroughputKeys"} {
		what := map[string]string{"ThroughputHot": "one hot key", "ThroughputKeys": "distinct keys"}[grp]
		dt := g(grp, "valkey", "dlock", "ops/s")
		rt := g(grp, "valkey", "redsync", "ops/s")
		add("valkey throughput, 64 goroutines, "+what+": ≥ 3× redsync", dt, rt, 3, false, fmt.Sprintf("%s vs %s ops/s", num(dt), num(rt)))
	}
	return ts
}

// ---------------------------------------------------------------- chart

// chart draws two panels of horizontal bars on log scales: hand-off latency
// (p50 and p99) and throughput (hot key and distinct keys), one row per
// library, grouped by backend.
func chart(r *results) string {
	type row struct{ backend, lib string }
	var rows []row
	for _, be := range backends {
		for _, lib := range r.libs[be] {
			if lib == "2rtt" {
				continue
			}
			rows = append(rows, row{be, lib})
		}
	}
	const (
		rowH    = 26
		labelW  = 190
		panelW  = 430
		gap     = 60
		top     = 70
		bottom  = 50
		barH    = 9
		padLeft = 10
	)
	height := top + len(rows)*rowH + 3*8 + bottom
	width := padLeft + labelW + panelW + gap + panelW + 30
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", width, height, width, height)
	w(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	panels := []struct {
		title  string
		group  string
		units  [2]string
		legend [2]string
		colors [2]string
		lo, hi float64
		format func(float64) string
	}{
		{"Hand-off latency (log scale; shorter is better)", "Handoff", [2]string{"p50-ns", "p99-ns"}, [2]string{"p50", "p99"},
			[2]string{"#2b6cb0", "#90cdf4"}, 1e4, 1e10, dur},
		{"Throughput, 64 goroutines (log scale; longer is better)", "Throughput", [2]string{"ThroughputHot", "ThroughputKeys"},
			[2]string{"one hot key", "distinct keys"}, [2]string{"#c05621", "#fbd38d"}, 1, 1e6, func(v float64) string { return num(v) + "/s" }},
	}
	// Fit the latency axis to the data.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, rw := range rows {
		for _, u := range []string{"p50-ns", "p99-ns"} {
			if v := r.get("Handoff", rw.backend, rw.lib, u); !math.IsNaN(v) && v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if !math.IsInf(lo, 0) {
		panels[0].lo = math.Pow(10, math.Floor(math.Log10(lo)))
		panels[0].hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	}
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, rw := range rows {
		for _, grp := range []string{"ThroughputHot", "ThroughputKeys"} {
			if v := r.get(grp, rw.backend, rw.lib, "ops/s"); !math.IsNaN(v) && v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if !math.IsInf(lo, 0) {
		panels[1].lo = math.Pow(10, math.Floor(math.Log10(lo)))
		panels[1].hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	}
	w(`<text x="%d" y="22" font-size="16" font-weight="bold">dlock and its peers: hand-off latency and throughput</text>`+"\n", padLeft)
	plotH := len(rows)*rowH + 3*8
	for pi, p := range panels {
		x0 := padLeft + labelW + pi*(panelW+gap)
		w(`<text x="%d" y="46" font-weight="bold">%s</text>`+"\n", x0, p.title)
		for li := range 2 {
			lx := x0 + li*120
			w(`<rect x="%d" y="54" width="12" height="9" fill="%s"/><text x="%d" y="63">%s</text>`+"\n", lx, p.colors[li], lx+16, p.legend[li])
		}
		scale := func(v float64) float64 {
			return float64(panelW) * (math.Log10(v) - math.Log10(p.lo)) / (math.Log10(p.hi) - math.Log10(p.lo))
		}
		for d := p.lo; d <= p.hi*1.0001; d *= 10 {
			x := float64(x0) + scale(d)
			w(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x, top, x, top+plotH)
			w(`<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", x, top+plotH+16, p.format(d))
		}
		y := top
		prev := ""
		for _, rw := range rows {
			if rw.backend != prev {
				if prev != "" {
					y += 8
				}
				prev = rw.backend
			}
			for li := range 2 {
				var v float64
				if p.group == "Handoff" {
					v = r.get("Handoff", rw.backend, rw.lib, p.units[li])
				} else {
					v = r.get(p.units[li], rw.backend, rw.lib, "ops/s")
				}
				by := y + 3 + li*(barH+1)
				if math.IsNaN(v) || v <= 0 {
					if li == 0 {
						w(`<text x="%d" y="%d" fill="#999">not measured</text>`+"\n", x0+4, by+9)
					}
					continue
				}
				bw := math.Max(1, scale(math.Max(v, p.lo)))
				w(`<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s %s %s: %s</title></rect>`+"\n",
					x0, by, bw, barH, p.colors[li], rw.backend, rw.lib, p.legend[li], p.format(v))
				w(`<text x="%.1f" y="%d" font-size="10" fill="#333">%s</text>`+"\n", float64(x0)+bw+3, by+8, p.format(v))
			}
			y += rowH
		}
		w(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333"/>`+"\n", x0, top, x0, top+plotH)
	}
	// Row labels.
	y := top
	prev := ""
	for _, rw := range rows {
		if rw.backend != prev {
			if prev != "" {
				y += 8
			}
			prev = rw.backend
		}
		weight := "normal"
		if rw.lib == "dlock" {
			weight = "bold"
		}
		w(`<text x="%d" y="%d" text-anchor="end" font-weight="%s">%s · %s</text>`+"\n", padLeft+labelW-8, y+17, weight, rw.backend, rw.lib)
		y += rowH
	}
	w("</svg>\n")
	return b.String()
}
