package faults

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Private servers for the restart scenarios: the shared dev servers are
// never restarted. They are started on first use and stopped by TestMain.
var private struct {
	mu      sync.Mutex
	redis   []*redisServer
	pg      *pgServer
	pgErr   error
	pgTried bool
}

func stopPrivateServers() {
	private.mu.Lock()
	defer private.mu.Unlock()
	for _, r := range private.redis {
		r.stop()
	}
	if private.pg != nil {
		private.pg.stop()
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitDial(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// redisServer is a redis-server without persistence that the test can kill
// and start again on the same port.
type redisServer struct {
	addr string
	port int
	dir  string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

func startRedis(t testing.TB) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		requireOrSkip(t, "redis-server not installed: %v", err)
	}
	_ = bin
	port := freePort(t)
	r := &redisServer{port: port, addr: fmt.Sprintf("127.0.0.1:%d", port), dir: t.TempDir()}
	if err := r.start(); err != nil {
		t.Fatal(err)
	}
	private.mu.Lock()
	private.redis = append(private.redis, r)
	private.mu.Unlock()
	t.Cleanup(r.stop)
	return r
}

func (r *redisServer) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", r.dir,
		"--logfile", filepath.Join(r.dir, "redis.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	r.cmd = cmd
	return waitDial(r.addr, 10*time.Second)
}

// crash kills the server with SIGKILL (its keys are gone: no persistence).
func (r *redisServer) crash() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
		r.cmd = nil
	}
}

func (r *redisServer) stop() { r.crash() }

// pgServer is a throwaway PostgreSQL cluster, run as user postgres when the
// test runs as root (as .ci/servers does).
type pgServer struct {
	bin, data, url, log string
	port                int
}

func pgBin() string {
	if b := os.Getenv("PG_BIN"); b != "" {
		return b
	}
	m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(m) == 0 {
		return ""
	}
	return filepath.Dir(m[len(m)-1])
}

func asPG(args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
	}
	return exec.Command(args[0], args[1:]...)
}

// privatePG returns the private PostgreSQL server, starting it on first use.
func privatePG(t testing.TB) *pgServer {
	t.Helper()
	private.mu.Lock()
	defer private.mu.Unlock()
	if !private.pgTried {
		private.pgTried = true
		private.pg, private.pgErr = startPG(freePort(t))
	}
	if private.pgErr != nil {
		requireOrSkip(t, "private PostgreSQL: %v", private.pgErr)
	}
	return private.pg
}

func startPG(port int) (*pgServer, error) {
	bin := pgBin()
	if bin == "" {
		return nil, fmt.Errorf("PostgreSQL binaries not found (set PG_BIN)")
	}
	dir, err := os.MkdirTemp("", "dlock-faults-pg-")
	if err != nil {
		return nil, err
	}
	_ = os.Chmod(dir, 0o711)
	s := &pgServer{bin: bin, data: filepath.Join(dir, "data"), port: port, log: filepath.Join(dir, "pg.log"),
		url: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "postgres:", dir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("chown: %v: %s", err, out)
		}
	}
	run := func(args ...string) error {
		var out bytes.Buffer
		c := asPG(args...)
		c.Stdout, c.Stderr = &out, &out
		if err := c.Run(); err != nil {
			return fmt.Errorf("%v: %v: %s", args, err, out.Bytes())
		}
		return nil
	}
	if err := run(filepath.Join(bin, "initdb"), "-D", s.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nmax_connections = 200\nfsync = off\nfull_page_writes = off\n", port, dir)
	f, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, _ = f.WriteString(conf)
	f.Close()
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *pgServer) start() error {
	c := asPG(filepath.Join(s.bin, "pg_ctl"), "-D", s.data, "-l", s.log, "-w", "-t", "30", "start")
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl start: %v: %s", err, out)
	}
	return waitDial(fmt.Sprintf("127.0.0.1:%d", s.port), 10*time.Second)
}

// crash stops the server in immediate mode (every session dies at once).
func (s *pgServer) crash() error {
	c := asPG(filepath.Join(s.bin, "pg_ctl"), "-D", s.data, "-m", "immediate", "-w", "-t", "30", "stop")
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl stop: %v: %s", err, out)
	}
	return nil
}

func (s *pgServer) stop() {
	_ = s.crash()
	_ = os.RemoveAll(filepath.Dir(s.data))
}

// requireOrSkip skips t, or fails it under DLOCK_REQUIRE_SERVERS=1.
func requireOrSkip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("DLOCK_REQUIRE_SERVERS") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
