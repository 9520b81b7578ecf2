package faults

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/fs"
	"github.com/dlock-go/dlock/internal/testserver"
	"github.com/dlock-go/dlock/pg"
	"github.com/dlock-go/dlock/valkey"
)

// workerEnv holds a worker's JSON configuration: the test binary started
// with it set runs as a worker process instead of running tests.
const workerEnv = "DLOCK_FAULTS_WORKER"

func TestMain(m *testing.M) {
	if raw := os.Getenv(workerEnv); raw != "" {
		os.Exit(workerMain(raw))
	}
	if os.Getenv(rmwEnv) == "1" {
		os.Exit(rmwMain(os.Args[1:]))
	}
	// The scenarios' concurrency is DLOCK_FAULTS_PARALLEL's (TestFaults,
	// TestCLI), not go test's -parallel, which defaults to the number of
	// CPUs and would keep a scenario from preparing while others run on a
	// two-core machine. An explicit -parallel still caps it.
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", "64")
	}
	code := m.Run()
	stopPrivateServers()
	os.Exit(code)
}

// childEnv is the environment of a process that re-executes this test
// binary (a worker, or the CLI rows' read-modify-write helper): ours plus
// extra, with GORACE's atexit_sleep_ms=0 unless it is set. A binary built
// with -race otherwise sleeps a second when it exits (so that goroutines
// still running can report their races): every worker's exit and every
// helper call of a CLI section would take a second longer. Workers wait
// for their goroutines before they exit, and the helper runs none, so no
// race report is cut short.
func childEnv(extra ...string) []string {
	env := os.Environ()
	gorace := os.Getenv("GORACE")
	if !strings.Contains(gorace, "atexit_sleep_ms") {
		gorace = strings.TrimSpace(gorace + " atexit_sleep_ms=0")
		env = append(env, "GORACE="+gorace) // the last one wins
	}
	return append(env, extra...)
}

// workerConfig configures one worker process.
type workerConfig struct {
	Proc       int      `json:"proc"`
	Backend    string   `json:"backend"` // fs, pg, valkey, cluster, redlock
	Addrs      []string `json:"addrs"`   // pg: one URL; valkey: addresses (through proxies)
	Dir        string   `json:"dir"`     // fs
	Prefix     string   `json:"prefix"`  // valkey key prefix
	AppName    string   `json:"appName"` // pg application_name, valkey client name
	Prim       string   `json:"prim"`    // mutex, rw, sem
	Limit      int      `json:"limit"`
	Name       string   `json:"name"`
	Goroutines int      `json:"goroutines"`
	ReadyFile  string   `json:"readyFile"` // created once connected
	StartFile  string   `json:"startFile"` // appears when all are ready; holds the deadline
	LeaseMs    int      `json:"leaseMs"`   // valkey lease
	LossMs     int      `json:"lossMs"`    // pg/fs loss interval
	HoldMs     [2]int   `json:"holdMs"`    // the pause inside a section, min and max
	PauseMs    [2]int   `json:"pauseMs"`   // a goroutine's pause between its sections, min and max (0: a few ms)
	Records    string   `json:"records"`
	Resource   string   `json:"resource"` // the fenced counter
	Shadow     string   `json:"shadow"`   // the shadow counter, which enforces nothing
	Replicas   int      `json:"replicas"` // sentinel: valkey.WithReplicas(Replicas, ...) if > 0
}

func workerMain(raw string) int {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "worker: bad config:", err)
		return 2
	}
	if err := runWorker(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "worker %d: %v\n", cfg.Proc, err)
		return 1
	}
	return 0
}

func runWorker(cfg workerConfig) error {
	rec, err := NewRecorder(cfg.Records)
	if err != nil {
		return err
	}
	defer rec.Close()
	res := NewStore(cfg.Resource, cfg.Shadow)
	ctx := context.Background()
	lease := time.Duration(cfg.LeaseMs) * time.Millisecond
	loss := time.Duration(cfg.LossMs) * time.Millisecond
	switch cfg.Backend {
	case "fs":
		b, err := fs.New(cfg.Dir, fs.WithLossInterval(loss))
		if err != nil {
			return err
		}
		defer b.Close()
		return work[*fs.Lease](cfg, b, rec, res)
	case "pg":
		pc, err := pgxpool.ParseConfig(cfg.Addrs[0])
		if err != nil {
			return err
		}
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.AppName
		pc.ConnConfig.ConnectTimeout = 2 * time.Second
		pool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			return err
		}
		defer pool.Close()
		// A worker may start during a partition: retry until it heals.
		if err := retry(10*time.Second, func() error {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			return pool.Ping(pctx)
		}); err != nil {
			return fmt.Errorf("connecting to PostgreSQL: %w", err)
		}
		b, err := pg.New(pool, pg.WithFencing(""), pg.WithLossInterval(loss), pg.WithOpTimeout(2*time.Second))
		if err != nil {
			return err
		}
		defer b.Close()
		return work[*pg.Lease](cfg, b, rec, res)
	case "valkey", "cluster", "redlock", "sentinel", "sentinel-replicas":
		opts := []valkey.Option{valkey.WithKeyPrefix(cfg.Prefix), valkey.WithLease(lease)}
		if cfg.Replicas > 0 {
			opts = append(opts, valkey.WithReplicas(cfg.Replicas, 500*time.Millisecond))
		}
		newClient := func(addrs []string) (c valkeygo.Client, err error) {
			// A worker may start during a partition: retry until it heals.
			err = retry(10*time.Second, func() (err error) {
				o := valkeygo.ClientOption{
					InitAddress: addrs, DisableCache: true, ClientName: cfg.AppName,
					ConnWriteTimeout: lease,
				}
				if strings.HasPrefix(cfg.Backend, "sentinel") {
					o.Sentinel = valkeygo.SentinelOption{MasterSet: testserver.SentinelMaster}
				}
				c, err = valkeygo.NewClient(o)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("connecting to %v: %w", addrs, err)
			}
			return c, nil
		}
		if cfg.Backend == "redlock" {
			var clients []valkeygo.Client
			for _, a := range cfg.Addrs {
				c, err := newClient([]string{a})
				if err != nil {
					return err
				}
				defer c.Close()
				clients = append(clients, c)
			}
			b, err := valkey.NewRedLock(clients, opts...)
			if err != nil {
				return err
			}
			defer b.Close()
			return work[*valkey.Lease](cfg, b, rec, res)
		}
		c, err := newClient(cfg.Addrs)
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := valkey.New(c, opts...)
		if err != nil {
			return err
		}
		defer b.Close()
		return work[*valkey.Lease](cfg, b, rec, res)
	}
	return fmt.Errorf("unknown backend %q", cfg.Backend)
}

// retry calls f until it succeeds or d has passed; it returns f's last error.
func retry(d time.Duration, f func() error) error {
	for end := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		err := f()
		if err == nil || time.Now().After(end) {
			return err
		}
	}
}

// waitStart tells the harness the worker is connected (its ready file) and
// waits for the start file, which holds the workload's deadline.
func waitStart(cfg workerConfig) (int64, error) {
	if err := os.WriteFile(cfg.ReadyFile, nil, 0o600); err != nil {
		return 0, err
	}
	for end := time.Now().Add(2 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(cfg.StartFile)
		switch {
		case err == nil:
			d, err := strconv.ParseInt(string(b), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("start file: %w", err)
			}
			return d, nil
		case !errors.Is(err, os.ErrNotExist):
			return 0, err
		case time.Now().After(end):
			return 0, fmt.Errorf("no start signal (%s) within 2 minutes", cfg.StartFile)
		}
	}
}

// work runs cfg.Goroutines contending goroutines until the deadline.
func work[L backend.Lease](cfg workerConfig, b any, rec *Recorder, res Store) error {
	opt := dlock.WithReleaseTimeout(3 * time.Second)
	var excl, shared, ticket *dlock.Guard[L]
	switch cfg.Prim {
	case "mutex":
		excl = dlock.NewMutex(b.(backend.Locker[L]), opt)
	case "rw":
		rw := dlock.NewRWMutex(b.(backend.RWLocker[L]), opt)
		excl, shared = rw.Write(), rw.Read()
	case "sem":
		ticket = dlock.NewSemaphore(b.(backend.Semaphore[L]), cfg.Limit, opt)
	default:
		return fmt.Errorf("unknown primitive %q", cfg.Prim)
	}
	first, err := waitStart(cfg)
	if err != nil {
		return err
	}
	// The harness may push the deadline back while a fault runs (see
	// env.inject): re-read it every 50 ms until the workload ends.
	var deadline atomic.Int64
	deadline.Store(first)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if b, err := os.ReadFile(cfg.StartFile); err == nil {
				if d, err := strconv.ParseInt(string(b), 10, 64); err == nil && d > deadline.Load() {
					deadline.Store(d)
				}
			}
		}
	}()
	defer func() {
		close(stop)
		<-stopped
	}()
	var (
		wg       sync.WaitGroup
		firstErr atomic.Value
	)
	for g := range cfg.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cfg.Proc), uint64(g)))
			for seq := 1; Now() < deadline.Load(); seq++ {
				kind, guard := KindExclusive, excl
				switch {
				case ticket != nil:
					kind, guard = KindTicket, ticket
				case shared != nil && rng.IntN(3) != 0:
					kind, guard = KindShared, shared
				}
				if err := section(cfg, rec, res, rng, guard, kind, g, seq); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if p := cfg.PauseMs; p[1] > 0 {
					time.Sleep(time.Duration(p[0]+rng.IntN(p[1]-p[0]+1)) * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// section runs one critical section and records it. Only a failure to
// record is returned: lock errors are part of the workload.
func section[L backend.Lease](cfg workerConfig, rec *Recorder, res Store, rng *rand.Rand, g *dlock.Guard[L], kind string, gid, seq int) error {
	call := Now()
	actx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	lk, err := g.Acquire(actx, cfg.Name)
	cancel()
	if err != nil {
		if !errors.Is(err, dlock.ErrNotAcquired) {
			time.Sleep(20 * time.Millisecond) // a server error: do not spin
		}
		return nil
	}
	r := Record{Ev: "enter", Proc: cfg.Proc, G: gid, Seq: seq, Kind: kind, Call: call, Enter: Now()}
	r.Token, _ = lk.Token()
	if err := rec.Write(r); err != nil {
		return err
	}
	var told atomic.Int64
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-lk.Lost():
			told.Store(Now())
		case <-stop:
		}
	}()
	hold := time.Duration(cfg.HoldMs[0]+rng.IntN(cfg.HoldMs[1]-cfg.HoldMs[0]+1)) * time.Millisecond
	lost := lk.Lost()
	switch kind {
	case KindExclusive: // a slow read-modify-write, of the fenced and the shadow counter
		u, err := res.Read(r.Token)
		if err != nil {
			return err
		}
		time.Sleep(hold)
		if isClosed(lost) {
			r.Skipped = true // a careful holder stops when told
			break
		}
		if r.Wrote, err = u.Write(); err != nil {
			return err
		}
		r.Rejected = u.Refused
	case KindShared: // a slow read: the value must not change under it
		v1, err := res.Fenced.Read(0)
		if err != nil {
			return err
		}
		time.Sleep(hold)
		v2, err := res.Fenced.Read(0)
		if err != nil {
			return err
		}
		r.Torn = v1 != v2
	default:
		time.Sleep(hold)
	}
	r.Leave = Now()
	// Say so before calling Release: a worker killed after this record may
	// have released; one killed before it had not (the checker bounds a
	// killed section's release by this record, else by the kill).
	if err := rec.Write(Record{Ev: "leave", Proc: cfg.Proc, G: gid, Seq: seq, Kind: kind, Leave: r.Leave}); err != nil {
		return err
	}
	close(stop)
	<-watched
	if t := told.Load(); t != 0 {
		r.Lost, r.Told = true, t
	}
	rerr := lk.Release(context.Background())
	r.Rel = Now()
	if rerr != nil {
		r.RelErr = rerr.Error()
		if errors.Is(rerr, dlock.ErrLockLost) && !r.Lost {
			r.Lost, r.Told = true, r.Rel
		}
	}
	r.Ev = "exit"
	if err := rec.Write(r); err != nil {
		return err
	}
	time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
	return nil
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
