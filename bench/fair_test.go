package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/valkey"
	valkeygo "github.com/valkey-io/valkey-go"
)

// Fairness settings (issue 14): fairClients clients, each in its own
// process, take one lock over and over and hold it fairHold each time.
const (
	fairClients = 8
	fairHold    = time.Millisecond
	// fairDefaultDuration is the saturation time when DLOCK_BENCH_FAIR_DURATION
	// is unset (the CI's quick mode); bench/run sets 5s.
	fairDefaultDuration = time.Second
	// fairGrace bounds how long a wait that began before the end may last
	// after it, when every other client has stopped: a wait still going
	// then was never woken (a lost wake-up). It ends there and is counted
	// as stuck, its wait as at least what it was.
	fairGrace = 3 * time.Second
)

// Environment of the fairness helper processes (the test binary re-executed
// with -test.run=^TestFairnessClient$).
const (
	envFairClient = "DLOCK_BENCH_FAIR_CLIENT" // backend/lib of the client to run
	envFairDir    = "DLOCK_BENCH_FAIR_DIR"    // lock directory of the file backends
	envFairName   = "DLOCK_BENCH_FAIR_NAME"   // the lock's name
	envFairDur    = "DLOCK_BENCH_FAIR_DURATION"
)

// Lines a helper prints on its stdout; the parent answers fairReady with the
// start time (Unix nanoseconds) on the helper's stdin.
const (
	fairReady  = "fair-ready"
	fairResult = "fair-result "
)

// fairLibs are the libraries of BenchmarkFairness: every library of libs that
// can wait (dlock with its default settings), and dlock over a Valkey
// Cluster and over RedLock.
var fairLibs = func() []lib {
	var ls []lib
	for _, l := range libs {
		if l.waits && l.name != "dlock-nofencing" && l.measures("BenchmarkFairness") {
			ls = append(ls, l)
		}
		if l.backend == "valkey" && l.name == "dlock" {
			ls = append(ls,
				lib{"valkey-cluster", "dlock", openDlockCluster, true},
				lib{"redlock", "dlock", openDlockRedLock, true})
		}
	}
	return ls
}()

func splitAddrs(s string) []string {
	var out []string
	for a := range strings.SplitSeq(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func openDlockCluster(tb testing.TB, _ string) locker {
	seeds := splitAddrs(dlocktest.RequireEnv(tb, "DLOCK_TEST_VALKEY_CLUSTER"))
	c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: seeds})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	b, err := valkey.New(c)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = b.Close() })
	return dlockLocker[*valkey.Lease]{dlock.NewMutex(b)}
}

func openDlockRedLock(tb testing.TB, _ string) locker {
	var cs []valkeygo.Client
	for _, a := range splitAddrs(dlocktest.RequireEnv(tb, "DLOCK_TEST_VALKEY_NODES")) {
		c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: []string{a}})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(c.Close)
		cs = append(cs, c)
	}
	r, err := valkey.NewRedLock(cs)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = r.Close() })
	return dlockLocker[*valkey.Lease]{dlock.NewMutex(r)}
}

// fairDuration is the saturation time, from DLOCK_BENCH_FAIR_DURATION.
func fairDuration(tb testing.TB) time.Duration {
	s := os.Getenv(envFairDur)
	if s == "" {
		return fairDefaultDuration
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		tb.Fatalf("%s=%q: want a positive duration", envFairDur, s)
	}
	return d
}

// fairReport is what one helper reports.
type fairReport struct {
	// Acquired counts the acquisitions that returned before the end.
	Acquired int `json:"acquired"`
	// Waits are the durations of every acquisition begun before the end
	// (also those that returned after it), in nanoseconds.
	Waits []int64 `json:"waits"`
	// Held is the total time the client held the lock before the end, in
	// nanoseconds.
	Held int64 `json:"held"`
	// Stuck is true if the client's last wait was still going fairGrace
	// after the end (its wait is in Waits as a lower bound).
	Stuck bool `json:"stuck"`
}

// BenchmarkFairness (issue 14) runs fairClients clients, each in its own
// process (the test binary re-executed), all taking one lock over and over
// for DLOCK_BENCH_FAIR_DURATION (default 1s), holding it fairHold each time.
// Reported: jain, Jain's fairness index (Σx)²/(n·Σx²) of the acquisitions
// per client; min-acq and max-acq, the fewest and most acquisitions of a
// client; p50-wait-ns, p99-wait-ns and max-wait-ns over every wait; ops/s,
// acquisitions per second; hold-ns, the mean time a client held the lock
// (fairHold asked, more on a loaded machine); gap-ns, the mean time per acquisition when
// nobody held the lock (the hand-off under saturation); and stuck, the
// clients whose last wait never ended (a lost wake-up: their waits count as
// lasting until fairGrace after the end, a lower bound).
func BenchmarkFairness(b *testing.B) {
	for _, l := range fairLibs {
		b.Run(l.backend+"/"+l.name, func(b *testing.B) {
			var reps []fairReport
			for range b.N {
				reps = runFairness(b, l)
			}
			b.StopTimer()
			reportFairness(b, reps, fairDuration(b))
		})
	}
}

func reportFairness(b *testing.B, reps []fairReport, d time.Duration) {
	var sum, sumSq, held float64
	var waits []time.Duration
	minAcq, maxAcq, stuck := -1, 0, 0
	for _, r := range reps {
		if r.Stuck {
			stuck++
		}
		x := float64(r.Acquired)
		sum += x
		sumSq += x * x
		held += float64(r.Held)
		if minAcq < 0 || r.Acquired < minAcq {
			minAcq = r.Acquired
		}
		maxAcq = max(maxAcq, r.Acquired)
		for _, w := range r.Waits {
			waits = append(waits, time.Duration(w))
		}
	}
	jain := 0.0
	if sumSq > 0 {
		jain = sum * sum / (float64(len(reps)) * sumSq)
	}
	slices.Sort(waits)
	if len(waits) == 0 {
		waits = []time.Duration{0}
	}
	gap := float64(d)
	if sum > 0 {
		gap = max(0, (float64(d)-held)/sum)
	}
	b.ReportMetric(jain, "jain")
	b.ReportMetric(float64(minAcq), "min-acq")
	b.ReportMetric(float64(maxAcq), "max-acq")
	b.ReportMetric(float64(percentile(waits, 0.50)), "p50-wait-ns")
	b.ReportMetric(float64(percentile(waits, 0.99)), "p99-wait-ns")
	b.ReportMetric(float64(waits[len(waits)-1]), "max-wait-ns")
	b.ReportMetric(sum/d.Seconds(), "ops/s")
	b.ReportMetric(gap, "gap-ns")
	if sum > 0 {
		b.ReportMetric(held/sum, "hold-ns")
	}
	b.ReportMetric(float64(stuck), "stuck")
}

// fairChild is one helper process seen from the parent.
type fairChild struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // its stdout, line by line; closed at EOF
	stderr bytes.Buffer
	other  strings.Builder // the lines of its stdout that are not the protocol's
}

// output returns the helper's test output and stderr.
func (c *fairChild) output() string {
	return c.other.String() + c.stderr.String()
}

// runFairness starts the helpers, waits until every one is ready, starts
// them together and collects their reports.
func runFairness(b *testing.B, l lib) []fairReport {
	b.StopTimer()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	dir, name := b.TempDir(), lockName(b, "fair")
	d := fairDuration(b)
	children := make([]*fairChild, fairClients)
	defer func() {
		for _, c := range children {
			if c != nil && c.cmd.ProcessState == nil {
				_ = c.cmd.Process.Kill()
				_ = c.cmd.Wait()
			}
		}
	}()
	for i := range children {
		cmd := exec.Command(exe, "-test.run=^TestFairnessClient$", "-test.count=1", "-test.v=false")
		cmd.Env = append(os.Environ(),
			envFairClient+"="+l.backend+"/"+l.name, envFairDir+"="+dir, envFairName+"="+name, envFairDur+"="+d.String())
		c := &fairChild{cmd: cmd, lines: make(chan string, 16)}
		cmd.Stderr = &c.stderr
		if c.stdin, err = cmd.StdinPipe(); err != nil {
			b.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		children[i] = c
		go func() {
			defer close(c.lines)
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 1<<20), 64<<20)
			for sc.Scan() {
				c.lines <- sc.Text()
			}
		}()
	}
	// fail reports a helper that ended or failed without its line.
	fail := func(i int, c *fairChild, what string) {
		_ = c.cmd.Process.Kill()
		for line := range c.lines {
			c.other.WriteString(line + "\n")
		}
		_ = c.cmd.Wait()
		msg := fmt.Sprintf("helper %d: no %s; its output:\n%s", i, what, c.output())
		if isPeer(l) && strings.Contains(msg, context.DeadlineExceeded.Error()) {
			stall(b, msg)
		}
		b.Fatal(msg)
	}
	expect := func(i int, c *fairChild, prefix string, timeout time.Duration) string {
		t := time.NewTimer(timeout)
		defer t.Stop()
		for {
			select {
			case line, ok := <-c.lines:
				if !ok {
					fail(i, c, strings.TrimSpace(prefix))
				}
				if strings.HasPrefix(line, prefix) {
					return strings.TrimPrefix(line, prefix)
				}
				c.other.WriteString(line + "\n")
			case <-t.C:
				fail(i, c, strings.TrimSpace(prefix)+" within "+timeout.String())
			}
		}
	}
	for i, c := range children {
		expect(i, c, fairReady, fairGrace+time.Minute)
	}
	start := time.Now().Add(50 * time.Millisecond)
	for _, c := range children {
		_, _ = fmt.Fprintln(c.stdin, start.UnixNano())
	}
	b.StartTimer()
	reps := make([]fairReport, len(children))
	for i, c := range children {
		if err := json.Unmarshal([]byte(expect(i, c, fairResult, d+fairGrace+time.Minute)), &reps[i]); err != nil {
			b.Fatalf("helper %d: %v", i, err)
		}
		_ = c.stdin.Close()
		if err := c.cmd.Wait(); err != nil {
			b.Fatalf("helper %d: %v; its output:\n%s", i, err, c.output())
		}
	}
	b.StopTimer()
	return reps
}

// TestFairnessClient is one client of BenchmarkFairness, run in a helper
// process; it skips when run any other way.
func TestFairnessClient(t *testing.T) {
	id := os.Getenv(envFairClient)
	if id == "" {
		t.Skip("a helper process of BenchmarkFairness")
	}
	i := slices.IndexFunc(fairLibs, func(l lib) bool { return l.backend+"/"+l.name == id })
	if i < 0 {
		t.Fatalf("%s=%q: no such library", envFairClient, id)
	}
	lk := fairLibs[i].open(t, os.Getenv(envFairDir))
	name := os.Getenv(envFairName)
	d := fairDuration(t)

	// Warm up (connections, scripts, files) on a name of its own.
	wctx, cancel := context.WithTimeout(context.Background(), fairGrace+10*time.Second)
	defer cancel()
	h, err := lk.lock(wctx, name+"-warm-"+strconv.Itoa(os.Getpid()))
	if err == nil {
		err = h.Release(wctx)
	}
	if err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	fmt.Println(fairReady)
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the start time: %v", err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(0, ns)
	end := start.Add(d)
	time.Sleep(time.Until(start))

	ctx, cancel := context.WithDeadline(context.Background(), end.Add(fairGrace))
	defer cancel()
	var rep fairReport
	for time.Now().Before(end) {
		t0 := time.Now()
		h, err := lk.lock(ctx, name)
		t1 := time.Now()
		if err != nil && ctx.Err() != nil {
			rep.Waits = append(rep.Waits, int64(t1.Sub(t0)))
			rep.Stuck = true
			break
		}
		if err != nil {
			t.Fatalf("acquisition %d, after waiting %v: %v", rep.Acquired+1, t1.Sub(t0), err)
		}
		rep.Waits = append(rep.Waits, int64(t1.Sub(t0)))
		if t1.Before(end) {
			rep.Acquired++
			time.Sleep(fairHold)
			rep.Held += int64(min(time.Since(t1), end.Sub(t1)))
		}
		if err := h.Release(ctx); err != nil {
			t.Fatalf("release: %v", err)
		}
	}
	out, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(fairResult + string(out))
}
