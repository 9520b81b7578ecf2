//go:build linux

package main

// End-to-end tests of flock(1)'s promise (issue 11), through the built
// binary against real servers: loss reported at release, no command
// outliving dlock, fencing and leases from the shell, interactive commands
// under a pty, waits that ride out server outages, flock habits, URL forms,
// secrets. Linux only: they read /proc and open a pty.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/internal/testserver"
)

// procGroup lists the live (not zombie) processes of process group pgid.
func procGroup(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:])) // state ppid pgrp ...
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

func readInt(t *testing.T, path string) int {
	t.Helper()
	waitFile(t, path)
	for range 100 {
		b, _ := os.ReadFile(path)
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: no number", path)
	return 0
}

// TestLossAtRelease (item 1): the lock is lost while COMMAND runs and
// COMMAND ends 100ms later, before dlock's loss monitor may have noticed:
// dlock exits 76 and says the lock was lost, in every trial.
func TestLossAtRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		const trials = 5
		atRelease := 0
		for i := range trials {
			name := lockName(t)
			h := startHolder(t, tg, name, `touch ready; while [ ! -e go ]; do sleep 0.01; done; sleep 0.1`)
			tg.lose(t, name)
			if err := os.WriteFile(filepath.Join(h.dir, "go"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if code := h.wait(t); code != exitLost {
				t.Fatalf("trial %d: exit %d after the lock was lost, want %d; stderr: %s", i, code, exitLost, h.stderr)
			}
			if !strings.Contains(h.stderr.String(), "lost") {
				t.Fatalf("trial %d: stderr does not report the loss: %s", i, h.stderr)
			}
			if strings.Contains(h.stderr.String(), "found out at release") {
				atRelease++
			}
		}
		t.Logf("%d trials: exit 76 in all; the loss was learned at release in %d, by the loss monitor in %d", trials, atRelease, trials-atRelease)
	})
}

// TestKillDlockKillsCommand (item 2): SIGKILL dlock while COMMAND, a shell
// with a child, runs: COMMAND's whole group is gone at once (required
// within 200ms; asserted within 2s for loaded machines, the time logged),
// and the lock is free again (valkey: within its lease, set to 1s here).
func TestKillDlockKillsCommand(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		if strings.HasPrefix(tg.url, "valkey") || strings.HasPrefix(tg.url, "redlock") {
			tg.url += "?dlock_lease=1s"
		}
		var worst time.Duration
		for i := range 3 {
			name := lockName(t)
			h := startHolder(t, tg, name, `sleep 300 & echo $! > child; echo $$ > shell; touch ready; wait`)
			shell := readInt(t, filepath.Join(h.dir, "shell"))
			child := readInt(t, filepath.Join(h.dir, "child"))
			pgid, err := syscall.Getpgid(shell)
			if err != nil {
				t.Fatal(err)
			}
			if cg, _ := syscall.Getpgid(child); cg != pgid || len(procGroup(pgid)) < 3 {
				t.Fatalf("group %d: %v (child in group %d)", pgid, procGroup(pgid), cg)
			}
			start := time.Now()
			if err := h.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			var left []int
			for time.Since(start) < 2*time.Second {
				if left = procGroup(pgid); len(left) == 0 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			gone := time.Since(start)
			_ = h.cmd.Wait()
			if len(left) > 0 {
				t.Fatalf("trial %d: 2s after SIGKILL of dlock, COMMAND's group %d still has %v", i, pgid, left)
			}
			worst = max(worst, gone)
			t.Logf("trial %d: COMMAND's group (shell %d, child %d) gone %v after SIGKILL of dlock", i, shell, child, gone)
			// The lock is free again: at once (file, postgres) or within the
			// lease (valkey).
			start = time.Now()
			if code, _, stderr := runDlock(t, tg, "run", "-wait", "20s", name, "--", "true"); code != 0 {
				t.Fatalf("trial %d: after the kill: exit %d: %s", i, code, stderr)
			}
			t.Logf("trial %d: lock taken again %v after the group was gone", i, time.Since(start))
		}
		if worst > 200*time.Millisecond {
			t.Logf("WARNING: slowest kill-to-gone %v exceeds 200ms (loaded machine?)", worst)
		}
	})
}

// TestSupervisorNotByHand: the hidden supervisor mode refuses to run
// unless dlock started it (it would kill its caller's process group).
func TestSupervisorNotByHand(t *testing.T) {
	code, _, stderr := runDlock(t, target{url: "file:///nonexistent"}, superviseArg, "bg", "--", "/bin/sh", "sh", "-c", "exit 0")
	if code != exitUsage || !strings.Contains(stderr, "started by dlock run") {
		t.Fatalf("exit %d, %s", code, stderr)
	}
}

// TestFencingEveryBackend (item 3): -fencing-env works on every backend and
// primitive (PostgreSQL turns on its fencing table), tokens increase, and
// the help shows the shell idiom.
func TestFencingEveryBackend(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		kinds := [][]string{nil, {"-shared"}, {"-semaphore", "2"}}
		if strings.HasPrefix(tg.url, "redlock") {
			kinds = kinds[:1]
		}
		for _, k := range kinds {
			name := lockName(t)
			var last uint64
			for range 3 {
				args := append(append([]string{"run", "-fencing-env"}, k...), name, "--", "sh", "-c", `echo "$DLOCK_FENCING_TOKEN"`)
				code, out, stderr := runDlock(t, tg, args...)
				tok, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
				if code != 0 || err != nil || tok == 0 {
					t.Fatalf("%v: exit %d, stdout %q, stderr %q", k, code, out, stderr)
				}
				if tok <= last {
					t.Fatalf("%v: token %d after %d", k, tok, last)
				}
				last = tok
			}
		}
	})
	code, _, stderr := runDlock(t, target{url: "file:///nonexistent"}, "help")
	if code != 0 || !strings.Contains(stderr, "DLOCK_FENCING_TOKEN WHERE id = 1 AND token <= $DLOCK_FENCING_TOKEN") || !strings.Contains(stderr, "SIGTERM races") {
		t.Errorf("help does not show the fencing idiom: %s", stderr)
	}
}

// TestPgFencingTable (item 3): dlock_fencing=TABLE names the table.
func TestPgFencingTable(t *testing.T) {
	url := dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
	table := "fence_" + strings.TrimPrefix(lockName(t), "cli-")
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	tg := target{url: url + sep + "dlock_fencing=" + table}
	code, out, stderr := runDlock(t, tg, "run", "-fencing-env", lockName(t), "--", "sh", "-c", `echo "$DLOCK_FENCING_TOKEN"`)
	if code != 0 || strings.TrimSpace(out) != "1" {
		t.Fatalf("exit %d, %q, %s", code, out, stderr)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil || n != 1 {
		t.Fatalf("table %s: %d rows, %v", table, n, err)
	}
	_, _ = conn.Exec(context.Background(), "DROP TABLE "+table)
}

// TestHelpBackends (items 4, 8): every URL parameter is listed.
func TestHelpBackends(t *testing.T) {
	code, _, stderr := runDlock(t, target{url: "file:///nonexistent"}, "help", "backends")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, p := range []string{"dlock_lease", "dlock_fencing", "master_set", "dial_timeout", "client_name", "unix://", "pg:", "connect_timeout", "sslmode"} {
		if !strings.Contains(stderr, p) {
			t.Errorf("help backends does not list %s", p)
		}
	}
}

// openPTY opens a pseudo-terminal pair through /dev/ptmx.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// ptyRun runs dlock args as the session leader of a new pty (the way a
// terminal runs a shell's foreground job) and returns the master side, the
// command, and a buffer collecting the terminal's output.
func ptyRun(t *testing.T, tg target, args ...string) (*os.File, *exec.Cmd, *testserver.SyncBuffer) {
	m, s := openPTY(t)
	cmd := exec.Command(dlockBinary(t), args...)
	cmd.Env = append(os.Environ(), "DLOCK_BACKEND="+tg.url)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	out := &testserver.SyncBuffer{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	return m, cmd, out
}

func waitOutput(t *testing.T, out *testserver.SyncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q does not show %q", out.String(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("dlock did not end")
	}
	return cmd.ProcessState.ExitCode()
}

// TestInteractive (item 5): under a pty, COMMAND reads the terminal (it is
// the foreground group), ^C reaches it, and dlock keeps the promise of
// item 2 (the group is dlock's supervisor's).
func TestInteractive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		m, cmd, out := ptyRun(t, tg, "run", lockName(t), "--", "sh", "-c", `echo prompt; read a; echo "got $a"`)
		waitOutput(t, out, "prompt")
		if _, err := m.Write([]byte("hello\n")); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, out, "got hello")
		if code := waitExit(t, cmd); code != 0 {
			t.Fatalf("exit %d; terminal: %q", code, out)
		}

		// ^C goes to COMMAND's group (the foreground one): COMMAND dies
		// of SIGINT, dlock reports 130 and releases.
		name := lockName(t)
		m, cmd, out = ptyRun(t, tg, "run", name, "--", "sh", "-c", `echo started; exec sleep 60`)
		waitOutput(t, out, "started")
		time.Sleep(100 * time.Millisecond)
		if _, err := m.Write([]byte{3}); err != nil {
			t.Fatal(err)
		}
		if code := waitExit(t, cmd); code != 130 {
			t.Fatalf("^C: exit %d, want 130; terminal: %q", code, out)
		}
		if code, out, _ := runDlock(t, tg, "status", name); code != 0 || out != "free\n" {
			t.Errorf("status after ^C: exit %d, %q", code, out)
		}
	})
}

// TestJobControl (item 5): in an interactive shell under a pty, ^Z stops
// COMMAND and dlock's job (the shell says Stopped), fg continues both with
// COMMAND back in the foreground: it still reads the terminal.
func TestJobControl(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	bin := dlockBinary(t)
	m, s := openPTY(t)
	cmd := exec.Command(bash, "--norc", "--noprofile", "-i")
	cmd.Env = append(os.Environ(), "PS1=$ ", "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"),
		"DLOCK_BACKEND=file://"+filepath.Join(t.TempDir(), "locks"))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	out := &testserver.SyncBuffer{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	write := func(s string) {
		if _, err := m.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	write(`dlock run job -- sh -c 'echo reading; read a; echo "got-$a"'` + "\n")
	waitOutput(t, out, "reading")
	time.Sleep(300 * time.Millisecond)
	write("\x1a") // ^Z
	waitOutput(t, out, "Stopped")
	write("fg\n")
	time.Sleep(300 * time.Millisecond)
	write("hello\n")
	waitOutput(t, out, "got-hello")
	write("echo status=$?\n")
	waitOutput(t, out, "status=0")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// startDlock starts dlock args in the background; its result comes on the
// returned channel.
type result struct {
	code   int
	stderr string
	at     time.Time
}

func startDlock(t *testing.T, tg target, args ...string) (<-chan result, string) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(dlockBinary(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DLOCK_BACKEND="+tg.url)
	var stderr testserver.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	ch := make(chan result, 1)
	go func() {
		_ = cmd.Wait()
		ch <- result{cmd.ProcessState.ExitCode(), stderr.String(), time.Now()}
	}()
	return ch, dir
}

func await(t *testing.T, ch <-chan result, within time.Duration) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(within):
		t.Fatalf("dlock did not end within %v", within)
		return result{}
	}
}

// TestWaitRidesOutOutage (item 6): with -wait, a server that is down when
// dlock starts, or restarts while dlock waits, does not end the wait: dlock
// acquires once the server is back; a wait that ends first is exit 75
// naming the server's error.
func TestWaitRidesOutOutage(t *testing.T) {
	t.Run("valkey", func(t *testing.T) {
		t.Parallel()
		dlockBinary(t) // built before anything is timed
		v := testserver.NewRedis(t)
		tg := target{url: "valkey://" + v.Addr() + "?dlock_lease=2s"}
		// Down at start, never up within the wait: 75 naming the error.
		start := time.Now()
		code, _, stderr := runDlock(t, tg, "run", "-wait", "1.5", lockName(t), "--", "true")
		if code != exitNotAcquired || !strings.Contains(stderr, v.Addr()) || !strings.Contains(stderr, "connection refused") {
			t.Fatalf("server down through the wait: exit %d after %v: %s", code, time.Since(start), stderr)
		}
		t.Logf("server down through -wait 1.5: exit 75 after %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr))
		// Down at start, up after 1s.
		ch, dir := startDlock(t, tg, "run", "-wait", "30s", lockName(t), "--", "sh", "-c", "touch ran")
		time.Sleep(time.Second)
		v.Start()
		up := time.Now()
		r := await(t, ch, 40*time.Second)
		if r.code != 0 || !fileExists(filepath.Join(dir, "ran")) {
			t.Fatalf("server up during the wait: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("server down at start, up after 1s: command ran, dlock done %v after the server was up", r.at.Sub(up).Round(time.Millisecond))
		// Restart while waiting for a held lock.
		name := lockName(t)
		h := startHolder(t, tg, name, "")
		ch, dir = startDlock(t, tg, "run", "-wait", "30s", name, "--", "sh", "-c", "touch ran")
		time.Sleep(500 * time.Millisecond)
		v.Stop()
		time.Sleep(500 * time.Millisecond)
		v.Start()
		up = time.Now()
		r = await(t, ch, 40*time.Second)
		if r.code != 0 || !fileExists(filepath.Join(dir, "ran")) {
			t.Fatalf("server restarted during the wait: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("server restarted while waiting: waiter ran %v after the server was back", r.at.Sub(up).Round(time.Millisecond))
		if code := h.stop(t); code != exitLost {
			t.Errorf("holder across a restart without persistence: exit %d, want %d; %s", code, exitLost, h.stderr)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
		dlockBinary(t)
		s := testserver.StartPG(t)
		tg := target{url: s.URL}
		s.Stop(t)
		start := time.Now()
		code, _, stderr := runDlock(t, tg, "run", "-wait", "1.5", lockName(t), "--", "true")
		if code != exitNotAcquired || !strings.Contains(stderr, "127.0.0.1") || !strings.Contains(stderr, "connection refused") {
			t.Fatalf("server down through the wait: exit %d after %v: %s", code, time.Since(start), stderr)
		}
		t.Logf("server down through -wait 1.5: exit 75 after %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr))
		ch, dir := startDlock(t, tg, "run", "-wait", "60s", lockName(t), "--", "sh", "-c", "touch ran")
		time.Sleep(time.Second)
		s.Start(t)
		up := time.Now()
		r := await(t, ch, 70*time.Second)
		if r.code != 0 || !fileExists(filepath.Join(dir, "ran")) {
			t.Fatalf("server up during the wait: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("server down at start, up after 1s: command ran, dlock done %v after the server was up", r.at.Sub(up).Round(time.Millisecond))
		name := lockName(t)
		h := startHolder(t, tg, name, "")
		ch, dir = startDlock(t, tg, "run", "-wait", "60s", name, "--", "sh", "-c", "touch ran")
		time.Sleep(500 * time.Millisecond)
		s.Stop(t)
		time.Sleep(500 * time.Millisecond)
		s.Start(t)
		up = time.Now()
		r = await(t, ch, 70*time.Second)
		if r.code != 0 || !fileExists(filepath.Join(dir, "ran")) {
			t.Fatalf("server restarted during the wait: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("server restarted while waiting: waiter ran %v after the server was back", r.at.Sub(up).Round(time.Millisecond))
		if code := h.stop(t); code != exitLost {
			t.Errorf("holder across a restart: exit %d, want %d; %s", code, exitLost, h.stderr)
		}
	})
}

// silentServer accepts connections and never answers.
func silentServer(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// TestSilentServer (item 6): a server that accepts and never answers holds
// neither -try nor -wait 3s for long, and the message names host:port.
func TestSilentServer(t *testing.T) {
	dlockBinary(t)
	addr := silentServer(t)
	for _, url := range []string{"postgres://u@" + addr + "/db?sslmode=disable", "valkey://" + addr, "redlock://" + addr + "," + addr + "," + addr} {
		tg := target{url: url}
		for _, c := range []struct {
			args []string
			code int
			max  time.Duration
		}{
			{[]string{"-try"}, exitUnavailable, 15 * time.Second},
			{[]string{"-wait", "3s"}, exitNotAcquired, 10 * time.Second},
		} {
			start := time.Now()
			code, _, stderr := runDlock(t, tg, append(append([]string{"run"}, c.args...), lockName(t), "--", "true")...)
			took := time.Since(start)
			if code != c.code || took > c.max || !strings.Contains(stderr, addr) {
				t.Errorf("%s %v: exit %d after %v (want %d within %v): %s", url, c.args, code, took, c.code, c.max, stderr)
			}
			t.Logf("%s %v: exit %d after %v", strings.SplitN(url, ":", 2)[0], c.args, code, took.Round(time.Millisecond))
		}
	}
}

// TestFlockHabits (item 7).
func TestFlockHabits(t *testing.T) {
	tg := target{url: "file://" + filepath.Join(t.TempDir(), "locks")}
	name := lockName(t)
	if code, out, stderr := runDlock(t, tg, "run", "-wait", "5", name, "--", "echo", "ok"); code != 0 || out != "ok\n" {
		t.Errorf("-wait 5: exit %d, %q, %s", code, out, stderr)
	}
	if code, out, stderr := runDlock(t, tg, "run", "-c", "echo $((1+2))", name); code != 0 || out != "3\n" {
		t.Errorf("-c before NAME: exit %d, %q, %s", code, out, stderr)
	}
	if code, out, stderr := runDlock(t, tg, "run", name, "-c", "echo $((2+2)); exit 4"); code != 4 || out != "4\n" {
		t.Errorf("NAME -c (flock's form): exit %d, %q, %s", code, out, stderr)
	}
	if code, _, stderr := runDlock(t, tg, "run", name, "-try", "--", "true"); code != exitUsage || !strings.Contains(stderr, "flags go before NAME") {
		t.Errorf("flag after NAME: exit %d, %s", code, stderr)
	}
	if code, out, _ := runDlock(t, tg, "run", name, "--", "sh", "-c", "echo -try"); code != 0 || out != "-try\n" {
		t.Errorf("-- then COMMAND: exit %d, %q", code, out)
	}
	h := startHolder(t, tg, name, "")
	if code, _, stderr := runDlock(t, tg, "run", "-try", "-E", "3", name, "--", "true"); code != 3 {
		t.Errorf("-E 3 -try on a held lock: exit %d, %s", code, stderr)
	}
	if code, _, stderr := runDlock(t, tg, "run", "-wait", "0.2", "-E", "9", name, "--", "true"); code != 9 {
		t.Errorf("-E 9 -wait 0.2 on a held lock: exit %d, %s", code, stderr)
	}
	h.stop(t)
	for _, args := range [][]string{{"version"}, {"-V"}} {
		if code, out, stderr := runDlock(t, tg, args...); code != 0 || !strings.HasPrefix(out, "dlock ") || !strings.Contains(out, "go1") {
			t.Errorf("%v: exit %d, %q, %s", args, code, out, stderr)
		}
	}
}

// TestSymlinkRefused (item 7): a lock file replaced by a symbolic link is a
// clear error, exit 64.
func TestSymlinkRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "locks")
	tg := target{url: "file://" + dir}
	name := lockName(t)
	if code, _, stderr := runDlock(t, tg, "run", name, "--", "true"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	other := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(other, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Plant the link at the lock file's name (fs: r-NAME, the
	// reader-writer lock whose write side run takes). The run removes its
	// idle lock file at exit; the link replaces it in case it did not (seen
	// once on a loaded machine: this test is about the link, not the
	// removal).
	plantLink(t, other, filepath.Join(dir, "r-"+name))
	code, _, stderr := runDlock(t, tg, "run", name, "--", "true")
	if code != exitUsage || !strings.Contains(stderr, "symbolic link") {
		t.Errorf("symlinked lock file: exit %d, %s", code, stderr)
	}
	if b, _ := os.ReadFile(other); string(b) != "keep" {
		t.Errorf("the link's target was written: %q", b)
	}

	// Planted while a waiter waits: the wait ends at once with 64, not at
	// the end of -wait.
	name = lockName(t)
	h := startHolder(t, tg, name, "")
	ch, _ := startDlock(t, tg, "run", "-wait", "60s", name, "--", "true")
	time.Sleep(300 * time.Millisecond)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), name) {
			plantLink(t, other, filepath.Join(dir, e.Name()))
		}
	}
	start := time.Now()
	r := await(t, ch, 30*time.Second)
	if r.code != exitUsage || !strings.Contains(r.stderr, "symbolic link") {
		t.Errorf("symlink planted during a wait: exit %d after %v: %s", r.code, time.Since(start), r.stderr)
	}
	if code := h.wait(t); code != exitLost {
		t.Errorf("holder whose lock file was replaced: exit %d, want %d", code, exitLost)
	}
}

// plantLink makes path a symbolic link to target in one step, whatever
// path is now (a symbolic link made beside it and renamed over it): removing
// the file first left a moment in which a waiter whose file vanished opens
// (and so creates) the file that has the name, and the link then failed
// with "file exists".
func plantLink(t *testing.T, target, path string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".plant-"+filepath.Base(path))
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestURLForms (item 8): forms the libraries parse, through the binary.
func TestURLForms(t *testing.T) {
	t.Run("postgres key=value", func(t *testing.T) {
		url := dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
		c, err := pgx.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		kv := fmt.Sprintf("pg:host=%s port=%d user=%s dbname=%s sslmode=disable application_name=dlock", c.Host, c.Port, c.User, c.Database)
		if code, out, stderr := runDlock(t, target{url: kv}, "run", lockName(t), "--", "echo", "ok"); code != 0 || out != "ok\n" {
			t.Errorf("%s: exit %d, %q, %s", kv, code, out, stderr)
		}
	})
	t.Run("valkey parameters", func(t *testing.T) {
		addr := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_ADDR")
		for _, u := range []string{"valkey://" + addr + "?client_name=dlocktest&dial_timeout=2s&dlock_lease=3s", "redis://" + addr + "/2", "valkey://" + addr + "?protocol=2&client_cache=0"} {
			if code, out, stderr := runDlock(t, target{url: u}, "run", lockName(t), "--", "echo", "ok"); code != 0 || out != "ok\n" {
				t.Errorf("%s: exit %d, %q, %s", u, code, out, stderr)
			}
		}
	})
	t.Run("valkey sentinel", func(t *testing.T) {
		sentinels := dlocktest.RequireEnv(t, "DLOCK_TEST_VALKEY_SENTINEL") // master "dlock" (.ci/servers)
		u := "valkey://" + sentinels + "?master_set=dlock"
		name := lockName(t)
		h := startHolder(t, target{url: u}, name, "")
		if code, _, stderr := runDlock(t, target{url: u}, "run", "-try", name, "--", "true"); code != exitNotAcquired {
			t.Errorf("%s: -try beside a holder: exit %d, %s", u, code, stderr)
		}
		if code := h.stop(t); code != 0 {
			t.Errorf("%s: holder exit %d: %s", u, code, h.stderr)
		}
	})
	t.Run("valkey unix socket", func(t *testing.T) {
		if _, err := exec.LookPath("redis-server"); err != nil {
			t.Skip("redis-server not found")
		}
		sock := filepath.Join(t.TempDir(), "v.sock")
		cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		waitFile(t, sock)
		u := "unix://" + sock + "?db=1"
		if code, out, stderr := runDlock(t, target{url: u}, "run", lockName(t), "--", "echo", "ok"); code != 0 || out != "ok\n" {
			t.Errorf("%s: exit %d, %q, %s", u, code, out, stderr)
		}
	})
}

// TestNoSecretPrinted (item 9): no stderr or stdout line of a failing run
// shows the password, whatever form the backend string takes.
func TestNoSecretPrinted(t *testing.T) {
	const pw = "Sup3rS3cretPW"
	down := "127.0.0.1:" + strconv.Itoa(testserver.FreePort(t))
	backends := []string{
		"redlock://:" + pw + "@" + down,
		"redlock://u:" + pw + "@" + down + "," + down + "," + down,
		"pg:host=127.0.0.1 port=" + strings.Split(down, ":")[1] + " user=u password=" + pw + " dbname=d",
		"pg:host=127.0.0.1 port=x password=" + pw,
		"pg:host=127.0.0.1 password='" + pw + "' port=x",
		"postgres://u@" + down + "/db?password=" + pw,
		"postgres://u:" + pw + "@" + down + "/db",
		"postgres://u:" + pw + "@h:notaport/db",
		"postgresql://u:" + pw + "@" + down + "/db?dlock_fencing=bad%20table&sslmode=disable",
		"file://u:" + pw + "@localhost/tmp/x",
		"file://u:" + pw + "@otherhost/tmp/x",
		"valkey://:" + pw + "@" + down,
		"valkey://u:" + pw + "@" + down + "/notadb",
		"valkey://u:" + pw + "@h:x",
		"rediss://u:" + pw + "@" + down + "?dial_timeout=bad",
		"valkey://u:" + pw + "@" + down + "?dlock_lease=forever",
		"ftp://u:" + pw + "@h",
		"nonsense " + pw,
	}
	if addr := os.Getenv("DLOCK_TEST_VALKEY_ADDR"); addr != "" {
		backends = append(backends, "valkey://u:"+pw+"@"+addr) // the server refuses AUTH
	}
	if url := os.Getenv("DLOCK_TEST_PG_URL"); url != "" {
		if c, err := pgx.ParseConfig(url); err == nil {
			backends = append(backends, fmt.Sprintf("postgres://nosuchuser:%s@%s:%d/%s?sslmode=disable", pw, c.Host, c.Port, c.Database))
		}
	}
	for _, b := range backends {
		for _, args := range [][]string{
			{"run", "-try", "-verbose", "x", "--", "true"},
			{"run", "-wait", "0.5", "-verbose", "x", "--", "true"},
			{"status", "-verbose", "x"},
		} {
			for _, via := range []string{"env", "flag"} {
				tg := target{url: b}
				if via == "flag" {
					tg.url = ""
					args = append([]string{args[0], "-backend", b}, args[1:]...)
				}
				code, out, stderr := runDlock(t, tg, args...)
				if code == 0 {
					t.Errorf("%s %v: succeeded", b, args)
				}
				if strings.Contains(stderr, pw) || strings.Contains(out, pw) {
					t.Errorf("%s %v (%s): the password is printed:\n%s%s", b, args, via, out, stderr)
				}
			}
		}
	}
}

// TestChildEnv (item 10): COMMAND does not inherit $DLOCK_BACKEND.
func TestChildEnv(t *testing.T) {
	tg := target{url: "file://" + filepath.Join(t.TempDir(), "locks")}
	code, out, stderr := runDlock(t, tg, "run", lockName(t), "--", "sh", "-c", `echo "${DLOCK_BACKEND-unset}"`)
	if code != 0 || out != "unset\n" {
		t.Errorf("COMMAND sees DLOCK_BACKEND: exit %d, %q, %s", code, out, stderr)
	}
	code, _, stderr = runDlock(t, tg, "help")
	if code != 0 || !strings.Contains(stderr, "/proc/PID/cmdline") || !strings.Contains(stderr, "COMMAND does not inherit $DLOCK_BACKEND") {
		t.Errorf("help does not say where the password is visible: %s", stderr)
	}
}

// TestCrossVet (item 11): cmd/dlock vets on darwin and freebsd, and on
// windows the build stops with a message that says why.
func TestCrossVet(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-vetting compiles the standard library for each system")
	}
	for _, goos := range []string{"darwin", "freebsd"} {
		cmd := exec.Command("go", "vet", ".")
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s go vet: %v\n%s", goos, err, out)
		}
	}
	// On Windows the command builds (so does the whole module) and says
	// at run time that it needs a Unix system.
	cmd := exec.Command("go", "vet", ".")
	cmd.Env = append(os.Environ(), "GOOS=windows", "GOARCH=amd64", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("GOOS=windows go vet: %v\n%s", err, out)
	}
}

// TestFencingIdiom (item 3): the shell idiom of dlock help, run as shown
// (psql with the PG* variables), counts under fenced runs and refuses a
// stale token.
func TestFencingIdiom(t *testing.T) {
	url := dlocktest.RequireEnv(t, "DLOCK_TEST_PG_URL")
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("no psql")
	}
	c, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	schema := "idiom_" + strings.TrimPrefix(lockName(t), "cli-")
	if _, err := conn.Exec(context.Background(), "CREATE SCHEMA "+schema+"; CREATE TABLE "+schema+".counter (id int PRIMARY KEY, n int, token bigint); INSERT INTO "+schema+".counter VALUES (1, 0, 0)"); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") }()
	const idiom = `psql -c "UPDATE counter SET n = n + 1,
    token = $DLOCK_FENCING_TOKEN WHERE id = 1 AND token <= $DLOCK_FENCING_TOKEN" | grep -qx "UPDATE 1" || exit 76`
	code, _, stderr := runDlock(t, target{url: "file:///nonexistent"}, "help")
	if code != 0 || !strings.Contains(stderr, idiom) {
		t.Fatalf("help does not show the idiom as tested")
	}
	env := []string{"PGHOST=" + c.Host, "PGPORT=" + strconv.Itoa(int(c.Port)), "PGUSER=" + c.User, "PGDATABASE=" + c.Database,
		"PGOPTIONS=-c search_path=" + schema}
	name := lockName(t)
	for i := range 3 {
		cmd := exec.Command(dlockBinary(t), "run", "-fencing-env", name, "--", "sh", "-c", idiom)
		cmd.Env = append(append(os.Environ(), env...), "DLOCK_BACKEND="+url)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
	}
	// A holder whose token is older than the store's is refused.
	stale := exec.Command("sh", "-c", idiom)
	stale.Env = append(append(os.Environ(), env...), "DLOCK_FENCING_TOKEN=1")
	if err := stale.Run(); err == nil || stale.ProcessState.ExitCode() != 76 {
		t.Fatalf("a stale token was not refused: %v", err)
	}
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT n FROM "+schema+".counter").Scan(&n); err != nil || n != 3 {
		t.Fatalf("counter %d (%v), want 3", n, err)
	}
}
