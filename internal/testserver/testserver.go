// Package testserver starts throwaway PostgreSQL and redis servers that a
// test owns, on loopback ports, so that it may stop, restart or freeze
// them. The shared servers of .ci/servers serve every other test. It is
// imported only by tests.
//
// Where a server cannot be started (no binaries, or root without a
// postgres user), PG and Redis skip the test, or fail it when
// DLOCK_REQUIRE_SERVERS=1 (as in CI): a green CI run always exercised them.
package testserver

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// unavailable skips t, or fails it under DLOCK_REQUIRE_SERVERS=1.
func unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("DLOCK_REQUIRE_SERVERS") == "1" {
		t.Fatalf("%s, and DLOCK_REQUIRE_SERVERS=1", why)
	}
	t.Skip(why)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// PG is a private PostgreSQL server (trust authentication, fsync off) on a
// loopback port, stopped at the end of the test.
type PG struct {
	// URL is the server's connection string (user postgres, database
	// postgres).
	URL  string
	Port int

	bin, dir   string
	asPostgres bool // run the tools as user postgres (the test runs as root)
}

// StartPG starts a private PostgreSQL server, or skips t (fails it under
// DLOCK_REQUIRE_SERVERS=1) when none can be started here.
func StartPG(t testing.TB) *PG {
	t.Helper()
	s, why := TryPG(t)
	if s == nil {
		unavailable(t, why)
	}
	return s
}

// TryPG starts a private PostgreSQL server, or returns nil and why not,
// for a test that has another way to go on.
func TryPG(t testing.TB) (*PG, string) {
	t.Helper()
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		for _, v := range []string{"17", "16", "15"} {
			p := "/usr/lib/postgresql/" + v + "/bin/initdb"
			if _, err := os.Stat(p); err == nil {
				initdb = p
				break
			}
		}
	}
	if initdb == "" {
		return nil, "no PostgreSQL binaries (initdb) found"
	}
	s := &PG{bin: filepath.Dir(initdb)}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "running as root without a postgres user"
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			return nil, "running as root without runuser"
		}
		s.asPostgres = true
		if s.dir, err = os.MkdirTemp("", "dlock-pg-"); err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(s.dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(s.dir) })
	} else {
		s.dir = t.TempDir()
	}
	s.Port = FreePort(t)
	if out, err := s.run("initdb", "-D", s.data(), "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		return nil, fmt.Sprintf("initdb: %v\n%s", err, out)
	}
	if out, err := s.run("pg_ctl", s.ctlArgs("start")...); err != nil {
		return nil, fmt.Sprintf("pg_ctl start: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop") })
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.Port)
	return s, ""
}

// Ctl runs pg_ctl with args (such as "-m", "immediate", "restart") on the
// server, waiting for it, and fails t if pg_ctl fails.
func (s *PG) Ctl(t testing.TB, args ...string) {
	t.Helper()
	if out, err := s.run("pg_ctl", s.ctlArgs(args...)...); err != nil {
		t.Fatalf("pg_ctl %v: %v\n%s", args, err, out)
	}
}

// Start starts the stopped server again on its port.
func (s *PG) Start(t testing.TB) { t.Helper(); s.Ctl(t, "start") }

// Stop stops the server at once (-m immediate): sessions end without
// goodbye, as in a crash.
func (s *PG) Stop(t testing.TB) { t.Helper(); s.Ctl(t, "-m", "immediate", "stop") }

func (s *PG) data() string { return filepath.Join(s.dir, "data") }

func (s *PG) ctlArgs(args ...string) []string {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", s.Port, s.dir)
	return append([]string{"-D", s.data(), "-w", "-l", filepath.Join(s.dir, "log"), "-o", opts}, args...)
}

func (s *PG) run(tool string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, tool)
	cmd := exec.Command(path, args...)
	if s.asPostgres {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// Redis is a private redis-server (no persistence) on a loopback port,
// killed at the end of the test.
type Redis struct {
	Port int

	t        testing.TB
	bin, dir string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd's process was waited for
}

// StartRedis starts a private redis-server, or skips t (fails it under
// DLOCK_REQUIRE_SERVERS=1) when redis-server is not on PATH.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	s := NewRedis(t)
	for range 20 {
		if s.start() == nil {
			return s
		}
		s.Port = FreePort(t) // taken in the meantime: another port
	}
	t.Fatal("could not start redis-server")
	return nil
}

// NewRedis returns a private redis-server that is not started yet (see
// Start), on a port chosen now.
func NewRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server is not on PATH")
	}
	s := &Redis{t: t, bin: bin, dir: t.TempDir(), Port: FreePort(t)}
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's host:port.
func (s *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Start starts the server, empty, on its port and waits until it answers.
func (s *Redis) Start() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatalf("starting redis-server on %d: %v", s.Port, err)
	}
}

// Restart kills the server and starts it again, empty, on the same port.
func (s *Redis) Restart() {
	s.t.Helper()
	s.Stop()
	s.Start()
}

// Stop kills the server (SIGKILL), if it runs.
func (s *Redis) Stop() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.cmd = nil
	}
}

// Process is the running server's process, for tests that freeze it.
func (s *Redis) Process() *os.Process {
	if s.cmd == nil {
		return nil
	}
	return s.cmd.Process
}

func (s *Redis) start() error {
	cmd := exec.Command(s.bin, "--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir, "--protected-mode", "no")
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	exited := s.exited
	go func() { _ = cmd.Wait(); close(exited) }() // the one Wait; Stop waits for it
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if pong(s.Addr()) {
			return nil
		}
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("redis-server exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.Stop()
	return os.ErrDeadlineExceeded
}

// pong reports whether a server on addr answers PING.
func pong(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	buf := make([]byte, 7)
	n, _ := c.Read(buf)
	return string(buf[:n]) == "+PONG\r\n"
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes (a logger's, a
// child process's stderr) and reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
