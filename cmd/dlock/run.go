//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
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
func (s *session) lock(spec backendSpec, try bool) (held, func(), int) {
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
	var (
		sig     os.Signal
		sigMu   sync.Mutex
		lastErr error
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
	signalled := func() int {
		close(stop)
		<-stopped
		sigMu.Lock()
		defer sigMu.Unlock()
		if sig != nil {
			return 128 + int(sig.(syscall.Signal))
		}
		return 0
	}
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

	acquire, closeBackend, err := spec.open(ctx, s.cfg, !try, note)
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
	lk, err := acquire(ctx, s.name, try)
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
	if s.cfg.verbose {
		fmt.Fprintf(s.stderr, "dlock: acquired lock %q\n", s.name)
	}
	return lk, closeBackend, 0
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
func (s *session) childEnv(lk held) ([]string, error) {
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
func (s *session) run(lk held, argv []string) int {
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
func (s *session) release(lk held, reported bool) int {
	err := lk.Release(context.Background())
	switch {
	case errors.Is(err, dlock.ErrLockLost) || errors.Is(lk.Err(), dlock.ErrLockLost):
		if !reported {
			fmt.Fprintf(s.stderr, "dlock: lock %q was lost while the command ran (found out at release): %v\n", s.name, err)
		}
		return exitLost
	case err != nil:
		fmt.Fprintf(s.stderr, "dlock: releasing lock %q: %v\n", s.name, err)
	case s.cfg.verbose:
		fmt.Fprintf(s.stderr, "dlock: released lock %q\n", s.name)
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

// status reports whether the lock is held: it takes the lock once, without
// waiting, and gives it straight back.
func (s *session) status(spec backendSpec) int {
	lk, closeBackend, code := s.lock(spec, true)
	if lk == nil {
		if code == s.cfg.conflict {
			fmt.Printf("held\n")
		}
		return code
	}
	defer closeBackend()
	if err := lk.Release(context.Background()); err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitUnavailable
	}
	fmt.Printf("free\n")
	return 0
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
