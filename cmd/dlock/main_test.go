//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
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
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock/dlocktest"
)

// The dlock binary, built on first use (not in TestMain, so that fuzzing
// this package does not wait for a build): the tests run it as a user would.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func dlockBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "dlock-cli-test"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "dlock")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("building dlock: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// target is a backend the end-to-end tests run dlock against.
type target struct {
	url  string
	lose func(t *testing.T, name string) // makes the holder of name lose it
}

func targets(t *testing.T) map[string]func(t *testing.T) target {
	return map[string]func(t *testing.T) target{
		"file": func(t *testing.T) target {
			dir := filepath.Join(t.TempDir(), "locks")
			return target{url: "file://" + dir, lose: func(t *testing.T, name string) {
				entries, _ := os.ReadDir(dir)
				for _, e := range entries {
					if strings.Contains(e.Name(), name) {
						os.Remove(filepath.Join(dir, e.Name()))
					}
				}
			}}
		},
		"postgres": func(t *testing.T) target {
			url := dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
			// Its own application_name, so that lose kills dlock's sessions
			// only (not those of other packages' tests, which name
			// themselves with pg.ApplicationName); holder records from
			// the holder table.
			sep := "?"
			if strings.Contains(url, "?") {
				sep = "&"
			}
			dlockURL := url + sep + "application_name=dlock-cli-test&dlock_holders=on"
			return target{url: dlockURL, lose: func(t *testing.T, name string) {
				conn, err := pgx.Connect(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				if _, err := conn.Exec(context.Background(),
					`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'dlock-cli-test' AND pid <> pg_backend_pid()`); err != nil {
					t.Fatal(err)
				}
			}}
		},
		"valkey": func(t *testing.T) target {
			addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
			return target{url: "valkey://" + addr, lose: delKeys([]string{addr})}
		},
		"cluster": func(t *testing.T) target {
			seeds := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_CLUSTER")
			return target{url: "valkey://" + seeds, lose: delKeys([]string{seeds})}
		},
		"redlock": func(t *testing.T) target {
			nodes := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_NODES")
			return target{url: "redlock://" + nodes, lose: delKeys(strings.Split(nodes, ","))}
		},
	}
}

// delKeys deletes the keys of an exclusive lock (the RW write side, or the
// mutex for RedLock) on every deployment in addrs.
func delKeys(deployments []string) func(t *testing.T, name string) {
	return func(t *testing.T, name string) {
		for _, d := range deployments {
			c, err := valkeygo.NewClient(valkeygo.ClientOption{InitAddress: strings.Split(d, ",")})
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"dlock:{" + name + "}:rw:w", "dlock:{" + name + "}:m"} {
				if err := c.Do(context.Background(), c.B().Del().Key(k).Build()).Error(); err != nil {
					t.Error(err)
				}
			}
			c.Close()
		}
	}
}

func forEachBackend(t *testing.T, f func(t *testing.T, tg target)) {
	for name, mk := range targets(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, mk(t))
		})
	}
}

func lockName(t *testing.T) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "cli-" + hex.EncodeToString(b[:])
}

// runDlock runs the binary and returns its exit status and stderr.
func runDlock(t *testing.T, tg target, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(dlockBinary(t), args...)
	cmd.Env = append(os.Environ(), "DLOCK_BACKEND="+tg.url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running dlock: %v", err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// holder starts dlock holding name while COMMAND waits for a stop file,
// and returns once COMMAND runs.
type holder struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	dir    string
}

func startHolder(t *testing.T, tg target, name string, script string, args ...string) *holder {
	t.Helper()
	dir := t.TempDir()
	if script == "" {
		script = `touch ready; while [ ! -e stop ]; do sleep 0.05; done`
	}
	cmd := exec.Command(dlockBinary(t), append(append([]string{"run"}, args...), name, "--", "sh", "-c", script)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DLOCK_BACKEND="+tg.url)
	h := &holder{cmd: cmd, stderr: &bytes.Buffer{}, dir: dir}
	cmd.Stderr = h.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	waitFile(t, filepath.Join(dir, "ready"))
	return h
}

func (h *holder) stop(t *testing.T) int {
	t.Helper()
	if err := os.WriteFile(filepath.Join(h.dir, "stop"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return h.wait(t)
}

func (h *holder) wait(t *testing.T) int {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("dlock did not end; stderr: %s", h.stderr)
	}
	return h.cmd.ProcessState.ExitCode()
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExclusion(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		log := filepath.Join(t.TempDir(), "log")
		script := `echo start >> "$LOG"; sleep 0.3; echo end >> "$LOG"`
		var cmds []*exec.Cmd
		for range 3 {
			cmd := exec.Command(dlockBinary(t), "run", name, "--", "sh", "-c", script)
			cmd.Env = append(os.Environ(), "DLOCK_BACKEND="+tg.url, "LOG="+log)
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, cmd)
		}
		for _, c := range cmds {
			if err := c.Wait(); err != nil {
				t.Fatalf("dlock run: %v", err)
			}
		}
		got, _ := os.ReadFile(log)
		if want := strings.Repeat("start\nend\n", 3); string(got) != want {
			t.Fatalf("critical sections overlapped:\n%s", got)
		}
	})
}

func TestTryAndWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		h := startHolder(t, tg, name, "")
		if code, _, stderr := runDlock(t, tg, "run", "-try", name, "--", "true"); code != exitNotAcquired {
			t.Errorf("-try on a held lock: exit %d, want %d; stderr: %s", code, exitNotAcquired, stderr)
		}
		start := time.Now()
		if code, _, stderr := runDlock(t, tg, "run", "-wait", "300ms", name, "--", "true"); code != exitNotAcquired {
			t.Errorf("-wait expiring: exit %d, want %d; stderr: %s", code, exitNotAcquired, stderr)
		} else if !strings.Contains(stderr, "not acquired within the wait") {
			t.Errorf("-wait expiring: stderr %q", stderr)
		}
		if time.Since(start) < 300*time.Millisecond {
			t.Errorf("-wait 300ms gave up early")
		}
		if code, out, _ := runDlock(t, tg, "status", name); code != exitNotAcquired || !strings.HasPrefix(out, "held\n") {
			t.Errorf("status of a held lock: exit %d, %q", code, out)
		}
		if code, _, stderr := runDlock(t, tg, "run", "-verbose", "-wait", "1500ms", name, "--", "true"); code != exitNotAcquired ||
			!strings.Contains(stderr, fmt.Sprintf("waiting for lock %q", name)) {
			t.Errorf("waiting message: exit %d, stderr %q", code, stderr)
		}
		if code := h.stop(t); code != 0 {
			t.Fatalf("holder exit %d: %s", code, h.stderr)
		}
		if code, out, _ := runDlock(t, tg, "status", name); code != 0 || out != "free\n" {
			t.Errorf("status of a free lock: exit %d, %q", code, out)
		}
		if code, _, stderr := runDlock(t, tg, "run", "-try", name, "--", "true"); code != 0 {
			t.Errorf("-try on a free lock: exit %d; stderr: %s", code, stderr)
		}
	})
}

func TestExitStatus(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		for script, want := range map[string]int{"exit 0": 0, "exit 3": 3, "kill -KILL $$": 128 + 9, "kill -TERM $$": 128 + 15} {
			if code, _, stderr := runDlock(t, tg, "run", name, "--", "sh", "-c", script); code != want {
				t.Errorf("%s: exit %d, want %d; stderr: %s", script, code, want, stderr)
			}
		}
		if code, _, _ := runDlock(t, tg, "run", name, "--", "/nonexistent/command"); code != exitNotFound {
			t.Errorf("missing command: exit %d, want %d", code, exitNotFound)
		}
		// The lock was released after each run.
		if code, out, _ := runDlock(t, tg, "status", name); code != 0 || out != "free\n" {
			t.Errorf("status after runs: exit %d, %q", code, out)
		}
	})
}

func TestSignalForwarding(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		h := startHolder(t, tg, name, `trap 'echo got TERM > got; exit 7' TERM; touch ready; while :; do sleep 0.05; done`)
		if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := h.wait(t); code != 7 {
			t.Fatalf("exit %d, want the command's 7; stderr: %s", code, h.stderr)
		}
		if got, _ := os.ReadFile(filepath.Join(h.dir, "got")); string(got) != "got TERM\n" {
			t.Fatalf("the command did not get the signal: %q", got)
		}
		if code, out, _ := runDlock(t, tg, "status", name); code != 0 || out != "free\n" {
			t.Errorf("status after a signalled run: exit %d, %q", code, out)
		}
	})
}

func TestLossStopsCommand(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		h := startHolder(t, tg, name, `trap 'echo stopped > stopped; exit 0' TERM; touch ready; while :; do sleep 0.05; done`, "-grace", "5s")
		tg.lose(t, name)
		if code := h.wait(t); code != exitLost {
			t.Fatalf("exit %d after the lock was lost, want %d; stderr: %s", code, exitLost, h.stderr)
		}
		if !strings.Contains(h.stderr.String(), "lost") {
			t.Errorf("stderr does not report the loss: %s", h.stderr)
		}
		if _, err := os.Stat(filepath.Join(h.dir, "stopped")); err != nil {
			t.Errorf("the command was not sent SIGTERM: %v", err)
		}
	})
}

func TestFencingEnv(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		var last uint64
		for range 3 {
			code, out, stderr := runDlock(t, tg, "run", "-fencing-env", name, "--", "sh", "-c", `echo "$DLOCK_FENCING_TOKEN"`)
			if code == exitUsage && strings.Contains(stderr, "no fencing token") {
				t.Skip("backend gives no fencing token")
			}
			tok, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
			if code != 0 || err != nil {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
			}
			if tok <= last {
				t.Fatalf("token %d after %d", tok, last)
			}
			last = tok
		}
	})
}

func TestSharedAndSemaphore(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		if strings.HasPrefix(tg.url, "redlock") {
			code, _, stderr := runDlock(t, tg, "run", "-shared", lockName(t), "--", "true")
			if code != exitUsage || !strings.Contains(stderr, "no reader-writer lock") {
				t.Fatalf("-shared over RedLock: exit %d, %s", code, stderr)
			}
			code, _, stderr = runDlock(t, tg, "run", "-semaphore", "2", lockName(t), "--", "true")
			if code != exitUsage || !strings.Contains(stderr, "no semaphore") {
				t.Fatalf("-semaphore over RedLock: exit %d, %s", code, stderr)
			}
			return
		}
		name := lockName(t)
		r := startHolder(t, tg, name, "", "-shared")
		if code, _, stderr := runDlock(t, tg, "run", "-shared", "-try", name, "--", "true"); code != 0 {
			t.Errorf("second reader: exit %d: %s", code, stderr)
		}
		if code, _, _ := runDlock(t, tg, "run", "-try", name, "--", "true"); code != exitNotAcquired {
			t.Errorf("writer beside a reader: exit %d, want %d", code, exitNotAcquired)
		}
		r.stop(t)

		sem := lockName(t)
		a := startHolder(t, tg, sem, "", "-semaphore", "2")
		b := startHolder(t, tg, sem, "", "-semaphore", "2")
		if code, _, _ := runDlock(t, tg, "run", "-semaphore", "2", "-try", sem, "--", "true"); code != exitNotAcquired {
			t.Errorf("third holder of a 2-ticket semaphore: exit %d, want %d", code, exitNotAcquired)
		}
		a.stop(t)
		b.stop(t)
	})
}

func TestUsageErrors(t *testing.T) {
	tg := target{url: "file://" + t.TempDir()}
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"run"},
		{"run", "name"},
		{"run", "-try", "-wait", "1s", "name", "--", "true"},
		{"run", "-semaphore", "0", "name", "--", "true"},
		{"run", "-shared", "-semaphore", "2", "name", "--", "true"},
		{"run", "-backend", "ftp://x", "name", "--", "true"},
		{"run", "-backend", "valkey://host:notaport", "name", "--", "true"},
		{"run", "-backend", "redlock://onlyone:1", "name", "--", "true"},
		{"run", "-backend", "file://relative/dir", "name", "--", "true"},
		{"status", "name", "extra"},
		{"status", "-owner", "me", "name"},
		{"run", "-json", "name", "--", "true"},
		{"run", "-owner", strings.Repeat("x", 1025), "name", "--", "true"},
	} {
		if code, _, stderr := runDlock(t, tg, args...); code != exitUsage || !strings.Contains(stderr, "dlock") {
			t.Errorf("dlock %q: exit %d, stderr %q; want %d and a message", args, code, stderr, exitUsage)
		}
	}
	if code, _, stderr := runDlock(t, tg, "help"); code != 0 || !strings.Contains(stderr, "Exit status") {
		t.Errorf("help: exit %d, %q", code, stderr)
	}
}

// TestRetryingKeepsTheServersError: when ctx's end cuts the last attempt
// short (CI saw a connect to a stopped server still in flight at the
// deadline), retrying returns the error the server gave the attempt before,
// not "context deadline exceeded".
func TestRetryingKeepsTheServersError(t *testing.T) {
	refused := errors.New("connect: connection refused")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	attempts := 0
	err := retrying(ctx, true, func(error) {}, func() error {
		attempts++
		if attempts < 3 {
			return refused
		}
		<-ctx.Done() // the last attempt is in flight when ctx ends
		return fmt.Errorf("ping: %w", ctx.Err())
	})
	if !errors.Is(err, refused) {
		t.Fatalf("retrying = %v after %d attempts, want the server's last error %q", err, attempts, refused)
	}
	// A server error of the last attempt itself is kept.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	other := errors.New("connect: no route to host")
	attempts = 0
	err = retrying(ctx2, true, func(error) {}, func() error {
		attempts++
		if attempts < 2 {
			return refused
		}
		<-ctx2.Done()
		return other
	})
	if !errors.Is(err, other) {
		t.Fatalf("retrying = %v after %d attempts, want the last attempt's own error %q", err, attempts, other)
	}
}

// TestBackoffStartsAt50ms: the first retry of a failed connection comes
// after about 50 ms (± half), not after backoff's default 500 ms.
func TestBackoffStartsAt50ms(t *testing.T) {
	for range 20 {
		if d := newBackoff(context.Background()).NextBackOff(); d < 25*time.Millisecond || d > 75*time.Millisecond {
			t.Fatalf("first backoff %v, want 25-75ms", d)
		}
	}
}
