package faults

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dlock-go/dlock/dlocktest"
)

// The CLI as a workload: `dlock run` doing a shell read-modify-write of the
// fenced and the shadow counter (through this test binary as a helper,
// DLOCK_FAULTS_RMW=1), with a marker of who is inside made by `ln -s`
// (symlink(2) fails if the name exists, as O_EXCL): a command that finds a
// live other inside records an overlap (live: its process exists and is
// not a zombie — a killed command not yet reaped writes nothing).

const rmwEnv = "DLOCK_FAULTS_RMW"

// rmwMain is the helper the CLI's command calls:
//
//	read DIR TOKEN                      prints "FENCED SHADOW REFUSED"
//	write DIR TOKEN FENCED SHADOW REFUSED
func rmwMain(args []string) int {
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "rmw: usage: read|write DIR TOKEN ...")
		return 2
	}
	st := NewStore(filepath.Join(args[1], "resource"), filepath.Join(args[1], "shadow"))
	token, err := strconv.ParseUint(args[2], 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rmw:", err)
		return 2
	}
	switch {
	case args[0] == "read":
		u, err := st.Read(token)
		if err != nil {
			fmt.Fprintln(os.Stderr, "rmw:", err)
			return 1
		}
		fmt.Printf("%d %d %t\n", u.fv, u.sv, u.Refused)
		return 0
	case args[0] == "write" && len(args) == 6:
		fv, err1 := strconv.ParseInt(args[3], 10, 64)
		sv, err2 := strconv.ParseInt(args[4], 10, 64)
		refused, err3 := strconv.ParseBool(args[5])
		if err := errors.Join(err1, err2, err3); err != nil {
			fmt.Fprintln(os.Stderr, "rmw:", err)
			return 2
		}
		u := &Update{st: st, token: token, fv: fv, sv: sv, Refused: refused}
		if _, err := u.Write(); err != nil {
			fmt.Fprintln(os.Stderr, "rmw:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "rmw: usage: read|write DIR TOKEN ...")
	return 2
}

// cliScript is COMMAND: sh -c cliScript sh DIR ID HELPER.
const cliScript = `D=$1; ID=$2; H=$3; me="$ID:$$"
if ! ln -s "$me" "$D/inside" 2>/dev/null; then
	other=$(readlink "$D/inside" 2>/dev/null)
	state=$(cut -d' ' -f3 "/proc/${other#*:}/stat" 2>/dev/null)
	if [ -n "$other" ] && [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]; then
		echo "$ID $other" >>"$D/overlaps"
	fi
	ln -sfn "$me" "$D/inside"
fi
vals=$("$H" read "$D" "${DLOCK_FENCING_TOKEN:-0}") || exit 3
sleep 0.02
"$H" write "$D" "${DLOCK_FENCING_TOKEN:-0}" $vals || exit 3
if [ "$(readlink "$D/inside" 2>/dev/null)" = "$me" ]; then rm -f "$D/inside"; fi
`

// cliFaults: the faults per backend; revoking says the fault can take the
// lock before dlock can know.
var cliMatrix = []struct {
	backend string
	faults  []string
}{
	{"fs", []string{"none", "kill-dlock", "kill-both", "pause"}},
	{"pg", []string{"none", "kill-dlock", "kill-both", "terminate", "pause"}},
	{"valkey", []string{"none", "kill-dlock", "kill-both", "pause"}},
}

// cliLease is the CLI's Valkey lease (valkey's default: the CLI has no
// option for it).
const cliLease = 30 * time.Second

func cliRevokes(backend, fault string) bool {
	return fault == "terminate" || fault == "pause" && backend == "valkey"
}

var cliBinary struct {
	once sync.Once
	path string
	err  error
}

// buildCLI builds cmd/dlock from the tree (the replace directive of this
// module points at it).
func buildCLI(t *testing.T) string {
	cliBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "dlock-faults-cli-")
		if err != nil {
			cliBinary.err = err
			return
		}
		cliBinary.path = filepath.Join(dir, "dlock")
		out, err := exec.Command("go", "build", "-o", cliBinary.path, "github.com/dlock-go/dlock/cmd/dlock").CombinedOutput()
		if err != nil {
			cliBinary.err = fmt.Errorf("go build cmd/dlock: %v\n%s", err, out)
		}
	})
	if cliBinary.err != nil {
		t.Fatal(cliBinary.err)
	}
	return cliBinary.path
}

func TestCLI(t *testing.T) {
	t.Parallel() // beside TestFaults, in its slots
	sz := size()
	results.mu.Lock()
	if results.run.Date.IsZero() { // run on its own: date its rows for cmd/report
		results.run.Date = time.Now().UTC().Truncate(time.Second)
	}
	results.mu.Unlock()
	bin := buildCLI(t)
	t.Cleanup(func() {
		os.RemoveAll(filepath.Dir(bin))
		writeResults()
	})
	_, slots := slotsFor(sz)
	for _, m := range cliMatrix {
		for _, f := range m.faults {
			t.Run(m.backend+"/"+f, func(t *testing.T) {
				t.Parallel()
				if m.backend == "valkey" && f != "none" && sz.short {
					// A killed or paused dlock holds its key until the lease
					// runs out; the CLI has no option to shorten it.
					t.Skipf("a fault that waits out the CLI's %v Valkey lease: long mode only", cliLease)
				}
				if f == "pause" && sz.short {
					t.Skip("pause: long mode only (the short mode keeps to the CLI's promises under kill and terminate)")
				}
				slots <- struct{}{}
				defer func() { <-slots }()
				size := sz // each subtest its own copy: they run in parallel
				if size.short {
					size.dur = 3 * time.Second
				}
				runCLIScenario(t, bin, m.backend, f, size)
			})
		}
	}
}

// invocation is one `dlock run`.
type invocation struct {
	id       int
	cmd      *exec.Cmd
	start    int64
	end      int64
	code     int
	done     chan struct{}
	killed   bool // dlock killed by the fault
	killedCm bool // its command killed too
}

func runCLIScenario(t *testing.T, bin, backend, fault string, sz sizing) {
	started := time.Now()
	dir := t.TempDir()
	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("%s-%s-%d", backend, fault, time.Now().UnixNano())
	name, app := "cli-"+tag, "dlockfaults-cli-"+tag
	var burl, pgURL string
	switch backend {
	case "fs":
		burl = "file://" + filepath.Join(dir, "locks")
		if err := os.Mkdir(filepath.Join(dir, "locks"), 0o700); err != nil {
			t.Fatal(err)
		}
	case "pg":
		pgURL = dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
		u, err := url.Parse(pgURL)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		q.Set("application_name", app)
		u.RawQuery = q.Encode()
		burl = u.String()
	case "valkey":
		burl = "valkey://" + dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
	}
	res := &Result{Backend: "cli-" + backend, Prim: "run", Fault: fault, Revokes: cliRevokes(backend, fault)}
	defer func() {
		if t.Skipped() {
			return
		}
		res.Seconds = time.Since(started).Seconds()
		res.Failed = t.Failed()
		if res.Failed && len(res.Reasons) == 0 {
			res.Reasons = []string{"failed outside the checks (see the test log)"}
		}
		results.mu.Lock()
		results.rows = append(results.rows, res)
		results.mu.Unlock()
	}()
	fail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		res.Reasons = append(res.Reasons, msg)
		t.Error(msg)
	}

	helper, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Does the backend give the shell a fencing token?
	probe := exec.Command(bin, "run", "-backend", burl, "-fencing-env", name+"-probe", "--", "true")
	out, perr := probe.CombinedOutput()
	fencing := perr == nil
	if !fencing {
		t.Logf("no fencing token from the CLI on %s: %v %s", backend, perr, out)
		res.NoToken = true
	}
	logf, err := os.Create(filepath.Join(dir, "dlock.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()

	var (
		mu     sync.Mutex
		invs   = map[int]*invocation{}
		nextID int
		wg     sync.WaitGroup
	)
	deadline := Now() + int64(sz.dur)
	leaseBound := backend == "valkey" && fault != "none"
	if leaseBound {
		deadline = Now() + int64(max(sz.dur, cliLease+10*time.Second))
	}
	for range sz.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for Now() < deadline {
				mu.Lock()
				id := nextID
				nextID++
				mu.Unlock()
				args := []string{"run", "-backend", burl, "-grace", "1s"}
				if fencing {
					args = append(args, "-fencing-env")
				}
				args = append(args, name, "--", "sh", "-c", cliScript, "sh", work, strconv.Itoa(id), helper)
				cmd := exec.Command(bin, args...)
				cmd.Env = childEnv(rmwEnv + "=1")
				cmd.Stdout, cmd.Stderr = logf, logf
				inv := &invocation{id: id, cmd: cmd, done: make(chan struct{}), start: Now()}
				if err := cmd.Start(); err != nil {
					fail("starting dlock: %v", err)
					return
				}
				mu.Lock()
				invs[id] = inv
				mu.Unlock()
				_ = cmd.Wait()
				inv.end = Now()
				inv.code = exitStatusOf(cmd.ProcessState)
				close(inv.done)
			}
		}()
	}

	// holder returns the invocation whose command is inside, and the
	// command's pid (its process group), waiting up to a second.
	holder := func() (*invocation, int) {
		for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
			l, err := os.Readlink(filepath.Join(work, "inside"))
			if err != nil {
				continue
			}
			ids, pids, _ := strings.Cut(l, ":")
			id, _ := strconv.Atoi(ids)
			pid, _ := strconv.Atoi(pids)
			mu.Lock()
			inv := invs[id]
			mu.Unlock()
			if inv != nil && pid > 0 {
				select {
				case <-inv.done:
				default:
					return inv, pid
				}
			}
		}
		return nil, 0
	}
	var faults []Fault
	quiet := max(1200*time.Millisecond, sz.dur/5)
	if fault != "none" {
		for Now() < deadline-int64(quiet) {
			inv, pid := holder()
			if inv == nil {
				continue
			}
			f := Fault{Kind: fault, Proc: inv.id, Start: Now(), Revokes: res.Revokes}
			switch fault {
			case "kill-dlock":
				inv.killed = true
				_ = inv.cmd.Process.Kill()
			case "kill-both":
				inv.killed, inv.killedCm = true, true
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = inv.cmd.Process.Kill()
			case "terminate":
				f.Proc = -1
				if err := cliTerminate(pgURL, app); err != nil {
					fail("terminate: %v", err)
				}
			case "pause":
				_ = inv.cmd.Process.Signal(syscall.SIGSTOP)
				_ = syscall.Kill(-pid, syscall.SIGSTOP)
				d := 3 * lossMs * time.Millisecond
				if backend == "valkey" {
					d = cliLease + time.Second
				}
				time.Sleep(d)
				_ = syscall.Kill(-pid, syscall.SIGCONT)
				_ = inv.cmd.Process.Signal(syscall.SIGCONT)
			}
			f.End = Now()
			faults = append(faults, f)
			if leaseBound {
				break // one fault that waits out a 30 s lease is enough
			}
			time.Sleep(time.Duration(200+len(faults)%3*150) * time.Millisecond)
		}
	}
	wg.Wait()
	// Commands that outlived a killed dlock may still be running.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Lstat(filepath.Join(work, "inside")); err != nil {
			break
		}
	}

	// Overlaps: a command found a live other inside. Told when the other's
	// dlock exited 76 (it learned of the loss and stopped its command);
	// excused when the other's command was being killed with it; untold
	// otherwise (a command running without its lock, its dlock unaware or
	// dead).
	mu.Lock()
	defer mu.Unlock()
	var codes = map[int]int{}
	for _, inv := range invs {
		res.Sections++
		if inv.killed {
			res.Killed++
			continue
		}
		codes[inv.code]++
		if inv.code == exitLost {
			res.Told++
		}
	}
	if f, err := os.Open(filepath.Join(work, "overlaps")); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var id int
			var other string
			if _, err := fmt.Sscanf(sc.Text(), "%d %s", &id, &other); err != nil {
				continue
			}
			oid, _ := strconv.Atoi(strings.SplitN(other, ":", 2)[0])
			res.Overlaps++
			o := invs[oid]
			switch {
			case o != nil && o.killedCm:
				res.Excused++
			case o != nil && !o.killed && o.code == exitLost:
				res.Excused++
			default:
				res.Untold++
				if res.Untold <= 5 {
					desc := "unknown"
					if o != nil {
						desc = fmt.Sprintf("dlock killed %v, exit %d, ran %d–%d", o.killed, o.code, o.start, o.end)
					}
					res.problem("command %d found command %s inside, untold (its dlock: %s)", id, other, desc)
				}
			}
		}
		f.Close()
	}
	st, err := NewResource(filepath.Join(work, "resource"), true).State()
	if err != nil {
		t.Fatal(err)
	}
	sh, err := NewResource(filepath.Join(work, "shadow"), false).State()
	if err != nil {
		t.Fatal(err)
	}
	res.Resource, res.Shadow, res.Checked, res.Faults = st, sh, true, len(faults)
	t.Logf("%d faults, %d runs (%d dlocks killed, exits %v), overlaps %d (told %d, untold %d); fencing %v: %d writes, %d lost updates, %d refused; without fencing %d lost updates",
		len(faults), res.Sections, res.Killed, codes, res.Overlaps, res.Excused, res.Untold, fencing, st.Writes, st.Lost, st.Refused, sh.Lost)
	if res.Untold > 0 {
		fail("%d untold overlaps: a command ran beside another whose dlock had not stopped it: %s", res.Untold, strings.Join(res.Problems, "; "))
	}
	if fencing && st.Lost > 0 {
		fail("%d updates lost with -fencing-env", st.Lost)
	}
	if !res.Revokes && sh.Lost > 0 {
		fail("%d updates lost without fencing though no fault could revoke the lock", sh.Lost)
	}
	for code, n := range codes {
		if code == 3 || code == exitUsage || code >= 126 && code <= 127 {
			fail("%d runs exited %d (see %s)", n, code, logf.Name())
		}
	}
	if st.Writes+st.Refused == 0 && sh.Writes == 0 {
		fail("no command wrote")
	}
}

const (
	exitLost  = 76 // dlock: the lock was lost while COMMAND ran
	exitUsage = 64
)

func exitStatusOf(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// cliTerminate ends the CLI's PostgreSQL sessions that hold an advisory
// lock.
func cliTerminate(pgURL, app string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, pgURL)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, `SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a
		WHERE a.application_name = $1 AND EXISTS (SELECT 1 FROM pg_locks l
		WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted)`, app)
	return err
}
