package faults

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/internal/testserver"
)

// Scenario sizes. The short mode (go test -short, or DLOCK_FAULTS_SHORT=1)
// runs every scenario briefly (shortDur); the long mode produces the
// published numbers (DLOCK_FAULTS_SCALE multiplies the duration, default
// 1). DLOCK_FAULTS_PARALLEL sets how many scenarios run their workload at
// once (default 2 in the long mode, 3 in the short mode, whose scenarios
// are mostly waiting; never more than an explicit -parallel); one more
// may be preparing meanwhile.
type sizing struct {
	short      bool
	scale      float64
	dur        time.Duration // workload duration
	procs      int           // worker processes
	goroutines int           // per process
	parallel   int           // scenarios at once
}

func size() sizing {
	sz := sizing{parallel: 2, goroutines: 2, scale: 1}
	short := testing.Short() || os.Getenv("DLOCK_FAULTS_SHORT") == "1"
	if short {
		sz.parallel = 3
	}
	if p := os.Getenv("DLOCK_FAULTS_PARALLEL"); p != "" {
		if n, err := strconv.Atoi(p); err == nil && n >= 1 {
			sz.parallel = n
		}
	}
	if short {
		sz.short, sz.dur, sz.procs = true, 4*time.Second, 3 // dur: the longest (shortDur)
		return sz
	}
	if s := os.Getenv("DLOCK_FAULTS_SCALE"); s != "" {
		if v, err := strconv.ParseFloat(s, 64); err == nil && v > 0 {
			sz.scale = v
		}
	}
	sz.dur, sz.procs = time.Duration(sz.scale*float64(20*time.Second)), 4
	return sz
}

const (
	// leaseMs is the Valkey lease in the scenarios. It is long enough that
	// a holder starved of CPU on a loaded machine (worker processes built
	// with -race on two cores) still extends its lease in time: a holder
	// that cannot run for a whole lease is indistinguishable from a paused
	// one. TestLeaseMargin measures the margin of a short lease on its own.
	leaseMs = 1500
	lossMs  = 400 // pg and fs loss interval
	semCap  = 2   // semaphore limit

	readyTimeout = 30 * time.Second // for every worker to connect

	// The Sentinel scenarios: a lease longer than a failover (so that
	// holders ride it out, and a holder whose key the promoted replica
	// lacks may still hold it untold), and sentinels that act 1.5 s after
	// the primary stops answering.
	sentinelLeaseMs   = 6000
	sentinelDownAfter = 1500 * time.Millisecond
)

// sentinelHoldMs is the pause inside a section in the Sentinel scenarios:
// the longer ones outlast a failover (from the primary's kill to the
// clients' switch to the promoted replica, some 3 s), so that a holder
// that took the lock while the replicas lagged may still be inside when
// the others reach the promoted replica. sentinelPauseMs is the pause
// between a goroutine's sections: the lock is often free, so that it is
// sometimes taken afresh while the replicas lag (a hand-off then is not
// enough: the promoted replica still has the previous holder's key).
var (
	sentinelHoldMs  = [2]int{20, 6000}
	sentinelPauseMs = [2]int{0, 3000}
)

// faultKind describes one fault: how to inject it and whether it can revoke
// a lock before its holder is told (per backend).
type faultKind struct {
	name    string
	revokes func(backend string) bool
	inject  func(e *env, target *proc) Fault
	needs   string // "private" when the scenario needs private servers
}

func lease(b string) bool {
	return b == "valkey" || b == "redlock" || b == "cluster" || b == "sentinel" || b == "sentinel-replicas"
}
func never(string) bool  { return false }
func always(string) bool { return true }

var allFaults = map[string]faultKind{
	"none": {name: "none"},
	"latency": {name: "latency", revokes: never, inject: func(e *env, _ *proc) Fault {
		return e.toxic(-1, "latency", `"latency":40,"jitter":40`, 800*time.Millisecond)
	}},
	"blackhole": {name: "blackhole", revokes: never, inject: func(e *env, p *proc) Fault {
		return e.toxic(p.slot, "timeout", `"timeout":0`, e.outage())
	}},
	"reset": {name: "reset", revokes: func(b string) bool { return b == "pg" }, inject: func(e *env, p *proc) Fault {
		return e.toxic(p.slot, "reset_peer", `"timeout":0`, 300*time.Millisecond)
	}},
	"partition": {name: "partition", revokes: func(b string) bool { return b == "pg" }, inject: func(e *env, p *proc) Fault {
		return e.partition(p.slot, e.outage())
	}},
	"pause":     {name: "pause", revokes: lease, inject: func(e *env, p *proc) Fault { return e.pause(p) }},
	"kill":      {name: "kill", revokes: never, inject: func(e *env, p *proc) Fault { return e.kill(p) }},
	"restart":   {name: "restart", revokes: always, needs: "private", inject: func(e *env, _ *proc) Fault { return e.restart() }},
	"terminate": {name: "terminate", revokes: always, inject: func(e *env, _ *proc) Fault { return e.terminate() }},
	"clientkill": {name: "clientkill", revokes: never, inject: func(e *env, p *proc) Fault {
		return e.clientKill(p)
	}},
	"keydel":     {name: "keydel", revokes: always, inject: func(e *env, _ *proc) Fault { return e.keyDel() }},
	"fileremove": {name: "fileremove", revokes: always, inject: func(e *env, _ *proc) Fault { return e.fileRemove() }},
	// The Sentinel group's primary killed while its replicas lag: without
	// WithReplicas a holder's key may be missing on the promoted replica.
	"failover": {name: "failover", revokes: func(b string) bool { return b == "sentinel" }, inject: func(e *env, _ *proc) Fault {
		return e.failover()
	}},
}

// The matrix: faults per backend (RedLock has only the mutex; the cluster
// runs without toxiproxy, whose addresses would not match MOVED replies).
var matrix = []struct {
	backend string
	prims   []string
	faults  []string
}{
	{"fs", []string{"mutex", "rw", "sem"}, []string{"none", "pause", "kill", "fileremove"}},
	{"pg", []string{"mutex", "rw", "sem"}, []string{"none", "latency", "blackhole", "reset", "partition", "pause", "kill", "terminate", "restart"}},
	{"valkey", []string{"mutex", "rw", "sem"}, []string{"none", "latency", "blackhole", "reset", "partition", "pause", "kill", "clientkill", "keydel", "restart"}},
	{"redlock", []string{"mutex"}, []string{"none", "latency", "blackhole", "reset", "partition", "pause", "kill", "clientkill", "keydel", "restart"}},
	{"cluster", []string{"mutex", "rw", "sem"}, []string{"none", "pause", "kill"}},
	// A private Sentinel group per scenario (one primary, two replicas,
	// three sentinels), without and with WithReplicas(2).
	{"sentinel", []string{"mutex", "rw", "sem"}, []string{"failover"}},
	{"sentinel-replicas", []string{"mutex", "rw", "sem"}, []string{"failover"}},
}

var results struct {
	mu         sync.Mutex
	run        RunInfo
	rows       []*Result
	margin     *Margin
	revocation *Revocation
}

// privatePGScenario serializes the scenarios that crash the private
// PostgreSQL server, which they share.
var privatePGScenario sync.Mutex

// scenarioSlots bound the scenarios of TestFaults and the rows of TestCLI,
// which run together (both are parallel tests: they start once the
// timing measurements, TestLeaseMargin and TestPGRevocationWindow, are
// over). A scenario holds prep while it sets up and runs, and a slot while
// its workload runs: at most sizing.parallel workloads at once, and one
// more scenario preparing.
var scenarioSlots struct {
	once        sync.Once
	prep, slots chan struct{}
}

func slotsFor(sz sizing) (prep, slots chan struct{}) {
	scenarioSlots.once.Do(func() {
		scenarioSlots.prep = make(chan struct{}, sz.parallel+1)
		scenarioSlots.slots = make(chan struct{}, sz.parallel)
	})
	return scenarioSlots.prep, scenarioSlots.slots
}

func TestFaults(t *testing.T) {
	t.Parallel()
	sz := size()
	started := time.Now()
	results.mu.Lock()
	results.run = RunInfo{Date: started.UTC().Truncate(time.Second), Machine: machine(), GoVersion: runtime.Version(),
		Race: raceEnabled, Short: sz.short, Scale: sz.scale, Workload: sz.dur.Seconds(), Procs: sz.procs,
		Goroutines: sz.goroutines, LeaseMs: leaseMs, LossMs: lossMs, Parallel: sz.parallel}
	if f := flag.Lookup("test.parallel"); f != nil {
		if n, err := strconv.Atoi(f.Value.String()); err == nil && n < sz.parallel {
			results.run.Parallel = n
		}
	}
	results.mu.Unlock()
	prep, slots := slotsFor(sz)
	t.Cleanup(func() {
		results.mu.Lock()
		results.run.Seconds = time.Since(started).Seconds()
		results.mu.Unlock()
		writeResults()
	})
	for _, m := range matrix {
		t.Run(m.backend, func(t *testing.T) {
			t.Parallel()
			for _, prim := range m.prims {
				for _, f := range m.faults {
					t.Run(prim+"/"+f, func(t *testing.T) {
						t.Parallel()
						fk := allFaults[f]
						if m.backend == "pg" && fk.needs == "private" {
							privatePGScenario.Lock()
							defer privatePGScenario.Unlock()
						}
						prep <- struct{}{}
						defer func() { <-prep }()
						runScenario(t, m.backend, prim, fk, sz, slots)
					})
				}
			}
		})
	}
}

// machine describes the machine for the report.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s/%s, %d CPUs (%s)", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), model)
}

// writeResults writes the results gathered so far to DLOCK_FAULTS_RESULTS,
// if set (faults/cmd/report turns them into RELIABILITY.md's tables).
func writeResults() {
	path := os.Getenv("DLOCK_FAULTS_RESULTS")
	if path == "" {
		return
	}
	results.mu.Lock()
	defer results.mu.Unlock()
	rows := append([]*Result(nil), results.rows...)
	sort.Slice(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		return a.Backend+"/"+a.Prim+"/"+a.Fault < b.Backend+"/"+b.Prim+"/"+b.Fault
	})
	b, err := json.MarshalIndent(Results{Run: results.run, Rows: rows, Margin: results.margin, Revocation: results.revocation}, "", " ")
	if err == nil {
		err = os.WriteFile(path, b, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "faults: writing %s: %v\n", path, err)
	}
}

// env is one running scenario.
type env struct {
	t        *testing.T
	backend  string
	prim     string
	fk       faultKind
	dir      string
	name     string
	prefix   string
	app      string
	upstream []string // server addresses (host:port), or the pg URL's host
	pgURL    string   // admin URL (direct)
	deadline int64    // set when every worker is ready
	sz       sizing
	srvRedis []*redisServer
	srvPG    *pgServer
	sentinel *testserver.Sentinel

	tp      *toxiproxy.ApiServer
	proxies [][]*toxiproxy.Proxy // per slot, per upstream

	mu           sync.Mutex
	procs        []*proc // per slot: the current worker
	all          []*proc // every worker started
	nextID       int
	faults       []Fault
	deaths       []Death
	reasons      []string // why the scenario failed
	workerErrors int
	rng          *rand.Rand
}

type proc struct {
	slot, id int
	cmd      *exec.Cmd
	log      string
	done     chan struct{}
	reap     int64
	killed   bool // by a kill fault or by the harness
}

// fail marks the scenario failed and records why, for the test log and for
// the report's verdict column (short is the report's version of the reason;
// the log gets detail too).
func (e *env) fail(short, detail string) {
	e.t.Helper()
	e.mu.Lock()
	e.reasons = append(e.reasons, short)
	e.mu.Unlock()
	if detail != "" {
		e.t.Errorf("%s\n%s", short, detail)
	} else {
		e.t.Error(short)
	}
}

func (e *env) failf(format string, args ...any) {
	e.t.Helper()
	e.fail(fmt.Sprintf(format, args...), "")
}

func (e *env) fatalf(format string, args ...any) {
	e.t.Helper()
	e.failf(format, args...)
	e.t.FailNow()
}

func (e *env) outage() time.Duration {
	if lease(e.backend) {
		return leaseMs*time.Millisecond + 800*time.Millisecond
	}
	return 3 * lossMs * time.Millisecond
}

// shortDur is a scenario's workload in the short mode: room for the
// first fault and the quiet tail of 1.2 s after it (see runScenario).
func shortDur(backend string, fk faultKind) time.Duration {
	switch fk.name {
	case "none":
		return 1500 * time.Millisecond
	case "pause", "blackhole", "partition":
		if lease(backend) {
			return 4 * time.Second // the fault lasts a lease + 0.8–1 s
		}
		return 3 * time.Second // 3 loss intervals (a pause up to 1.4 s)
	case "failover":
		return 9 * time.Second // the fault lasts some 4-5 s (lag, promotion after 1.5 s down, the old primary back)
	default:
		return 2500 * time.Millisecond // the fault lasts at most 0.8 s (latency), or 0.2 s + a server start (restart)
	}
}

// runScenario runs one scenario. Its workload (and its faults) begin once
// it has a place in slots, when its workers are ready.
func runScenario(t *testing.T, backend, prim string, fk faultKind, sz sizing, slots chan struct{}) {
	started := time.Now()
	if sz.short {
		sz.dur = shortDur(backend, fk)
	}
	e := &env{t: t, backend: backend, prim: prim, fk: fk, sz: sz, dir: t.TempDir(),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	res := &Result{Backend: backend, Prim: prim, Fault: fk.name}
	defer func() {
		if t.Skipped() {
			return
		}
		e.mu.Lock()
		res.Faults = len(e.faults)
		res.Reasons = append([]string(nil), e.reasons...)
		res.WorkerErrors = e.workerErrors
		e.mu.Unlock()
		res.Seconds = time.Since(started).Seconds()
		res.Failed = t.Failed()
		if res.Failed && len(res.Reasons) == 0 {
			res.Reasons = []string{"failed outside the checks (see the test log)"}
		}
		results.mu.Lock()
		results.rows = append(results.rows, res)
		results.mu.Unlock()
	}()
	tag := fmt.Sprintf("%s-%s-%s-%d", backend, prim, fk.name, time.Now().UnixNano())
	e.name, e.prefix, e.app = "faults-"+tag, "dlockfaults:"+tag+":", "dlockfaults-"+tag
	e.setupServers()
	proxied := backend == "pg" || backend == "valkey" || backend == "redlock"
	if proxied {
		e.tp = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	}
	defer func() {
		for _, ps := range e.proxies {
			for _, p := range ps {
				p.Stop()
			}
		}
	}()
	for slot := range sz.procs {
		var ps []*toxiproxy.Proxy
		if proxied {
			for i, up := range e.upstream {
				p := toxiproxy.NewProxy(e.tp, fmt.Sprintf("s%d-%d", slot, i), "127.0.0.1:0", up)
				if err := p.Start(); err != nil {
					e.fatalf("toxiproxy: %v", err)
				}
				ps = append(ps, p)
			}
		}
		e.proxies = append(e.proxies, ps)
	}

	e.procs = make([]*proc, sz.procs)
	defer e.killAll()
	for slot := range sz.procs {
		e.spawn(slot)
	}
	e.waitReady()
	tPrepared := time.Now()
	slots <- struct{}{}
	defer func() { <-slots }()
	tReady := time.Now()
	e.start()
	// Faults: one after another, with gaps, at least one; the next only if
	// it can be over (as long as the longest so far, plus the search for a
	// holder) before a quiet tail in which the workload must go on.
	quiet := max(1200*time.Millisecond, sz.dur/5)
	if fk.inject != nil {
		e.waitFirstSection(2 * time.Second)
		var longest time.Duration
		for first := true; first || Now()+int64(longest+500*time.Millisecond) < e.deadline-int64(quiet); first = false {
			target := e.pickHolder()
			f := e.inject(fk, target, quiet)
			f.Revokes = fk.revokes(backend)
			longest = max(longest, time.Duration(f.End-f.Start))
			e.mu.Lock()
			e.faults = append(e.faults, f)
			e.mu.Unlock()
			time.Sleep(time.Duration(200+e.rng.IntN(300)) * time.Millisecond)
		}
	}
	tFaults := time.Now()
	e.waitWorkers()
	tDone := time.Now()

	var paths []string
	for id := range e.nextID {
		paths = append(paths, e.recordsPath(id))
	}
	sections, err := ReadRecords(paths...)
	if err != nil {
		e.fatalf("reading the histories: %v", err)
	}
	limit := 1
	if prim == "sem" {
		limit = semCap
	}
	// A holder may learn of a loss a fault caused a little after it healed
	// (the next loss check, or the Release that finds it); with room for a
	// loaded machine running -race workers.
	lms := leaseMs
	if e.sentinel != nil {
		lms = sentinelLeaseMs
	}
	slack := 2*time.Second + time.Duration(max(lms, 3*lossMs))*time.Millisecond
	rep := Check(sections, e.faults, e.deaths, Spec{Limit: limit, LossSlack: slack})
	st, err := NewResource(filepath.Join(e.dir, "resource"), true).State()
	if err != nil {
		e.fatalf("reading the resource: %v", err)
	}
	sh, err := NewResource(filepath.Join(e.dir, "shadow"), false).State()
	if err != nil {
		e.fatalf("reading the shadow counter: %v", err)
	}
	res.Report, res.Resource, res.Shadow, res.Checked = rep, st, sh, true
	t.Logf("phases: set up and workers ready %v, then a slot %v; workload %v, faults for %v, workers done %v later; check %v",
		tPrepared.Sub(started).Round(time.Millisecond), tReady.Sub(tPrepared).Round(time.Millisecond),
		e.sz.dur, tFaults.Sub(tReady).Round(time.Millisecond),
		tDone.Sub(tFaults).Round(time.Millisecond), time.Since(tDone).Round(time.Millisecond))
	t.Logf("%d faults, %d sections (%d killed, %d told lost), overlaps %d (excused %d), tokens bad %d, max at once %d, linearizable %s; resource: %d writes, %d lost updates, %d stale refused; without fencing %d lost updates",
		len(e.faults), rep.Sections, rep.Killed, rep.Told, rep.Overlaps, rep.Excused, rep.TokenViolations,
		rep.MaxConcurrent, rep.Linearizable, st.Writes, st.Lost, st.Refused, sh.Lost)

	if n := rep.Violations(); n != 0 {
		first := ""
		if len(rep.Problems) > 0 {
			first = ": " + rep.Problems[0]
		}
		e.fail(fmt.Sprintf("%d safety violations%s", n, first), strings.Join(rep.Problems, "\n"))
	}
	if t.Failed() || os.Getenv("DLOCK_FAULTS_KEEP_ALL") == "1" {
		if keep := os.Getenv("DLOCK_FAULTS_KEEP"); keep != "" {
			e.keep(keep, paths)
		}
	}
	if st.Lost != 0 {
		e.failf("%d lost updates", st.Lost)
	}
	revokes := fk.revokes != nil && fk.revokes(backend)
	res.Revokes = revokes
	if !revokes && sh.Lost != 0 {
		e.failf("%d updates lost without fencing though no fault could revoke a lock", sh.Lost)
	}
	if !revokes && st.Refused != 0 {
		e.failf("%d stale writes reached the store though no fault could revoke a lock", st.Refused)
	}
	if rep.Sections == 0 {
		e.failf("no critical section ran")
	}
	// The workload keeps running: sections were entered after the last fault.
	var last int64
	for _, f := range e.faults {
		last = max(last, f.End)
	}
	after := 0
	for _, s := range sections {
		if s.Enter > last {
			after++
		}
	}
	if after == 0 {
		e.failf("no section entered after the last fault healed")
	}
}

// keep copies the histories, faults, deaths and worker logs of a failed
// scenario into a directory below dir (DLOCK_FAULTS_KEEP).
func (e *env) keep(dir string, paths []string) {
	dst := filepath.Join(dir, strings.ReplaceAll(e.t.Name(), "/", "_"))
	_ = os.MkdirAll(dst, 0o755)
	e.mu.Lock()
	for _, p := range e.all {
		paths = append(paths, p.log)
	}
	fb, _ := json.MarshalIndent(map[string]any{"faults": e.faults, "deaths": e.deaths, "deadline": e.deadline}, "", " ")
	e.mu.Unlock()
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			_ = os.WriteFile(filepath.Join(dst, filepath.Base(p)), b, 0o644)
		}
	}
	_ = os.WriteFile(filepath.Join(dst, "faults.json"), fb, 0o644)
	e.t.Logf("history kept in %s", dst)
}

func (e *env) setupServers() {
	t := e.t
	private := e.fk.needs == "private"
	switch e.backend {
	case "fs":
	case "pg":
		var u string
		if private {
			s := privatePG(t)
			e.srvPG, u = s, s.url
		} else {
			u = dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
		}
		pu, err := url.Parse(u)
		if err != nil {
			e.fatalf("pg URL: %v", err)
		}
		e.pgURL, e.upstream = u, []string{pu.Host}
	case "valkey":
		if private {
			r := startRedis(t)
			e.srvRedis, e.upstream = []*redisServer{r}, []string{r.addr}
		} else {
			e.upstream = []string{dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")}
		}
	case "redlock":
		if private {
			for range 3 {
				r := startRedis(t)
				e.srvRedis = append(e.srvRedis, r)
				e.upstream = append(e.upstream, r.addr)
			}
		} else {
			e.upstream = splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES"))
		}
	case "cluster":
		e.upstream = splitAddrs(dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER"))
	case "sentinel", "sentinel-replicas":
		e.sentinel = testserver.StartSentinel(t, 2, sentinelDownAfter)
		e.upstream = e.sentinel.Sentinels
	}
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func (e *env) recordsPath(id int) string {
	return filepath.Join(e.dir, fmt.Sprintf("records-%d.jsonl", id))
}

func (e *env) readyPath(id int) string {
	return filepath.Join(e.dir, fmt.Sprintf("ready-%d", id))
}

func (e *env) startPath() string { return filepath.Join(e.dir, "start") }

// spawn starts a worker in slot. The worker connects, creates its ready
// file, then waits for the start file (written by start) that holds the
// workload's deadline; a worker spawned later finds it at once.
func (e *env) spawn(slot int) {
	e.mu.Lock()
	id := e.nextID
	e.nextID++
	e.mu.Unlock()
	cfg := workerConfig{Proc: id, Backend: e.backend, Dir: filepath.Join(e.dir, "locks"), Prefix: e.prefix,
		AppName: fmt.Sprintf("%s-%d", e.app, slot), Prim: e.prim, Limit: semCap, Name: e.name,
		Goroutines: e.sz.goroutines, ReadyFile: e.readyPath(id), StartFile: e.startPath(),
		LeaseMs: leaseMs, LossMs: lossMs, HoldMs: [2]int{2, 12}, Records: e.recordsPath(id),
		Resource: filepath.Join(e.dir, "resource"), Shadow: filepath.Join(e.dir, "shadow")}
	switch e.backend {
	case "pg":
		u, _ := url.Parse(e.pgURL)
		u.Host = e.proxies[slot][0].Listen
		cfg.Addrs = []string{u.String()}
	case "valkey", "redlock":
		for _, p := range e.proxies[slot] {
			cfg.Addrs = append(cfg.Addrs, p.Listen)
		}
	case "cluster":
		cfg.Addrs = e.upstream
	case "sentinel", "sentinel-replicas":
		// No proxies: the sentinels name the primary's own address.
		cfg.Addrs, cfg.LeaseMs, cfg.HoldMs, cfg.PauseMs = e.upstream, sentinelLeaseMs, sentinelHoldMs, sentinelPauseMs
		if e.backend == "sentinel-replicas" {
			cfg.Replicas = 2
		}
	}
	raw, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = childEnv(workerEnv + "=" + string(raw))
	logPath := filepath.Join(e.dir, fmt.Sprintf("worker-%d.log", id))
	logf, err := os.Create(logPath)
	if err != nil {
		e.fatalf("worker log: %v", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		e.fatalf("starting worker %d: %v", id, err)
	}
	p := &proc{slot: slot, id: id, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.reap = Now()
		logf.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs[slot] = p
	e.all = append(e.all, p)
	e.mu.Unlock()
}

// waitReady waits until every worker is ready (connected to its
// servers). A worker that exits or is not ready within readyTimeout fails
// the scenario, with its log.
func (e *env) waitReady() {
	e.mu.Lock()
	procs := append([]*proc(nil), e.procs...)
	e.mu.Unlock()
	end := time.Now().Add(readyTimeout)
	for _, p := range procs {
		for {
			if _, err := os.Stat(e.readyPath(p.id)); err == nil {
				break
			}
			select {
			case <-p.done:
				e.workerFailed(p, fmt.Sprintf("worker %d exited (%v) before it was ready", p.id, p.cmd.ProcessState))
				e.t.FailNow()
			case <-time.After(5 * time.Millisecond):
			}
			if time.Now().After(end) {
				e.workerFailed(p, fmt.Sprintf("worker %d was not ready (connected to %v) within %v", p.id, e.upstream, readyTimeout))
				e.t.FailNow()
			}
		}
	}
}

// start sets the deadline and lets the workers begin.
func (e *env) start() {
	e.deadline = Now() + int64(e.sz.dur)
	if err := e.writeDeadline(e.deadline); err != nil {
		e.fatalf("start file: %v", err)
	}
}

// writeDeadline (re)writes the start file, which holds the deadline;
// workers read it when they start and every 50 ms after.
func (e *env) writeDeadline(d int64) error {
	tmp := e.startPath() + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(d, 10)), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, e.startPath())
}

// inject runs a fault and keeps the workload's deadline at least quiet
// ahead of it, while it runs and after it ends: a fault may take longer
// than planned (a server restart on a loaded machine can take seconds),
// and the workload must go on after every fault.
func (e *env) inject(fk faultKind, target *proc, quiet time.Duration) Fault {
	stop, extended := make(chan struct{}), make(chan int64)
	go func(d int64) {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				extended <- d
				return
			case <-t.C:
			}
			if want := Now() + int64(quiet); want > d && e.writeDeadline(want) == nil {
				d = want
			}
		}
	}(e.deadline)
	f := fk.inject(e, target)
	close(stop)
	e.deadline = <-extended
	if want := f.End + int64(quiet); want > e.deadline {
		if err := e.writeDeadline(want); err != nil {
			e.failf("start file: %v", err)
		} else {
			e.deadline = want
		}
	}
	return f
}

// workerFailed records a worker error: its reason with the last line of
// its log for the report, and the log's tail in the test log.
func (e *env) workerFailed(p *proc, why string) {
	e.t.Helper()
	tail := logTail(p.log, 4096)
	lastLine := tail
	if i := strings.LastIndex(strings.TrimRight(tail, "\n"), "\n"); i >= 0 {
		lastLine = tail[i+1:]
	}
	lastLine = strings.TrimSpace(lastLine)
	e.mu.Lock()
	e.workerErrors++
	e.mu.Unlock()
	short := why
	if lastLine != "" {
		short += ": " + lastLine
	}
	e.fail(short, "worker log tail ("+p.log+"):\n"+tail)
}

// logTail returns the last n bytes of the file at path.
func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

// waitFirstSection waits until some worker entered a critical section (so
// that the first fault can hit a holder), at most d.
func (e *env) waitFirstSection(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		e.mu.Lock()
		procs := append([]*proc(nil), e.procs...)
		e.mu.Unlock()
		for _, p := range procs {
			if st, err := os.Stat(e.recordsPath(p.id)); err == nil && st.Size() > 0 {
				return
			}
		}
	}
}

// pickHolder returns a worker that is inside a critical section, looking
// for one for up to half a second, else any worker.
func (e *env) pickHolder() *proc {
	e.mu.Lock()
	procs := append([]*proc(nil), e.procs...)
	e.mu.Unlock()
	var paths []string
	for _, p := range procs {
		paths = append(paths, e.recordsPath(p.id))
	}
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(3 * time.Millisecond) {
		ss, _ := ReadRecords(paths...)
		var holders []*proc
		for _, s := range ss {
			if !s.Done {
				for _, p := range procs {
					if p.id == s.Proc {
						holders = append(holders, p)
					}
				}
			}
		}
		if len(holders) > 0 {
			return holders[e.rng.IntN(len(holders))]
		}
	}
	return procs[e.rng.IntN(len(procs))]
}

// waitWorkers heals everything and waits for the workers to finish. A
// worker that exits with an error, or does not finish, is a worker error.
func (e *env) waitWorkers() {
	for _, ps := range e.proxies {
		for _, p := range ps {
			p.Toxics.ResetToxics(context.Background())
			if !p.Enabled {
				_ = p.Start()
			}
		}
	}
	e.mu.Lock()
	procs := append([]*proc(nil), e.all...)
	e.mu.Unlock()
	for _, p := range procs {
		if p.killed {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		select {
		case <-p.done:
		case <-time.After(time.Duration(e.deadline-Now()) + 30*time.Second):
			kill := Now()
			_ = p.cmd.Process.Kill()
			<-p.done
			e.mu.Lock()
			p.killed = true
			e.deaths = append(e.deaths, Death{Proc: p.id, Kill: kill, Reap: p.reap})
			e.mu.Unlock()
			e.workerFailed(p, fmt.Sprintf("worker %d did not finish 30s after the deadline; killed", p.id))
			continue
		}
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			e.workerFailed(p, fmt.Sprintf("worker %d exited %d", p.id, code))
		}
	}
}

// killAll kills the workers still running (after a failure).
func (e *env) killAll() {
	e.mu.Lock()
	procs := append([]*proc(nil), e.all...)
	e.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// ---------------------------------------------------------------- faults

func (e *env) slots(slot int) []*toxiproxy.Proxy {
	if slot >= 0 {
		return e.proxies[slot]
	}
	var all []*toxiproxy.Proxy
	for _, ps := range e.proxies {
		all = append(all, ps...)
	}
	return all
}

// toxic adds a toxic of typ with attrs to both directions of the proxies of
// slot (-1: all) for d.
func (e *env) toxic(slot int, typ, attrs string, d time.Duration) Fault {
	f := Fault{Kind: typ, Proc: e.procID(slot), Start: Now()}
	for _, p := range e.slots(slot) {
		for _, stream := range []string{"upstream", "downstream"} {
			js := fmt.Sprintf(`{"name":"%s_%s","type":"%s","stream":"%s","toxicity":1,"attributes":{%s}}`, typ, stream, typ, stream, attrs)
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				e.failf("adding a %s toxic: %v", typ, err)
			}
		}
	}
	time.Sleep(d)
	for _, p := range e.slots(slot) {
		for _, stream := range []string{"upstream", "downstream"} {
			_ = p.Toxics.RemoveToxic(context.Background(), typ+"_"+stream)
		}
	}
	f.End = Now()
	return f
}

func (e *env) procID(slot int) int {
	if slot < 0 {
		return -1
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.procs[slot].id
}

// partition stops the proxies of slot (every connection through them is
// closed, new ones are refused) for d, then starts them again.
func (e *env) partition(slot int, d time.Duration) Fault {
	f := Fault{Kind: "partition", Proc: e.procID(slot), Start: Now()}
	for _, p := range e.slots(slot) {
		p.Stop()
	}
	time.Sleep(d)
	for _, p := range e.slots(slot) {
		if err := p.Start(); err != nil {
			e.failf("restarting a proxy after a partition: %v", err)
		}
	}
	f.End = Now()
	return f
}

// pause stops a holder with SIGSTOP past its lease (on a lease backend,
// long enough for another worker to take the expired lock), then resumes
// it. The target is stopped first and kept stopped only if it is inside a
// critical section (else it is resumed at once and another is tried, for
// up to a second), so that the pause hits a holder.
func (e *env) pause(p *proc) Fault {
	for end := time.Now().Add(time.Second); time.Now().Before(end); p = e.pickHolder() {
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		if e.holding(p) {
			break
		}
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		time.Sleep(time.Duration(1+e.rng.IntN(5)) * time.Millisecond)
	}
	_ = p.cmd.Process.Signal(syscall.SIGSTOP)
	f := Fault{Kind: "pause", Proc: p.id, Start: Now()}
	if lease(e.backend) {
		// The lease was extended at the latest when the holder stopped: the
		// server frees it at the latest a lease later.
		f.Frees = f.Start + int64(leaseMs*time.Millisecond)
	}
	time.Sleep(e.outage() + time.Duration(e.rng.IntN(200))*time.Millisecond)
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	f.End = Now()
	return f
}

// holding says whether p has a critical section open in its history.
func (e *env) holding(p *proc) bool {
	ss, _ := ReadRecords(e.recordsPath(p.id))
	for _, s := range ss {
		if !s.Done {
			return true
		}
	}
	return false
}

// kill kills the worker with SIGKILL and starts another in its slot.
func (e *env) kill(p *proc) Fault {
	f := Fault{Kind: "kill", Proc: p.id, Start: Now()}
	_ = p.cmd.Process.Kill()
	<-p.done
	e.mu.Lock()
	p.killed = true
	e.deaths = append(e.deaths, Death{Proc: p.id, Kill: f.Start, Reap: p.reap})
	e.mu.Unlock()
	f.End = p.reap
	if Now() < e.deadline-int64(500*time.Millisecond) {
		e.spawn(p.slot)
	}
	return f
}

// restart crashes the (private) server and starts it again.
func (e *env) restart() Fault {
	f := Fault{Kind: "restart", Proc: -1, Start: Now()}
	switch {
	case e.srvPG != nil:
		if err := e.srvPG.crash(); err != nil {
			e.failf("crashing the private PostgreSQL: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
		if err := e.srvPG.start(); err != nil {
			e.fatalf("starting the private PostgreSQL again: %v", err)
		}
	default:
		for _, r := range e.srvRedis {
			r.crash()
		}
		time.Sleep(200 * time.Millisecond)
		for _, r := range e.srvRedis {
			if err := r.start(); err != nil {
				e.fatalf("starting the private redis-server again: %v", err)
			}
		}
	}
	f.End = Now()
	time.Sleep(500 * time.Millisecond)
	return f
}

// failover kills the Sentinel group's primary (SIGKILL) while its replicas
// lag behind it (frozen, with the primary's output buffers full: see
// testserver.Sentinel.LagReplicas) for half a second of the workload,
// waits for the sentinels to promote a replica and brings the old primary
// back as a replica of the new one.
func (e *env) failover() Fault {
	f := Fault{Kind: "failover", Proc: -1, Start: Now()}
	g := e.sentinel
	resume := g.LagReplicas(e.t, g.Primary(e.t))
	time.Sleep(500 * time.Millisecond)
	_, took := g.Failover(e.t, 60*time.Second, resume)
	f.End = Now()
	e.t.Logf("failover: promoted %v after the kill, over in %v", took.Round(time.Millisecond), time.Duration(f.End-f.Start).Round(time.Millisecond))
	// The next failover only once the queue places that waiters lost
	// with this one have expired (a lease after their last renewal): the
	// workload goes on between failovers.
	time.Sleep(sentinelLeaseMs * time.Millisecond)
	return f
}

// terminate ends, with pg_terminate_backend, every session of the scenario
// that holds an advisory lock.
func (e *env) terminate() Fault {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		e.fatalf("terminate: connecting to PostgreSQL: %v", err)
	}
	defer c.Close(context.Background())
	// Connected first, so that the fault starts at the termination (it is
	// where the exposure windows are measured from): at the moment the
	// server signalled the first backend (clock_timestamp() just before
	// each pg_terminate_backend, the server's CLOCK_REALTIME converted to
	// CLOCK_MONOTONIC), which no lock can be freed before. The moment the
	// query was sent would add its trip and the scan of pg_stat_activity.
	offset := time.Now().UnixNano() - Now()
	f := Fault{Kind: "terminate", Proc: -1, Start: Now()}
	rows, err := c.Query(ctx, `SELECT clock_timestamp(), pg_terminate_backend(a.pid) FROM pg_stat_activity a
		WHERE a.application_name LIKE $1 AND EXISTS (SELECT 1 FROM pg_locks l
		WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)`, e.app+"-%")
	var first int64
	if err == nil {
		for rows.Next() {
			var at time.Time
			var ok bool
			if err = rows.Scan(&at, &ok); err != nil {
				break
			}
			if k := at.UnixNano() - offset; first == 0 || k < first {
				first = k
			}
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		e.failf("pg_terminate_backend: %v", err)
	}
	f.End = Now()
	if first > f.Start && first < f.End { // else the clocks disagree: keep the bound from the client
		f.Start = first
	}
	return f
}

func (e *env) adminClients() []valkeygo.Client {
	var cs []valkeygo.Client
	for _, a := range e.upstream {
		c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{a}, DisableCache: true})
		if err != nil {
			e.fatalf("admin client for %s: %v", a, err)
		}
		cs = append(cs, c)
	}
	return cs
}

// clientKill kills, with CLIENT KILL ID, the connections of the worker.
func (e *env) clientKill(p *proc) Fault {
	f := Fault{Kind: "clientkill", Proc: p.id, Start: Now()}
	name := fmt.Sprintf("%s-%d", e.app, p.slot)
	ctx := context.Background()
	for _, c := range e.adminClients() {
		list, err := c.Do(ctx, c.B().ClientList().Build()).ToString()
		if err != nil {
			e.failf("CLIENT LIST: %v", err)
		}
		for _, line := range strings.Split(list, "\n") {
			if !strings.Contains(line, " name="+name+" ") {
				continue
			}
			for _, fld := range strings.Fields(line) {
				if id, ok := strings.CutPrefix(fld, "id="); ok {
					_ = c.Do(ctx, c.B().Arbitrary("CLIENT", "KILL", "ID", id).Build()).Error()
				}
			}
		}
		c.Close()
	}
	f.End = Now()
	return f
}

// keyDel deletes the lock keys of the scenario's name (not its fencing
// counters) on every node.
func (e *env) keyDel() Fault {
	ctx := context.Background()
	clients := e.adminClients() // connected first: the fault starts at the deletion
	f := Fault{Kind: "keydel", Proc: -1, Start: Now()}
	for _, c := range clients {
		keys, err := c.Do(ctx, c.B().Keys().Pattern(e.prefix+"*").Build()).AsStrSlice()
		if err != nil {
			e.failf("KEYS: %v", err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, ":f") || strings.HasSuffix(k, ":q") {
				continue
			}
			_ = c.Do(ctx, c.B().Del().Key(k).Build()).Error()
		}
		c.Close()
	}
	f.End = Now()
	return f
}

// fileRemove removes the lock files (not the fencing counter files) of the
// fs directory.
func (e *env) fileRemove() Fault {
	f := Fault{Kind: "fileremove", Proc: -1, Start: Now()}
	dir := filepath.Join(e.dir, "locks")
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		n := ent.Name()
		if strings.HasPrefix(n, "m-") || strings.HasPrefix(n, "r-") || strings.HasPrefix(n, "s-") {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	f.End = Now()
	return f
}
