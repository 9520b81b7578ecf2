package testserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SentinelMaster is the master name of the groups StartSentinel starts.
const SentinelMaster = "dlock"

// Sentinel is a private Sentinel-managed group on loopback ports: redis
// servers (one primary, the others its replicas; no persistence) and three
// sentinels that fail the primary over quickly (down after DownAfter,
// failover timeout 2s), all killed at the end of the test. Unlike the
// shared group of .ci/servers, a test may kill its primary.
type Sentinel struct {
	// Sentinels are the sentinels' addresses (a valkey-go client's
	// InitAddress, with SentinelOption.MasterSet = SentinelMaster).
	Sentinels []string
	// DownAfter is the sentinels' down-after-milliseconds.
	DownAfter time.Duration

	t       testing.TB
	rbin    string
	sbin    string
	dir     string
	servers map[string]*proc // by address: the redis servers
	sents   []*proc
}

// proc is one server process of a group.
type proc struct {
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.cmd = nil
}

// StartSentinel starts a group of one primary, replicas replicas and three
// sentinels with down-after-milliseconds downAfter, and waits until the
// sentinels see the primary, its replicas and each other. Keep downAfter
// above 1s: a sentinel pings every min(downAfter, 1s), and its first ping
// to a newly promoted primary goes out when downAfter has passed, so with
// downAfter at or below 1s the sentinels may find the new primary down at
// once and fail it over too. It skips t (fails
// it under DLOCK_REQUIRE_SERVERS=1) when redis-server or redis-sentinel is
// not on PATH.
func StartSentinel(t testing.TB, replicas int, downAfter time.Duration) *Sentinel {
	t.Helper()
	rbin, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server is not on PATH")
	}
	sbin, err := exec.LookPath("redis-sentinel")
	if err != nil {
		unavailable(t, "redis-sentinel is not on PATH")
	}
	g := &Sentinel{t: t, rbin: rbin, sbin: sbin, dir: t.TempDir(), DownAfter: downAfter, servers: map[string]*proc{}}
	t.Cleanup(g.stop)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(g.dir, "sentinel0.log"))
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("the first sentinel's log (end):\n%s", b)
		}
	})
	primary := g.startRedis(t, "", "")
	for range replicas {
		g.startRedis(t, "", primary)
	}
	for i := range 3 {
		g.startSentinel(t, i, primary)
	}
	g.waitReady(t, primary, replicas, 30*time.Second)
	return g
}

func (g *Sentinel) stop() {
	for _, p := range g.sents {
		p.kill()
	}
	for _, p := range g.servers {
		p.kill()
	}
}

// startRedis starts a redis-server on addr (a new port if ""), a replica of
// primary unless that is "", and returns its address.
func (g *Sentinel) startRedis(t testing.TB, addr, primary string) string {
	t.Helper()
	for range 20 {
		a := addr
		if a == "" {
			a = net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
		}
		_, port, _ := net.SplitHostPort(a)
		dir := filepath.Join(g.dir, "redis-"+port)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--protected-mode", "no", "--repl-diskless-sync-delay", "0"}
		if primary != "" {
			h, p, _ := net.SplitHostPort(primary)
			args = append(args, "--replicaof", h, p)
		}
		p, err := g.spawn(g.rbin, args, a)
		if err == nil {
			g.servers[a] = p
			return a
		}
		if addr != "" {
			t.Fatalf("starting redis-server on %s: %v", addr, err)
		}
	}
	t.Fatal("could not start redis-server")
	return ""
}

func (g *Sentinel) startSentinel(t testing.TB, i int, primary string) {
	t.Helper()
	h, pp, _ := net.SplitHostPort(primary)
	for range 20 {
		port := strconv.Itoa(FreePort(t))
		conf := filepath.Join(g.dir, fmt.Sprintf("sentinel%d-%s.conf", i, port))
		m := SentinelMaster
		text := "bind 127.0.0.1\nprotected-mode no\nport " + port + "\ndir " + g.dir + "\n" +
			"logfile " + filepath.Join(g.dir, "sentinel"+strconv.Itoa(i)+".log") + "\n" +
			"sentinel monitor " + m + " " + h + " " + pp + " 2\n" +
			"sentinel down-after-milliseconds " + m + " " + strconv.FormatInt(g.DownAfter.Milliseconds(), 10) + "\n" +
			"sentinel failover-timeout " + m + " 2000\n" +
			"sentinel parallel-syncs " + m + " 2\n"
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		a := net.JoinHostPort("127.0.0.1", port)
		p, err := g.spawn(g.sbin, []string{conf}, a)
		if err == nil {
			g.sents = append(g.sents, p)
			g.Sentinels = append(g.Sentinels, a)
			return
		}
	}
	t.Fatal("could not start redis-sentinel")
}

// spawn starts bin with args and waits until addr answers PING.
func (g *Sentinel) spawn(bin string, args []string, addr string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{addr: addr, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }() // the one Wait; kill waits for it
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if pong(addr) {
			return p, nil
		}
		select {
		case <-p.exited:
			p.cmd = nil
			return nil, fmt.Errorf("%s exited", filepath.Base(bin))
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.kill()
	return nil, os.ErrDeadlineExceeded
}

// waitReady waits until a majority of the sentinels names primary as the
// master, every sentinel sees the two others and knows at least replicas
// replicas, and primary has replicas replicas online.
func (g *Sentinel) waitReady(t testing.TB, primary string, replicas int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	last := "not asked yet"
	for time.Now().Before(deadline) {
		if last = g.notReady(primary, replicas); last == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the sentinel group did not settle within %v: %s", within, last)
}

// notReady says why the group is not ready (see waitReady), or "".
func (g *Sentinel) notReady(primary string, replicas int) string {
	if a, ok := g.majorityPrimary(); !ok || a != primary {
		return fmt.Sprintf("the sentinels do not name %s as the primary", primary)
	}
	for _, s := range g.Sentinels {
		m, err := command(s, "SENTINEL", "MASTER", SentinelMaster)
		if err != nil {
			return fmt.Sprintf("sentinel %s: %v", s, err)
		}
		f := pairs(m)
		n, _ := strconv.Atoi(f["num-slaves"])
		if n < replicas || f["num-other-sentinels"] != "2" || strings.Contains(f["flags"], "down") {
			return fmt.Sprintf("sentinel %s: %v", s, f)
		}
	}
	info, err := command(primary, "INFO", "replication")
	if err != nil || len(info) != 1 {
		return fmt.Sprintf("INFO replication of %s: %v", primary, err)
	}
	if !strings.Contains(info[0], "role:master") || strings.Count(info[0], "state=online") != replicas {
		return fmt.Sprintf("%s: %s", primary, info[0])
	}
	return ""
}

// Primary returns the address the sentinels (a majority of them) name as
// the primary.
func (g *Sentinel) Primary(t testing.TB) string {
	t.Helper()
	a, ok := g.majorityPrimary()
	if !ok {
		t.Fatal("no majority of the sentinels names a primary")
	}
	return a
}

// Replicas returns the addresses of the servers other than primary that
// run.
func (g *Sentinel) Replicas(primary string) []string {
	var out []string
	for a, p := range g.servers {
		if a != primary && p.cmd != nil {
			out = append(out, a)
		}
	}
	return out
}

// Kill kills the server at addr with SIGKILL.
func (g *Sentinel) Kill(t testing.TB, addr string) {
	t.Helper()
	p := g.servers[addr]
	if p == nil || p.cmd == nil {
		t.Fatalf("no server runs on %s", addr)
	}
	p.kill()
}

// Signal sends sig (SIGSTOP, SIGCONT) to the server at addr.
func (g *Sentinel) Signal(t testing.TB, addr string, sig os.Signal) {
	t.Helper()
	p := g.servers[addr]
	if p == nil || p.cmd == nil {
		t.Fatalf("no server runs on %s", addr)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, addr, err)
	}
}

// LagReplicas makes the replicas of primary fall behind it: it freezes
// them (SIGSTOP) and writes junk to the primary (1MB values under
// "dlocktest:lag:*", expiring after 20s) until what the primary has to
// send each replica no longer fits in the kernel's socket buffers (its
// output buffer for each holds at least 1MB): from then on, nothing the
// primary writes reaches a replica before resume (SIGCONT) is called, and
// nothing at all if the primary dies first — as in a failover where the
// replicas were behind.
func (g *Sentinel) LagReplicas(t testing.TB, primary string) (resume func()) {
	t.Helper()
	if sigStop == nil {
		t.Skip("freezing a server needs SIGSTOP (Unix)")
	}
	replicas := g.Replicas(primary)
	for _, r := range replicas {
		g.Signal(t, r, sigStop)
	}
	resume = func() {
		for _, r := range replicas {
			if p := g.servers[r]; p != nil && p.cmd != nil {
				_ = p.cmd.Process.Signal(sigCont)
			}
		}
	}
	junk := strings.Repeat("x", 1<<20)
	list := ""
	for i := range 200 {
		if _, err := command(primary, "SET", "dlocktest:lag:"+strconv.Itoa(i), junk, "PX", "20000"); err != nil {
			resume()
			t.Fatalf("writing junk to the primary %s: %v", primary, err)
		}
		r, err := command(primary, "CLIENT", "LIST", "TYPE", "replica")
		if err != nil || len(r) != 1 {
			resume()
			t.Fatalf("CLIENT LIST on the primary %s: %v", primary, err)
		}
		list = r[0]
		if n := strings.Count(strings.TrimSpace(list), "\n") + 1; n >= len(replicas) && minOmem(list) >= 1<<20 {
			return resume
		}
	}
	resume()
	t.Fatalf("the replicas' output buffers on %s stay empty after 200MB of junk:\n%s", primary, list)
	return nil
}

// minOmem is the smallest omem field of CLIENT LIST's lines (0 if none).
func minOmem(list string) int {
	least := -1
	for line := range strings.SplitSeq(strings.TrimSpace(list), "\n") {
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "omem="); ok {
				n, _ := strconv.Atoi(v)
				if least < 0 || n < least {
					least = n
				}
			}
		}
	}
	return max(least, 0)
}

// Failover kills the primary (SIGKILL), waits until the sentinels promote
// a replica, starts the old primary again, empty, as a replica of the new
// one, and waits until the group is whole again (replicas the number of
// replicas before). It returns the new primary's address and how long the
// promotion took (from the kill until a majority of the sentinels named
// the new primary). between runs
// (if not nil) after the kill, before waiting: a test resumes paused
// replicas there.
func (g *Sentinel) Failover(t testing.TB, within time.Duration, between func()) (string, time.Duration) {
	t.Helper()
	old := g.Primary(t)
	replicas := len(g.Replicas(old))
	t0 := time.Now()
	g.Kill(t, old)
	if between != nil {
		between()
	}
	deadline := time.Now().Add(within)
	var now string
	var took time.Duration
	for {
		if a, ok := g.majorityPrimary(); ok && a != old {
			now = a
			took = time.Since(t0)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sentinels did not promote a replica of %s within %v", old, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Back as a replica from the start (never a writable, empty primary
	// that a client still knowing the old address could write to).
	g.startRedis(t, old, now)
	g.waitReady(t, now, replicas, time.Until(deadline)+10*time.Second)
	return now, took
}

// majorityPrimary is Primary without failing: ok is false when no
// majority of the sentinels agrees.
func (g *Sentinel) majorityPrimary() (string, bool) {
	votes := map[string]int{}
	for _, s := range g.Sentinels {
		r, err := command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelMaster)
		if err != nil || len(r) != 2 {
			continue
		}
		a := net.JoinHostPort(r[0], r[1])
		if votes[a]++; votes[a] >= 2 {
			return a, true
		}
	}
	return "", false
}

// command sends one command in RESP2 to addr and returns its reply
// flattened to strings.
func command(addr string, args ...string) ([]string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	var out []string
	if err := readReply(r, &out); err != nil {
		return nil, err
	}
	return out, nil
}

func readReply(r *bufio.Reader, out *[]string) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return fmt.Errorf("empty reply line")
	}
	switch line[0] {
	case '+', ':':
		*out = append(*out, line[1:])
	case '-':
		return fmt.Errorf("%s", line[1:])
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			*out = append(*out, "")
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		*out = append(*out, string(buf[:n]))
	case '*':
		n, _ := strconv.Atoi(line[1:])
		for range n {
			if err := readReply(r, out); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}

// pairs reads a flat field-value list.
func pairs(kv []string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}
