package pg_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/pg"
)

// privateServer is a throwaway PostgreSQL server that the test owns, so it
// may restart it.
type privateServer struct {
	bin, dir, url string
	port          int
	asPostgres    bool
}

// startPrivateServer starts a PostgreSQL server of the test's own, or
// returns nil when that is impractical here (no binaries; root without a
// postgres user).
func startPrivateServer(t *testing.T) *privateServer {
	t.Helper()
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		for _, p := range []string{"/usr/lib/postgresql/17/bin/initdb", "/usr/lib/postgresql/16/bin/initdb", "/usr/lib/postgresql/15/bin/initdb"} {
			if _, err := os.Stat(p); err == nil {
				initdb = p
				break
			}
		}
	}
	if initdb == "" {
		return nil
	}
	s := &privateServer{bin: filepath.Dir(initdb)}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			return nil
		}
		s.asPostgres = true
		s.dir, err = os.MkdirTemp("", "dlock-pg-restart-")
		if err != nil {
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	if out, err := s.run("initdb", "-D", s.data(), "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		t.Logf("initdb: %v\n%s", err, out)
		return nil
	}
	if out, err := s.run("pg_ctl", "-D", s.data(), "-w", "-l", filepath.Join(s.dir, "log"), "-o",
		fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", s.port, s.dir), "start"); err != nil {
		t.Logf("pg_ctl start: %v\n%s", err, out)
		return nil
	}
	t.Cleanup(func() { _, _ = s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop") })
	s.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
	return s
}

func (s *privateServer) data() string { return filepath.Join(s.dir, "data") }

func (s *privateServer) run(tool string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, tool)
	var cmd *exec.Cmd
	if s.asPostgres {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// TestServerRestart restarts a private server while locks are held: every
// lease reports loss within the loss interval, the locks are free after the
// restart, and the backend works on.
//
// Where no private server can be started, it simulates the restart by
// terminating every session that holds a lock on the shared test server
// (what a restart does to the client side: every connection dies at once),
// and says so.
func TestServerRestart(t *testing.T) {
	url := testURL(t)
	srv := startPrivateServer(t)
	if srv != nil {
		url = srv.url
	} else {
		t.Log("no private server could be started: simulating the restart with pg_terminate_backend of every lock session")
	}
	b, _ := newBackend(t, url, pg.WithLossInterval(500*time.Millisecond))
	holder, _ := newBackend(t, url)
	ctx := ctxT(t, time.Minute)
	name := uniq(t)
	// Leases of every kind, on shared and on own (waited-for) connections.
	var ls []*pg.Lease
	for i := range 5 {
		l, ok, err := b.TryLock(ctx, fmt.Sprint(name, i))
		mustTry(t, ok, err)
		ls = append(ls, l)
	}
	h, ok, err := holder.TryLock(ctx, name+"w")
	mustTry(t, ok, err)
	got := make(chan *pg.Lease, 1)
	go func() {
		l, err := b.Lock(ctx, name+"w")
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	time.Sleep(100 * time.Millisecond)
	_ = h.Release(ctx)
	ls = append(ls, <-got)
	r, ok, err := b.TryRLock(ctx, name)
	mustTry(t, ok, err)
	s, ok, err := b.TryAcquire(ctx, name, 3)
	mustTry(t, ok, err)
	ls = append(ls, r, s)
	if ls[0].PID() == ls[5].PID() {
		t.Fatal("the waited-for lease should be on its own connection")
	}

	start := time.Now()
	if srv != nil {
		if out, err := srv.run("pg_ctl", "-D", srv.data(), "-m", "fast", "-w", "restart", "-l", filepath.Join(srv.dir, "log"), "-o",
			fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", srv.port, srv.dir)); err != nil {
			t.Fatalf("restart: %v\n%s", err, out)
		}
	} else {
		pids := map[uint32]bool{}
		for _, l := range ls {
			pids[l.PID()] = true
		}
		for pid := range pids {
			terminate(t, url, pid)
		}
	}
	for _, l := range ls {
		waitLost(t, l, 3*time.Second)
	}
	t.Logf("all %d leases reported loss %v after the restart began", len(ls), time.Since(start))
	for _, l := range ls {
		if err := l.Release(ctx); !errors.Is(err, dlock.ErrLockLost) {
			t.Fatalf("Release after restart: %v", err)
		}
	}
	// The locks are free, and the backend (whose pool reconnects) works.
	for i := range 5 {
		l, err := b.Lock(ctxT(t, 10*time.Second), fmt.Sprint(name, i))
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
