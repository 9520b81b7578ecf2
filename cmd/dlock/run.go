//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock"
)

// forwarded are the signals dlock passes on to COMMAND; the first three
// also end a wait for the lock.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// session runs one dlock run or status: it owns the signal channel.
type session struct {
	cfg            *config
	name           string
	stderr         io.Writer
	sigs           chan os.Signal
	hosts          []string
	connectTimeout time.Duration
}

func (s *session) serverNames() string {
	if len(s.hosts) == 0 {
		return "the backend"
	}
	return strings.Join(s.hosts, ",")
}

// talk says whether dlock reports progress (waiting, retrying) on stderr.
func (s *session) talk() bool { return s.cfg.verbose || isTerminal(s.stderr) }

// lock connects to the backend and takes the lock, waiting as the flags
// say: -try tries once (connecting bounded by the connect timeout), -wait D
// keeps trying, through server errors too, until D has passed, no flag
// until the lock is taken. An INT, TERM or HUP ends the wait. It returns
// the held lock and how to close the backend, or dlock's exit status.
func (s *session) lock(spec backendSpec, try bool) (dlock.Handle, func(), int) {
	s.hosts = spec.hosts
	s.connectTimeout = spec.connectTimeout()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	switch {
	case try:
		// A try does not wait for the lock, but connecting and the try's
		// round trips take time: bounded, so that a silent server does not
		// hold dlock.
		ctx, cancel = context.WithTimeout(ctx, s.connectTimeout+5*time.Second)
		defer cancel()
	case s.cfg.wait > 0:
		ctx, cancel = context.WithTimeout(ctx, s.cfg.wait)
		defer cancel()
	}
	var lastErr error
	signalled := s.cancelOnSignal(cancel)
	if !try && s.talk() {
		t := time.AfterFunc(time.Second, func() {
			fmt.Fprintf(s.stderr, "dlock: waiting for lock %q …\n", s.name)
		})
		defer t.Stop()
	}
	told := ""
	note := func(err error) {
		lastErr = err
		if s.talk() && err.Error() != told {
			told = err.Error()
			fmt.Fprintf(s.stderr, "dlock: %v; trying again until the wait ends\n", err)
		}
	}

	locker, closeBackend, err := spec.open(ctx, s.cfg, !try, note)
	if err != nil {
		if code := signalled(); code != 0 {
			return nil, nil, code
		}
		if !try && ctx.Err() != nil && !isConfigErr(err) {
			return nil, nil, s.acquireErr(fmt.Errorf("%w: %w", dlock.ErrNotAcquired, ctx.Err()), err)
		}
		return nil, nil, s.acquireErr(err, nil)
	}
	// The engine's wait rides out server errors until ctx ends; then its
	// error matches ErrNotAcquired and ctx.Err() and wraps the last one.
	hold := locker.Hold
	if try {
		hold = locker.TryHold
	}
	lk, err := hold(ctx, s.name)
	if code := signalled(); code != 0 {
		if lk != nil {
			_ = lk.Release(context.Background())
		}
		closeBackend()
		return nil, nil, code
	}
	if err != nil {
		closeBackend()
		return nil, nil, s.acquireErr(err, lastErr)
	}
	return lk, closeBackend, 0
}

// cancelOnSignal calls cancel when an INT, TERM or HUP arrives, until the
// returned function is called; that function reports 128+N if signal N
// arrived, else 0.
func (s *session) cancelOnSignal(cancel func()) (signalled func() int) {
	var (
		sig   os.Signal
		sigMu sync.Mutex
	)
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case s0 := <-s.sigs:
				if s0 == syscall.SIGINT || s0 == syscall.SIGTERM || s0 == syscall.SIGHUP {
					sigMu.Lock()
					sig = s0
					sigMu.Unlock()
					cancel()
					return
				}
			case <-stop:
				return
			}
		}
	}()
	return func() int {
		close(stop)
		<-stopped
		sigMu.Lock()
		defer sigMu.Unlock()
		if sig != nil {
			return 128 + int(sig.(syscall.Signal))
		}
		return 0
	}
}

// runLocked takes the lock and runs argv under it.
func (s *session) runLocked(spec backendSpec, argv []string) int {
	lk, closeBackend, code := s.lock(spec, s.cfg.try)
	if lk == nil {
		return code
	}
	defer closeBackend()
	code = s.run(lk, argv)
	if rc := s.release(lk, code == exitLost); rc != 0 {
		code = rc
	}
	return code
}

// childEnv is COMMAND's environment: dlock's without $DLOCK_BACKEND (it
// may hold a password), with $DLOCK_FENCING_TOKEN when asked for.
func (s *session) childEnv(lk dlock.Handle) ([]string, error) {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "DLOCK_BACKEND" || s.cfg.fencingEnv && k == "DLOCK_FENCING_TOKEN" {
			continue
		}
		env = append(env, kv)
	}
	if s.cfg.fencingEnv {
		token, ok := lk.Token()
		if !ok {
			return nil, errors.New("-fencing-env: the lock came with no fencing token")
		}
		env = append(env, "DLOCK_FENCING_TOKEN="+strconv.FormatUint(token, 10))
	}
	return env, nil
}

// run runs argv under the held lock lk and returns its exit status.
func (s *session) run(lk dlock.Handle, argv []string) int {
	env, err := s.childEnv(lk)
	if err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitUsage
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return exitNotFound
		}
		return exitCannotRun
	}
	c, err := startSupervised(path, argv, env, inForeground())
	if err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitCannotRun
	}
	exited := make(chan int, 1)
	go func() { exited <- c.wait() }()

	lost := lk.Lost()
	var (
		wasLost bool
		kill    <-chan time.Time
	)
	for {
		select {
		case sig := <-s.sigs:
			c.signal(sig.(syscall.Signal))
		case <-lost:
			lost, wasLost = nil, true
			fmt.Fprintf(s.stderr, "dlock: lock %q lost: stopping the command (SIGTERM, SIGKILL after %v)\n", s.name, s.cfg.grace)
			c.signal(syscall.SIGTERM)
			kill = time.After(s.cfg.grace)
		case <-kill:
			kill = nil
			c.signal(syscall.SIGKILL)
		case code := <-exited:
			if wasLost {
				return exitLost
			}
			return code
		}
	}
}

// lookPath finds COMMAND as exec.Command would, with COMMAND's PATH.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		if _, err := os.Stat(file); err != nil {
			return "", err
		}
		return file, nil
	}
	cmd := exec.Command(file)
	cmd.Env = env
	if cmd.Err != nil {
		return "", cmd.Err
	}
	return cmd.Path, nil
}

// release gives the lock up. A lock lost before the release — also a loss
// that only the release finds out — is exit 76: COMMAND may have run
// without it. Otherwise it returns 0.
func (s *session) release(lk dlock.Handle, reported bool) int {
	err := lk.Release(context.Background())
	switch {
	case errors.Is(err, dlock.ErrLockLost) || errors.Is(lk.Err(), dlock.ErrLockLost):
		if !reported {
			fmt.Fprintf(s.stderr, "dlock: lock %q was lost while the command ran (found out at release): %v\n", s.name, err)
		}
		return exitLost
	case err != nil:
		fmt.Fprintf(s.stderr, "dlock: releasing lock %q: %v\n", s.name, err)
	}
	return 0
}

// exitStatus is a shell's view of how a process ended.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// status reports whether the lock is held, and by whom where the backend
// records holders (see holders). Elsewhere it takes the lock once, without
// waiting, and gives it straight back.
func (s *session) status(spec backendSpec) int {
	if code, ok := s.holders(spec); ok {
		return code
	}
	lk, closeBackend, code := s.lock(spec, true)
	if lk == nil {
		if code == s.cfg.conflict {
			s.printStatus(true, nil)
		}
		return code
	}
	defer closeBackend()
	if err := lk.Release(context.Background()); err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitUnavailable
	}
	s.printStatus(false, nil)
	return 0
}

// describer is a Locker that can list the holders of a name (every
// *dlock.Guard).
type describer interface {
	Holders(ctx context.Context, name string) ([]dlock.Holder, error)
}

// holders lists the holders of the lock without taking it, and reports it
// held when one of them is in the way of the lock the flags ask for: any
// holder of an exclusive lock; a writer (not Shared) for -shared; N
// holders for -semaphore N. ok is false when the backend records no
// holders.
func (s *session) holders(spec backendSpec) (code int, ok bool) {
	s.hosts = spec.hosts
	s.connectTimeout = spec.connectTimeout()
	ctx, cancel := context.WithTimeout(context.Background(), s.connectTimeout+5*time.Second)
	defer cancel()
	signalled := s.cancelOnSignal(cancel)
	locker, closeBackend, err := spec.open(ctx, s.cfg, false, func(error) {})
	var hs []dlock.Holder
	if err == nil {
		defer closeBackend()
		d, isD := locker.(describer)
		if !isD {
			signalled()
			return 0, false
		}
		hs, err = d.Holders(ctx, s.name)
	}
	if code := signalled(); code != 0 {
		return code, true
	}
	if errors.Is(err, errors.ErrUnsupported) {
		return 0, false
	}
	if err != nil {
		return s.acquireErr(err, nil), true
	}
	if hs == nil {
		hs = []dlock.Holder{} // recorded, and none: -json prints [], not null
	}
	held := len(hs) > 0
	switch {
	case s.cfg.semaphore > 0:
		held = len(hs) >= s.cfg.semaphore
	case s.cfg.shared:
		held = slices.ContainsFunc(hs, func(h dlock.Holder) bool { return !h.Shared })
	}
	s.printStatus(held, hs)
	if held {
		return s.cfg.conflict, true
	}
	return 0, true
}

// statusJSON is what status -json prints.
type statusJSON struct {
	Name    string       `json:"name"`
	Held    bool         `json:"held"`
	Holders []holderJSON `json:"holders"` // null: the backend records none
}

type holderJSON struct {
	Host         string     `json:"host,omitempty"`
	PID          int        `json:"pid,omitempty"`
	ProcessStart *time.Time `json:"process_start,omitempty"`
	Owner        string     `json:"owner,omitempty"`
	Since        *time.Time `json:"since,omitempty"`
	Shared       bool       `json:"shared,omitempty"`
}

// printStatus prints status's answer on stdout: "held" or "free", then a
// line per holder; or, with -json, one JSON object. hs is nil when the
// backend records no holders.
func (s *session) printStatus(held bool, hs []dlock.Holder) {
	if s.cfg.json {
		out := statusJSON{Name: s.name, Held: held}
		if hs != nil {
			out.Holders = make([]holderJSON, len(hs))
		}
		for i, h := range hs {
			out.Holders[i] = holderJSON{Host: h.Host, PID: h.PID, Owner: h.Owner, Shared: h.Shared,
				ProcessStart: timeOrNil(h.ProcessStart), Since: timeOrNil(h.Since)}
		}
		b, _ := json.Marshal(out) // nothing in it can fail to marshal
		fmt.Printf("%s\n", b)
		return
	}
	if !held {
		fmt.Printf("free\n")
	} else {
		fmt.Printf("held\n")
	}
	for _, h := range hs {
		fmt.Printf("  %s\n", describeHolder(h, time.Now()))
	}
}

// plain is s as it is when it is a plain word (a host name), else quoted:
// a recorded field cannot forge output.
func plain(s string) string {
	for _, r := range s {
		if r <= ' ' || r == '"' || r == '\\' || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// describeHolder is one holder on one line: "writer: pid 4411 on build-3
// (started 2026-12-03T02:00:00Z), since 2026-12-03T02:10:00Z (5m3s),
// owner "deploy job 4411"". What the backend did not record is left out;
// the owner text is quoted, so that it cannot forge lines.
func describeHolder(h dlock.Holder, now time.Time) string {
	var b strings.Builder
	if h.Shared {
		b.WriteString("reader: ")
	} else {
		b.WriteString("holder: ")
	}
	switch {
	case h.PID != 0 && h.Host != "":
		fmt.Fprintf(&b, "pid %d on %s", h.PID, plain(h.Host))
	case h.PID != 0:
		fmt.Fprintf(&b, "pid %d", h.PID)
	case h.Host != "":
		fmt.Fprintf(&b, "on %s", plain(h.Host))
	default:
		b.WriteString("unknown process")
	}
	if !h.ProcessStart.IsZero() {
		fmt.Fprintf(&b, " (started %s)", h.ProcessStart.UTC().Format(time.RFC3339))
	}
	if !h.Since.IsZero() {
		fmt.Fprintf(&b, ", since %s (%s)", h.Since.UTC().Format(time.RFC3339), now.Sub(h.Since).Round(time.Second))
	}
	if h.Owner != "" {
		fmt.Fprintf(&b, ", owner %s", strconv.Quote(h.Owner))
	}
	return b.String()
}

func isTerminal(w io.Writer) bool {
	if r, ok := w.(*redactor); ok {
		w = r.w
	}
	f, ok := w.(*os.File)
	return ok && isTerminalFD(int(f.Fd()))
}

func isTerminalFD(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, ioctlGetTermios)
	return err == nil
}

// newSession starts catching the forwarded signals; stop with close.
// Signals ignored when dlock started (nohup) stay ignored.
func newSession(cfg *config, name string, stderr io.Writer) *session {
	s := &session{cfg: cfg, name: name, stderr: stderr, sigs: make(chan os.Signal, 8)}
	for _, sig := range forwarded {
		if !signal.Ignored(sig) {
			signal.Notify(s.sigs, sig)
		}
	}
	return s
}

func (s *session) close() { signal.Stop(s.sigs) }
