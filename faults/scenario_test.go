package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
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
)

// Scenario sizes. The short mode (go test -short, or DLOCK_FAULTS_SHORT=1)
// runs every scenario briefly; the long mode produces the published
// numbers (DLOCK_FAULTS_SCALE multiplies the duration, default 1).
type sizing struct {
	dur        time.Duration // workload duration
	procs      int           // worker processes
	goroutines int           // per process
}

func size() sizing {
	if testing.Short() || os.Getenv("DLOCK_FAULTS_SHORT") == "1" {
		return sizing{dur: 4 * time.Second, procs: 3, goroutines: 2}
	}
	scale := 1.0
	if s := os.Getenv("DLOCK_FAULTS_SCALE"); s != "" {
		fmt.Sscan(s, &scale)
	}
	return sizing{dur: time.Duration(scale * float64(20*time.Second)), procs: 4, goroutines: 2}
}

const (
	leaseMs = 600 // valkey lease in the scenarios
	lossMs  = 400 // pg and fs loss interval
	semCap  = 2   // semaphore limit
)

// faultKind describes one fault: how to inject it and whether it can revoke
// a lock before its holder is told (per backend).
type faultKind struct {
	name    string
	revokes func(backend string) bool
	inject  func(e *env, target *proc) Fault
	needs   string // "private" when the scenario needs private servers
}

func lease(b string) bool { return b == "valkey" || b == "redlock" || b == "cluster" }
func never(string) bool   { return false }
func always(string) bool  { return true }

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
}

// Result is one scenario's line in the report.
type Result struct {
	Backend, Prim, Fault string
	Faults               int // faults injected
	Report
	Resource ResourceState
	Seconds  float64
	Known    string // the known issue that explains the violations, if any
	Failed   bool
}

var results struct {
	mu   sync.Mutex
	rows []*Result
}

// knownIssue names the known issue that explains every violation in rep,
// or returns "".
func knownIssue(backend, fault string, rep Report) string {
	if rep.Violations() == 0 {
		return ""
	}
	switch {
	case (backend == "valkey" || backend == "redlock") && fault == "restart" && rep.Untold == 0 && rep.Torn == 0 && rep.OverLimit == 0:
		// A server restarted without persistence forgets its fencing
		// counters: tokens start again from 1.
		return "valkey-restart-forgets-counters"
	}
	return ""
}

func TestFaults(t *testing.T) {
	for _, m := range matrix {
		t.Run(m.backend, func(t *testing.T) {
			t.Parallel()
			for _, prim := range m.prims {
				for _, f := range m.faults {
					t.Run(prim+"/"+f, func(t *testing.T) {
						runScenario(t, m.backend, prim, allFaults[f])
					})
				}
			}
		})
	}
	t.Cleanup(writeResults)
}

func writeResults() {
	path := os.Getenv("DLOCK_FAULTS_RESULTS")
	if path == "" {
		return
	}
	results.mu.Lock()
	defer results.mu.Unlock()
	sort.Slice(results.rows, func(i, j int) bool {
		a, b := results.rows[i], results.rows[j]
		return a.Backend+a.Prim+a.Fault < b.Backend+b.Prim+b.Fault
	})
	b, _ := json.MarshalIndent(map[string]any{"rows": results.rows, "margin": marginLine}, "", " ")
	_ = os.WriteFile(path, b, 0o644)
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
	deadline int64
	sz       sizing
	srvRedis []*redisServer
	srvPG    *pgServer

	tp      *toxiproxy.ApiServer
	proxies [][]*toxiproxy.Proxy // per slot, per upstream

	mu     sync.Mutex
	procs  []*proc // per slot: the current worker
	nextID int
	faults []Fault
	deaths []Death
	rng    *rand.Rand
}

type proc struct {
	slot, id int
	cmd      *exec.Cmd
	done     chan struct{}
	reap     int64
}

func (e *env) outage() time.Duration {
	if lease(e.backend) {
		return 2 * leaseMs * time.Millisecond
	}
	return 3 * lossMs * time.Millisecond
}

func runScenario(t *testing.T, backend, prim string, fk faultKind) {
	started := time.Now()
	sz := size()
	e := &env{t: t, backend: backend, prim: prim, fk: fk, sz: sz, dir: t.TempDir(),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))}
	tag := fmt.Sprintf("%s-%s-%s-%d", backend, prim, fk.name, time.Now().UnixNano())
	e.name, e.prefix, e.app = "faults-"+tag, "dlockfaults:"+tag+":", "dlockfaults-"+tag
	e.setupServers()
	proxied := backend == "pg" || backend == "valkey" || backend == "redlock"
	if proxied {
		e.tp = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	}
	for slot := range sz.procs {
		var ps []*toxiproxy.Proxy
		if proxied {
			for i, up := range e.upstream {
				p := toxiproxy.NewProxy(e.tp, fmt.Sprintf("s%d-%d", slot, i), "127.0.0.1:0", up)
				if err := p.Start(); err != nil {
					t.Fatalf("toxiproxy: %v", err)
				}
				ps = append(ps, p)
			}
		}
		e.proxies = append(e.proxies, ps)
	}
	defer func() {
		for _, ps := range e.proxies {
			for _, p := range ps {
				p.Stop()
			}
		}
	}()

	e.deadline = Now() + int64(sz.dur)
	e.procs = make([]*proc, sz.procs)
	for slot := range sz.procs {
		e.spawn(slot)
	}
	// Faults: one after another, with gaps, until a quiet tail.
	quiet := max(800*time.Millisecond, sz.dur/5)
	longest := max(e.outage(), 2*leaseMs*time.Millisecond+200*time.Millisecond, time.Second)
	if fk.inject != nil {
		time.Sleep(300 * time.Millisecond)
		for Now() < e.deadline-int64(quiet+longest) {
			target := e.pickHolder()
			f := fk.inject(e, target)
			f.Revokes = fk.revokes(backend)
			e.mu.Lock()
			e.faults = append(e.faults, f)
			e.mu.Unlock()
			time.Sleep(time.Duration(200+e.rng.IntN(300)) * time.Millisecond)
		}
	}
	e.waitWorkers()

	var paths []string
	for id := range e.nextID {
		paths = append(paths, e.recordsPath(id))
	}
	sections, err := ReadRecords(paths...)
	if err != nil {
		t.Fatal(err)
	}
	limit := 1
	if prim == "sem" {
		limit = semCap
	}
	rep := Check(sections, e.faults, e.deaths, Spec{Limit: limit})
	st, err := NewResource(filepath.Join(e.dir, "resource"), true).State()
	if err != nil {
		t.Fatal(err)
	}
	res := &Result{Backend: backend, Prim: prim, Fault: fk.name, Faults: len(e.faults), Report: rep,
		Resource: st, Seconds: time.Since(started).Seconds()}
	results.mu.Lock()
	results.rows = append(results.rows, res)
	results.mu.Unlock()
	defer func() { res.Failed = t.Failed() }()
	t.Logf("%d faults, %d sections (%d killed, %d told lost), overlaps %d (excused %d), tokens bad %d, max at once %d, linearizable %s; resource: %d writes, %d lost updates, %d stale refused",
		len(e.faults), rep.Sections, rep.Killed, rep.Told, rep.Overlaps, rep.Excused, rep.TokenViolations,
		rep.MaxConcurrent, rep.Linearizable, st.Writes, st.Lost, st.Refused)

	known := knownIssue(backend, fk.name, rep)
	res.Known = known
	switch {
	case rep.Violations() != 0 && known != "" && os.Getenv("DLOCK_FAULTS_STRICT") != "1":
		t.Logf("KNOWN ISSUE (%s), not failing (DLOCK_FAULTS_STRICT=1 fails it): %+v", known, rep.Problems)
	case rep.Violations() != 0:
		t.Errorf("safety violations: %+v", rep.Problems)
	}
	if t.Failed() || rep.Violations() != 0 {
		if keep := os.Getenv("DLOCK_FAULTS_KEEP"); keep != "" {
			dst := filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
			_ = os.MkdirAll(dst, 0o755)
			for _, p := range paths {
				if b, err := os.ReadFile(p); err == nil {
					_ = os.WriteFile(filepath.Join(dst, filepath.Base(p)), b, 0o644)
				}
			}
			fb, _ := json.MarshalIndent(map[string]any{"faults": e.faults, "deaths": e.deaths}, "", " ")
			_ = os.WriteFile(filepath.Join(dst, "faults.json"), fb, 0o644)
			t.Logf("history kept in %s", dst)
		}
	}
	if st.Lost != 0 {
		t.Errorf("%d lost updates", st.Lost)
	}
	revokes := fk.revokes != nil && fk.revokes(backend)
	if !revokes && st.Refused != 0 {
		t.Errorf("%d stale writes reached the store though no fault could revoke a lock", st.Refused)
	}
	if rep.Sections == 0 {
		t.Errorf("no critical section ran")
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
		t.Errorf("no section entered after the last fault healed")
	}
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
			t.Fatal(err)
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

// spawn starts a worker in slot (e.mu need not be held by the caller).
func (e *env) spawn(slot int) {
	e.mu.Lock()
	id := e.nextID
	e.nextID++
	e.mu.Unlock()
	cfg := workerConfig{Proc: id, Backend: e.backend, Dir: filepath.Join(e.dir, "locks"), Prefix: e.prefix,
		AppName: fmt.Sprintf("%s-%d", e.app, slot), Prim: e.prim, Limit: semCap, Name: e.name,
		Goroutines: e.sz.goroutines, Deadline: e.deadline, LeaseMs: leaseMs, LossMs: lossMs,
		HoldMs: [2]int{2, 12}, Records: e.recordsPath(id), Resource: filepath.Join(e.dir, "resource")}
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
	}
	raw, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), workerEnv+"="+string(raw))
	logf, err := os.Create(filepath.Join(e.dir, fmt.Sprintf("worker-%d.log", id)))
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &proc{slot: slot, id: id, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		p.reap = Now()
		logf.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs[slot] = p
	e.mu.Unlock()
}

// pickHolder returns a worker that is inside a critical section, if one
// is, else any worker.
func (e *env) pickHolder() *proc {
	e.mu.Lock()
	procs := append([]*proc(nil), e.procs...)
	e.mu.Unlock()
	var paths []string
	for _, p := range procs {
		paths = append(paths, e.recordsPath(p.id))
	}
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
	return procs[e.rng.IntN(len(procs))]
}

// waitWorkers heals everything and waits for the workers to finish.
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
	procs := append([]*proc(nil), e.procs...)
	e.mu.Unlock()
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		select {
		case <-p.done:
		case <-time.After(time.Until(time.Now().Add(time.Duration(e.deadline-Now()))) + 30*time.Second):
			e.t.Errorf("worker %d did not finish; killing it", p.id)
			kill := Now()
			_ = p.cmd.Process.Kill()
			<-p.done
			e.deaths = append(e.deaths, Death{Proc: p.id, Kill: kill, Reap: p.reap})
			continue
		}
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			log, _ := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("worker-%d.log", p.id)))
			e.t.Errorf("worker %d exited %d: %s", p.id, code, log)
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
				e.t.Errorf("adding toxic: %v", err)
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
			e.t.Errorf("restarting proxy: %v", err)
		}
	}
	f.End = Now()
	return f
}

// pause stops the worker with SIGSTOP past its lease, then resumes it.
func (e *env) pause(p *proc) Fault {
	f := Fault{Kind: "pause", Proc: p.id, Start: Now()}
	_ = p.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(2*leaseMs*time.Millisecond + time.Duration(e.rng.IntN(200))*time.Millisecond)
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	f.End = Now()
	return f
}

// kill kills the worker with SIGKILL and starts another in its slot.
func (e *env) kill(p *proc) Fault {
	f := Fault{Kind: "kill", Proc: p.id, Start: Now()}
	_ = p.cmd.Process.Kill()
	<-p.done
	e.mu.Lock()
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
			e.t.Error(err)
		}
		time.Sleep(200 * time.Millisecond)
		if err := e.srvPG.start(); err != nil {
			e.t.Fatal(err)
		}
	default:
		for _, r := range e.srvRedis {
			r.crash()
		}
		time.Sleep(200 * time.Millisecond)
		for _, r := range e.srvRedis {
			if err := r.start(); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	f.End = Now()
	time.Sleep(500 * time.Millisecond)
	return f
}

// terminate ends, with pg_terminate_backend, every session of the scenario
// that holds an advisory lock.
func (e *env) terminate() Fault {
	f := Fault{Kind: "terminate", Proc: -1, Start: Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, e.pgURL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, `SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
		WHERE a.application_name LIKE $1 AND EXISTS (SELECT 1 FROM pg_locks l
		WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)`, e.app+"-%")
	if err != nil {
		e.t.Errorf("pg_terminate_backend: %v", err)
	}
	f.End = Now()
	return f
}

func (e *env) adminClients() []valkeygo.Client {
	var cs []valkeygo.Client
	for _, a := range e.upstream {
		c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{a}, DisableCache: true})
		if err != nil {
			e.t.Fatal(err)
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
			e.t.Errorf("CLIENT LIST: %v", err)
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
	f := Fault{Kind: "keydel", Proc: -1, Start: Now()}
	ctx := context.Background()
	for _, c := range e.adminClients() {
		keys, err := c.Do(ctx, c.B().Keys().Pattern(e.prefix+"*").Build()).AsStrSlice()
		if err != nil {
			e.t.Errorf("KEYS: %v", err)
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

var _ = net.Dial
