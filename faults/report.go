package faults

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Result is one scenario's line in the report.
type Result struct {
	Backend string `json:"backend"`
	Prim    string `json:"prim"`
	Fault   string `json:"fault"`
	Faults  int    `json:"faults"` // faults injected
	Report
	Resource ResourceState `json:"resource"` // the fenced counter
	// Shadow is the counter beside it that enforces nothing: its lost
	// updates are what a user without fencing would lose.
	Shadow ResourceState `json:"shadow"`
	// Revokes says the scenario's fault can revoke a lock before its holder
	// can know (on this backend).
	Revokes bool `json:"revokes"`
	// NoToken says the workload had no fencing token (the CLI on a backend
	// whose -fencing-env gives none): its fenced counter fenced nothing.
	NoToken bool    `json:"noToken,omitempty"`
	Seconds float64 `json:"seconds"`
	// WorkerErrors counts worker processes that exited with an error (or
	// never became ready, or had to be killed at the end).
	WorkerErrors int `json:"workerErrors"`
	// Reasons says why the scenario failed: every failure of the scenario
	// is listed here, the checker's violations included.
	Reasons []string `json:"reasons,omitempty"`
	Failed  bool     `json:"failed"`
	// Checked says the history was checked (false when the scenario failed
	// before its workload ran to the end).
	Checked bool `json:"checked"`
}

// violations returns the checker's violations, 0 for an unchecked row.
func (x *Result) violations() int {
	if !x.Checked {
		return 0
	}
	return x.Violations()
}

// Margin is the lease-margin measurement (TestLeaseMargin).
type Margin struct {
	Backend string        `json:"backend"`
	Lease   time.Duration `json:"lease"`
	Trials  int           `json:"trials"`
	Min     time.Duration `json:"min"`
	Median  time.Duration `json:"median"`
	Max     time.Duration `json:"max"`
	Failed  bool          `json:"failed"`
}

// Revocation is the measurement of a backend's revocation window on an
// idle connection (TestPGRevocationWindow): a lease left idle, its session
// ended, and for each trial the time until the holder was told (Lost()
// closed), in ns, on four clocks. The terminate is sent at S; the server
// signals the holder's backend at K > S (read on the server's clock just
// before); the backend ends its session and frees the lock at F > K; a
// client waiting for the lock is granted it at G ≥ F (F plus its wake-up,
// server clock); pg_terminate_backend(pid, timeout) returns at R, after
// the backend process is gone (which the server checks every 100 ms).
type Revocation struct {
	Backend string `json:"backend"`
	Trials  int    `json:"trials"`
	// FromSent: told − S. An upper bound of told − F, with the request's
	// own trip to the server in it.
	FromSent []int64 `json:"fromSent"`
	// FromKill: told − K. An upper bound of told − F: the target is judged
	// on it.
	FromKill []int64 `json:"fromKill"`
	// FromGrant: told − G. The exposure another client saw: how long it
	// held the lock while the old holder had not been told (negative: told
	// first). A lower bound of told − F.
	FromGrant []int64 `json:"fromGrant"`
	// FromReturn: told − R. A lower bound of told − F, loose by up to the
	// server's 100 ms check of the exit.
	FromReturn []int64 `json:"fromReturn"`
	// IdleMin and IdleMax bound how long a trial's lease connection was
	// idle before the terminate was sent.
	IdleMin time.Duration `json:"idleMin"`
	IdleMax time.Duration `json:"idleMax"`
	Race    bool          `json:"race"`   // built with -race
	Target  time.Duration `json:"target"` // told within this long, at p99
	Failed  bool          `json:"failed"` // the test failed (not on timing)
}

// Met says whether the target was met at p99 on the upper bound from
// the server's signal (FromKill).
func (v *Revocation) Met() bool {
	return len(v.FromKill) > 0 && rank(v.FromKill, 0.99) <= int64(v.Target)
}

// Summary is the measurement in one line (the test log).
func (v *Revocation) Summary() string {
	return fmt.Sprintf("%s revocation window, %d trials, told after (p50 / p99 / max): the terminate sent %s; the backend signalled %s; the waiting client granted %s; pg_terminate_backend returned %s; target %v at p99 (from the signal) met: %v",
		v.Backend, v.Trials, fmtWindows3(v.FromSent), fmtWindows3(v.FromKill), fmtWindows3(v.FromGrant), fmtWindows3(v.FromReturn), v.Target, v.Met())
}

// RunInfo describes the run that produced a Results.
type RunInfo struct {
	Date       time.Time `json:"date"`    // when the run started (UTC)
	Machine    string    `json:"machine"` // OS/arch, CPUs, CPU model
	GoVersion  string    `json:"goVersion"`
	Race       bool      `json:"race"`  // built with -race
	Short      bool      `json:"short"` // short mode
	Scale      float64   `json:"scale"` // DLOCK_FAULTS_SCALE (long mode)
	Workload   float64   `json:"workloadSeconds"`
	Procs      int       `json:"procs"`
	Goroutines int       `json:"goroutines"`
	LeaseMs    int       `json:"leaseMs"` // Valkey lease in the scenarios
	LossMs     int       `json:"lossMs"`  // pg/fs loss interval
	Parallel   int       `json:"parallel"`
	Seconds    float64   `json:"seconds"` // wall time of the scenarios
}

// Results is what a run of the fault checker writes (DLOCK_FAULTS_RESULTS)
// and what the report is generated from.
type Results struct {
	Run    RunInfo   `json:"run"`
	Rows   []*Result `json:"rows"`
	Margin *Margin   `json:"margin,omitempty"`
	// Revocation is pg's revocation window on an idle lock connection.
	Revocation *Revocation `json:"revocation,omitempty"`
	// Rerun lists the rows merged in from later runs (cmd/report with
	// several -in files).
	Rerun []RerunInfo `json:"rerun,omitempty"`
}

// ReadResults reads a results file.
func ReadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("faults: %s: %w", path, err)
	}
	return &r, nil
}

// Merge adds o's rows to r, replacing r's rows of the same backend,
// primitive and fault (a scenario re-run on its own, e.g. TestCLI after a
// fix), and o's margin if it has one. r's run description is kept; the
// replaced rows are listed in Rerun.
func (r *Results) Merge(o *Results) {
	key := func(x *Result) string { return x.Backend + "/" + x.Prim + "/" + x.Fault }
	idx := map[string]int{}
	for i, x := range r.Rows {
		idx[key(x)] = i
	}
	for _, x := range o.Rows {
		if i, ok := idx[key(x)]; ok {
			r.Rows[i] = x
		} else {
			idx[key(x)] = len(r.Rows)
			r.Rows = append(r.Rows, x)
		}
		r.Rerun = append(r.Rerun, RerunInfo{Row: key(x), Date: o.Run.Date})
	}
	if o.Margin != nil {
		r.Margin = o.Margin
	}
	if o.Revocation != nil {
		r.Revocation = o.Revocation
	}
}

// RerunInfo names a row taken from a later run (Merge).
type RerunInfo struct {
	Row  string    `json:"row"`
	Date time.Time `json:"date"`
}

// Totals sums the rows of a run.
type Totals struct {
	Scenarios, Failed, Unchecked, Faults, Sections, Killed, Told int
	Overlaps, Excused, Untold, Violations, WorkerErrors          int
	Writes, LostUpdates, ShadowLost, Refused                     int64
}

// Totals returns the sums over r's rows.
func (r *Results) Totals() Totals {
	var t Totals
	for _, x := range r.Rows {
		t.Scenarios++
		if x.Failed {
			t.Failed++
		}
		if !x.Checked {
			t.Unchecked++
		}
		t.Faults += x.Faults
		t.Sections += x.Sections
		t.Killed += x.Killed
		t.Told += x.Told
		t.Overlaps += x.Overlaps
		t.Excused += x.Excused
		t.Untold += x.Untold
		t.Violations += x.violations()
		t.WorkerErrors += x.WorkerErrors
		t.Writes += x.Resource.Writes
		if !x.NoToken {
			t.LostUpdates += x.Resource.Lost
		}
		t.ShadowLost += x.Shadow.Lost
		t.Refused += x.Resource.Refused
	}
	return t
}

// Report blocks are delimited in a Markdown file by these markers; the text
// outside them is kept as written.
const (
	blockBegin = "<!-- faults:%s:begin (generated by faults/cmd/report; edits inside are overwritten) -->"
	blockEnd   = "<!-- faults:%s:end -->"
)

// Markdown renders the generated blocks of the report: "run" (when and
// how), "results" (the scenario table and totals) and "margin". command is
// the command that produced the run, shown verbatim.
func (r *Results) Markdown(command string) map[string]string {
	out := map[string]string{}
	ri := r.Run
	var b strings.Builder
	mode := "long mode"
	if ri.Short {
		mode = "short mode"
	} else if ri.Scale != 0 && ri.Scale != 1 {
		mode = fmt.Sprintf("long mode, DLOCK_FAULTS_SCALE=%g", ri.Scale)
	}
	race := "without -race"
	if ri.Race {
		race = "with -race"
	}
	fmt.Fprintf(&b, "Run of %s UTC on %s, %s, %s.\n\n", ri.Date.UTC().Format("2006-01-02 15:04"), ri.Machine, ri.GoVersion, race)
	fmt.Fprintf(&b, "- %s: %s of workload per scenario, %d worker processes × %d goroutines, Valkey lease %v, pg/fs loss interval %v, %d scenarios at a time; %s wall time.\n",
		mode, fmtSeconds(ri.Workload), ri.Procs, ri.Goroutines, time.Duration(ri.LeaseMs)*time.Millisecond,
		time.Duration(ri.LossMs)*time.Millisecond, ri.Parallel, fmtSeconds(ri.Seconds))
	if command != "" {
		fmt.Fprintf(&b, "- Command: `%s`\n", command)
	}
	if len(r.Rerun) > 0 {
		byDate := map[string][]string{}
		var dates []string
		for _, x := range r.Rerun {
			d := x.Date.UTC().Format("2006-01-02 15:04")
			if byDate[d] == nil {
				dates = append(dates, d)
			}
			byDate[d] = append(byDate[d], x.Row)
		}
		for _, d := range dates {
			fmt.Fprintf(&b, "- Rows from a later run (%s UTC, same settings): %s.\n", d, strings.Join(byDate[d], ", "))
		}
	}
	out["run"] = b.String()

	b.Reset()
	rows := append([]*Result(nil), r.Rows...)
	sort.SliceStable(rows, func(i, j int) bool {
		a, c := rows[i], rows[j]
		if a.Backend != c.Backend {
			return a.Backend < c.Backend
		}
		if a.Prim != c.Prim {
			return a.Prim < c.Prim
		}
		return a.Fault < c.Fault
	})
	for _, revoking := range []bool{true, false} {
		if revoking {
			b.WriteString("**Faults that can revoke a lock before its holder can know** (the server frees it at once, or the holder is frozen past its lease). An overlap here is told: the old holder learns of the loss within the exposure window, and only a fencing token keeps its late write out.\n\n")
		} else {
			b.WriteString("**Faults that cannot** (the holder is told before anyone else can acquire, or its death frees the lock). Every overlap and every lost update here, with or without fencing, is a violation.\n\n")
		}
		b.WriteString("| backend | primitive | fault | faults | sections | killed inside | told lost | untold overlaps | told overlaps | lost updates, fencing | lost updates, no fencing | stale writes refused | exposure p50 / p99 / max (n) | verdict | what protects a user |\n")
		b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|\n")
		for _, x := range rows {
			if x.Revokes != revoking {
				continue
			}
			verdict := "pass"
			if x.Failed {
				verdict = "**FAIL**"
				if len(x.Reasons) > 0 {
					verdict += ": " + cell(strings.Join(x.Reasons, "; "), 300)
				}
			}
			if !x.Checked {
				fmt.Fprintf(&b, "| %s | %s | %s | %d | not checked | | | | | | | | | %s | %s |\n",
					x.Backend, x.Prim, x.Fault, x.Faults, verdict, Protection(x.Backend, x.Fault, x.Revokes))
				continue
			}
			fenced := strconv.FormatInt(x.Resource.Lost, 10)
			if x.NoToken {
				fenced = "no token"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %d | %d | %d | %d | %s | %d | %d | %s | %s | %s |\n",
				x.Backend, x.Prim, x.Fault, x.Faults, x.Sections, x.Killed, x.Told, x.Untold, x.Excused,
				fenced, x.Shadow.Lost, x.Resource.Refused, fmtWindows(x.Windows), verdict,
				Protection(x.Backend, x.Fault, x.Revokes))
		}
		b.WriteString("\n")
	}

	// Exposure windows and updates lost without fencing, per backend and
	// per revoking fault.
	type agg struct {
		windows      []int64
		lost, writes int64
		untold, told int
		rows         int
	}
	byBackend, byFault := map[string]*agg{}, map[string]*agg{}
	var keysB, keysF []string
	for _, x := range rows {
		if !x.Revokes || !x.Checked {
			continue
		}
		kb, kf := x.Backend, x.Backend+" / "+x.Fault
		if byBackend[kb] == nil {
			byBackend[kb] = &agg{}
			keysB = append(keysB, kb)
		}
		if byFault[kf] == nil {
			byFault[kf] = &agg{}
			keysF = append(keysF, kf)
		}
		for _, a := range []*agg{byBackend[kb], byFault[kf]} {
			a.windows = append(a.windows, x.Windows...)
			a.lost += x.Shadow.Lost
			a.writes += x.Shadow.Writes
			a.untold += x.Untold
			a.told += x.Excused
			a.rows++
		}
	}
	sort.Strings(keysB)
	sort.Strings(keysF)
	b.WriteString("Exposure window per backend (revoking faults; from the fault's start — for a holder paused past its lease, the latest moment its lease can have expired — to the moment the holder was told, by `Lost()` or by `Release`'s `ErrLockLost`; the server freed the lock at or after the fault's start, so this bounds the window from above):\n\n")
	b.WriteString("| backend | revocations told | p50 | p99 | max |\n|---|--:|--:|--:|--:|\n")
	for _, k := range keysB {
		a := byBackend[k]
		p50, p99, mx := percentiles(a.windows)
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", k, len(a.windows), p50, p99, mx)
	}
	b.WriteString("\nPer revoking fault (all primitives): what a user without fencing lost.\n\n")
	b.WriteString("| backend / fault | scenarios | told overlaps | untold overlaps | writes | lost updates, no fencing | exposure p50 / p99 / max (n) |\n|---|--:|--:|--:|--:|--:|---|\n")
	for _, k := range keysF {
		a := byFault[k]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %s |\n", k, a.rows, a.told, a.untold, a.writes, a.lost, fmtWindows(a.windows))
	}

	t := r.Totals()
	unchecked := ""
	if t.Unchecked > 0 {
		unchecked = fmt.Sprintf(", %d not checked", t.Unchecked)
	}
	fmt.Fprintf(&b, "\nTotals: %d scenarios (%d failed%s), %d faults injected, %d critical sections (%d killed inside, %d told lost), %d overlaps (%d told, %d untold), **%d violations**, %d worker errors; %d writes, %d lost updates with fencing, %d without (%d stale writes refused by fencing).\n",
		t.Scenarios, t.Failed, unchecked, t.Faults, t.Sections, t.Killed, t.Told, t.Overlaps, t.Excused, t.Untold, t.Violations,
		t.WorkerErrors, t.Writes, t.LostUpdates, t.ShadowLost, t.Refused)
	out["results"] = b.String()

	b.Reset()
	if m := r.Margin; m != nil {
		verdict := "positive in every trial"
		if m.Failed || m.Min <= 0 {
			verdict = "**not positive in every trial**"
		}
		fmt.Fprintf(&b, "%s mutex, lease %v, %d trials: margin min %v, median %v, max %v — %s.\n",
			m.Backend, m.Lease, m.Trials, m.Min.Round(time.Microsecond), m.Median.Round(time.Microsecond),
			m.Max.Round(time.Microsecond), verdict)
	} else {
		b.WriteString("(not measured in this run)\n")
	}
	out["margin"] = b.String()
	out["revocation"] = r.revocationBlock(rows)
	if fb := r.failoverBlock(rows, command); fb != "" {
		out["failover"] = fb
	}
	return out
}

// failoverBlock renders the failover scenarios of the Sentinel deployment,
// without and with valkey.WithReplicas, side by side: "" when the run has
// none (the block is then left as it is).
func (r *Results) failoverBlock(rows []*Result, command string) string {
	var b strings.Builder
	type sum struct{ rows, faults, sections, told, untold, excused, failed int }
	var sums [2]sum // without, with the option
	for _, x := range rows {
		if x.Fault != "failover" {
			continue
		}
		if b.Len() == 0 {
			ri := r.Run
			mode := "long mode"
			if ri.Short {
				mode = "short mode"
			} else if ri.Scale != 0 && ri.Scale != 1 {
				mode = fmt.Sprintf("long mode, DLOCK_FAULTS_SCALE=%g", ri.Scale)
			}
			fmt.Fprintf(&b, "Run of %s UTC on %s, %s (%s of workload per scenario, %d worker processes × %d goroutines).",
				ri.Date.UTC().Format("2006-01-02 15:04"), ri.Machine, mode, fmtSeconds(ri.Workload), ri.Procs, ri.Goroutines)
			if command != "" {
				fmt.Fprintf(&b, " Command: `%s`", command)
			}
			b.WriteString("\n\n| deployment | primitive | failovers | sections | told lost | untold overlaps | told overlaps | lost updates, fencing | lost updates, no fencing | stale writes refused | verdict |\n")
			b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
		}
		verdict := "pass"
		if x.Failed {
			verdict = "**FAIL**"
			if len(x.Reasons) > 0 {
				verdict += ": " + cell(strings.Join(x.Reasons, "; "), 300)
			}
		}
		i := 0
		if strings.HasSuffix(x.Backend, "-replicas") {
			i = 1
		}
		sums[i].rows++
		sums[i].faults += x.Faults
		if x.Failed {
			sums[i].failed++
		}
		if !x.Checked {
			fmt.Fprintf(&b, "| %s | %s | %d | not checked | | | | | | | %s |\n", x.Backend, x.Prim, x.Faults, verdict)
			continue
		}
		sums[i].sections += x.Sections
		sums[i].told += x.Told
		sums[i].untold += x.Untold
		sums[i].excused += x.Excused
		fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %s |\n",
			x.Backend, x.Prim, x.Faults, x.Sections, x.Told, x.Untold, x.Excused, x.Resource.Lost, x.Shadow.Lost,
			x.Resource.Refused, verdict)
	}
	if b.Len() == 0 {
		return ""
	}
	b.WriteString("\n")
	for i, name := range []string{"Without `WithReplicas`", "With `WithReplicas(2)`"} {
		s := sums[i]
		if s.rows == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s: %d scenarios (%d failed), %d failovers, %d sections, %d overlaps told (a second holder while the first still held, told later), %d untold.\n",
			name, s.rows, s.failed, s.faults, s.sections, s.excused, s.untold)
	}
	return b.String()
}

// revocationBlock renders the revocation measurement, and beside it the
// windows of this run's pg terminate scenarios split by how the holder
// was told.
func (r *Results) revocationBlock(rows []*Result) string {
	var b strings.Builder
	if v := r.Revocation; v != nil {
		race := "without -race"
		if v.Race {
			race = "with -race"
		}
		fmt.Fprintf(&b, "%s, a lease on an idle lock connection (idle %v–%v), its session ended with `pg_terminate_backend(pid, 1000)` while another client waited for the lock; %d trials, %s. Time until the holder was told (`Lost()` closed):\n\n",
			v.Backend, v.IdleMin, v.IdleMax, v.Trials, race)
		b.WriteString("| measured from | p50 | p99 | max | what it bounds |\n|---|--:|--:|--:|---|\n")
		for _, c := range []struct {
			name string
			w    []int64
			note string
		}{
			{"the terminate sent (client clock)", v.FromSent, "upper bound, with the request's own trip to the server and its scheduling"},
			{"the holder's backend signalled (server clock)", v.FromKill, "upper bound: the session ends, and the lock is freed, after the signal"},
			{"the waiting client's grant (server clock)", v.FromGrant, "lower bound, and the exposure: how long another client held the lock while the old holder had not been told (negative: told first)"},
			{"`pg_terminate_backend` returned (client clock)", v.FromReturn, "lower bound, loose: it returns once the backend is gone, which the server checks every 100 ms"},
		} {
			p50, p99, mx := percentiles(c.w)
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", c.name, p50, p99, mx, c.note)
		}
		verdict := "**met**"
		if !v.Met() {
			verdict = "**not met**"
		}
		if len(v.FromKill) == len(v.FromGrant) && len(v.FromKill) > 0 {
			pgPart := make([]int64, len(v.FromKill))
			for i := range pgPart {
				pgPart[i] = v.FromKill[i] - v.FromGrant[i]
			}
			fmt.Fprintf(&b, "\nPostgreSQL's own part, from the signal to the waiting client's grant (the backend ends its session, frees the lock, the waiter wakes): %s (p50 / p99 / max).\n", fmtWindows3(pgPart))
		}
		_, p99, _ := percentiles(v.FromKill)
		fmt.Fprintf(&b, "\nTarget (issue 12): told within %v of termination at p99 on an idle lock connection — %s (p99 %s from the backend's signal, an upper bound).", v.Target, verdict, p99)
		if v.Failed {
			b.WriteString(" **The test failed** (see its log).")
		}
		b.WriteString("\n")
	} else {
		b.WriteString("(not measured in this run)\n")
	}
	var lost, rel []int64
	n := 0
	for _, x := range rows {
		if x.Backend == "pg" && x.Fault == "terminate" && x.Checked {
			lost = append(lost, x.WindowsLost...)
			rel = append(rel, x.WindowsRelease...)
			n++
		}
	}
	if len(lost)+len(rel) > 0 {
		fmt.Fprintf(&b, "\nIn this run's pg `terminate` scenarios (%d; from the server's signal of the first terminated backend; holders inside short sections, beside busy neighbours): told by `Lost()` while inside the section %s; told only by `Release` (the termination met the release on its way, or was not seen before it) %s.\n",
			n, fmtWindows(lost), fmtWindows(rel))
	}
	return b.String()
}

func fmtSeconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Second).String()
}

// cell makes s safe inside a Markdown table cell, at most n bytes.
func cell(s string, n int) string {
	s = strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ").Replace(s)
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// UpdateDoc replaces, in doc, the content of every block named in blocks
// (between its begin and end markers) and returns the new document. Every
// named block must be present exactly once.
func UpdateDoc(doc string, blocks map[string]string) (string, error) {
	names := make([]string, 0, len(blocks))
	for n := range blocks {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		begin, end := fmt.Sprintf(blockBegin, n), fmt.Sprintf(blockEnd, n)
		if strings.Count(doc, begin) != 1 || strings.Count(doc, end) != 1 {
			return "", fmt.Errorf("faults: the document needs exactly one %q and one %q", begin, end)
		}
		i := strings.Index(doc, begin) + len(begin)
		j := strings.Index(doc, end)
		if j < i {
			return "", fmt.Errorf("faults: %q comes before %q", end, begin)
		}
		doc = doc[:i] + "\n\n" + blocks[n] + "\n" + doc[j:]
	}
	return doc, nil
}

// percentiles returns the p50, p99 and maximum of windows (ns), formatted,
// nearest rank.
func percentiles(windows []int64) (p50, p99, max string) {
	if len(windows) == 0 {
		return "–", "–", "–"
	}
	return fmtMs(rank(windows, 0.50)), fmtMs(rank(windows, 0.99)), fmtMs(rank(windows, 1))
}

// rank returns the p-quantile of w (not empty), nearest rank.
func rank(w []int64, p float64) int64 {
	s := append([]int64(nil), w...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max0(k), len(s)-1)]
}

func max0(k int) int {
	if k < 0 {
		return 0
	}
	return k
}

func fmtMs(ns int64) string {
	return fmt.Sprintf("%.1f ms", float64(ns)/1e6)
}

// fmtWindows3 is fmtWindows without the count.
func fmtWindows3(windows []int64) string {
	p50, p99, mx := percentiles(windows)
	return p50 + " / " + p99 + " / " + mx
}

func fmtWindows(windows []int64) string {
	if len(windows) == 0 {
		return "–"
	}
	p50, p99, mx := percentiles(windows)
	return fmt.Sprintf("%s / %s / %s (%d)", p50, p99, mx, len(windows))
}

// Protection says in one line what protects a user from the fault on the
// backend.
func Protection(backend, fault string, revokes bool) string {
	lease := backend == "valkey" || backend == "redlock" || backend == "cluster" || strings.HasPrefix(backend, "sentinel")
	switch {
	case fault == "failover" && revokes:
		return "fencing, or valkey.WithReplicas: the promoted replica may lack the key; the holder learns at its next extension"
	case fault == "failover":
		return "the lock (valkey.WithReplicas: held only once the replicas have it)"
	case strings.HasPrefix(backend, "cli"):
		switch {
		case fault == "kill-dlock":
			return "none unless COMMAND dies with dlock (or holds the lock itself); fencing (-fencing-env) refuses a survivor's late write"
		case revokes:
			return "fencing (-fencing-env) at the store; dlock stops COMMAND and exits 76 only once told"
		default:
			return "the lock: COMMAND dies with dlock"
		}
	case fault == "none":
		return "the lock itself"
	case fault == "kill":
		return "the lock: a dead holder's lock is freed" + map[bool]string{true: " when its lease runs out", false: " at once"}[lease] + "; it writes no more"
	case revokes && fault == "pause":
		return "only fencing: the lease ran out while the holder was stopped; it learns on waking"
	case revokes && (fault == "keydel" || fault == "restart") && lease:
		return "only fencing: the key is gone at once; the holder learns at its next extension or release"
	case revokes && backend == "pg":
		return "fencing; Lost() as soon as the lock connection sees the session end (or Release says ErrLockLost)"
	case revokes && backend == "fs":
		return "fencing; Lost() within the loss interval"
	case revokes:
		return "fencing"
	case fault == "pause":
		return "the lock: a stopped holder keeps its session or file lock"
	default:
		return "the lock: the holder is told (or keeps it) before anyone else can acquire"
	}
}
