package dlocktest

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// childEnv carries a helper process's orders: the suite re-executes the
// test binary, which reaches Run again and, seeing this variable, takes a
// lock instead of running the suite.
const childEnv = "DLOCKTEST_CHILD"

// childSpec is what a helper process is told to do.
type childSpec struct {
	Kind  string // "mutex", "read", "write", "upgradeable", "semaphore"
	Limit int
	Name  string // hex, so any bytes survive the environment
	Space string
	Wait  bool   // say "waiting" before the acquisition starts
	Owner string // the owner text of the acquisition
}

// child is a helper process holding (or about to hold) a lock.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	wg    sync.WaitGroup
}

// startChild re-executes the test binary to take a lock of kind on name,
// and waits until the helper holds it. It returns the helper and the
// lock's fencing token (0 if none).
func startChild(t *testing.T, top, space, kind, name string, limit int) (*child, uint64) {
	t.Helper()
	return startOwnedChild(t, top, space, kind, name, limit, "")
}

// startOwnedChild is startChild with the owner text of the helper's
// acquisition.
func startOwnedChild(t *testing.T, top, space, kind, name string, limit int, owner string) (*child, uint64) {
	t.Helper()
	c := spawnChild(t, top, childSpec{Kind: kind, Limit: limit, Name: hex.EncodeToString([]byte(name)), Space: space, Owner: owner})
	line := c.expect(t, "acquired")
	var token uint64
	if _, err := fmt.Sscanf(line, "acquired %d", &token); err != nil {
		t.Fatalf("helper process said %q", line)
	}
	return c, token
}

// startWaiter re-executes the test binary to wait for a lock of kind on
// name (a semaphore of limit limit), and returns once the helper is about to start its wait; its
// "acquired" line comes later.
func startWaiter(t *testing.T, top, space, kind, name string, limit int) *child {
	t.Helper()
	c := spawnChild(t, top, childSpec{Kind: kind, Limit: limit, Name: hex.EncodeToString([]byte(name)), Space: space, Wait: true})
	c.expect(t, "waiting")
	return c
}

// spawnChild starts a helper process with spec.
func spawnChild(t *testing.T, top string, spec childSpec) *child {
	t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run="+runPattern(top), "-test.count=1", "-test.v=false", "-test.timeout=2m")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting helper process: %v", err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	c.wg.Go(func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "DLOCKTEST "); ok {
				c.lines <- rest
			}
		}
	})
	t.Cleanup(c.kill)
	return c
}

// expect waits for the helper's next line, which must start with word.
func (c *child) expect(t *testing.T, word string) string {
	t.Helper()
	select {
	case line, ok := <-c.lines:
		if !ok {
			t.Fatalf("helper process ended before saying %q", word)
		}
		if !strings.HasPrefix(line, word) {
			t.Fatalf("helper process said %q, want %q", line, word)
		}
		return line
	case <-time.After(90 * time.Second):
		t.Fatalf("helper process did not say %q within 90s", word)
	}
	return ""
}

// release tells the helper to release its lock and waits until it has.
func (c *child) release(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "release\n"); err != nil {
		t.Fatalf("telling helper to release: %v", err)
	}
	c.expect(t, "released")
	c.stdin.Close()
	if err := c.wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
}

// kill ends the helper with SIGKILL, as a crash would.
func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		_ = c.wait()
	}
}

func (c *child) wait() error {
	for range c.lines { // drain, so the reader goroutine can end
	}
	c.wg.Wait()
	return c.cmd.Wait()
}

// runChild is the helper process's side: take the lock, say so, and hold it
// until told to release (or until stdin closes).
func runChild[L backend.Lease](t *testing.T, h Harness[L], raw string) {
	var spec childSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatalf("bad %s: %v", childEnv, err)
	}
	nameBytes, err := hex.DecodeString(spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	node := h.New(t, spec.Space)
	var g *dlock.Guard[L]
	switch spec.Kind {
	case "mutex":
		g = dlock.NewMutex(node.(backend.Locker[L]))
	case "read":
		g = dlock.NewRWMutex(node.(backend.RWLocker[L])).Read()
	case "write":
		g = dlock.NewRWMutex(node.(backend.RWLocker[L])).Write()
	case "upgradeable":
		g = dlock.NewRWMutex(node.(backend.RWLocker[L])).Upgradeable()
	case "semaphore":
		g = dlock.NewSemaphore(node.(backend.Semaphore[L]), spec.Limit)
	default:
		t.Fatalf("unknown kind %q", spec.Kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if spec.Wait {
		fmt.Printf("DLOCKTEST waiting\n")
	}
	if spec.Owner != "" {
		ctx = dlock.ContextWithOwner(ctx, spec.Owner)
	}
	lk, err := g.Acquire(ctx, string(nameBytes))
	if err != nil {
		t.Fatalf("helper process: %v", err)
	}
	token, _ := lk.Token()
	fmt.Printf("DLOCKTEST acquired %d\n", token)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() && sc.Text() != "release" {
	}
	if err := lk.Release(context.Background()); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	fmt.Printf("DLOCKTEST released\n")
}

// runPattern turns a test name into a -test.run pattern that selects it alone.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}
