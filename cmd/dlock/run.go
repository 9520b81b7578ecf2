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
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// forwarded are the signals dlock passes on to COMMAND; the first three
// also end a wait for the lock.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// session runs one dlock run or status: it owns the signal channel.
type session struct {
	cfg    *config
	name   string
	stderr io.Writer
	sigs   chan os.Signal
}

// acquire takes the lock, saying so after a second of waiting, and gives
// up on -wait's deadline or on an INT, TERM or HUP.
func (s *session) acquire(acquire acquireFunc) (held, int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if s.cfg.wait > 0 {
		ctx, cancel = context.WithTimeout(ctx, s.cfg.wait)
		defer cancel()
	}
	var sig os.Signal
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case s0 := <-s.sigs:
				if s0 == syscall.SIGINT || s0 == syscall.SIGTERM || s0 == syscall.SIGHUP {
					sig = s0
					cancel()
					return
				}
			case <-stop:
				return
			}
		}
	}()
	if !s.cfg.try && (s.cfg.verbose || isTerminal(s.stderr)) {
		t := time.AfterFunc(time.Second, func() {
			fmt.Fprintf(s.stderr, "dlock: waiting for lock %q …\n", s.name)
		})
		defer t.Stop()
	}
	lk, err := acquire(ctx, s.name, s.cfg.try)
	close(stop)
	<-stopped
	if err != nil {
		if sig != nil {
			return nil, 128 + int(sig.(syscall.Signal))
		}
		return nil, acquireErr(err, s.name, s.stderr)
	}
	if s.cfg.verbose {
		fmt.Fprintf(s.stderr, "dlock: acquired lock %q\n", s.name)
	}
	return lk, 0
}

// run runs argv under the held lock lk and returns dlock's exit status.
func (s *session) run(lk held, argv []string) int {
	defer s.release(lk)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, s.stderr
	// COMMAND gets its own process group, so that a lost lock stops all of
	// it, pipelines and children included.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if s.cfg.fencingEnv {
		token, ok := lk.Token()
		if !ok {
			fmt.Fprintf(s.stderr, "dlock: -fencing-env: this backend gives no fencing token\n")
			return exitUsage
		}
		cmd.Env = append(os.Environ(), "DLOCK_FENCING_TOKEN="+strconv.FormatUint(token, 10))
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return exitNotFound
		}
		return exitCannotRun
	}
	pgid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()

	lost := lk.Lost()
	var (
		wasLost bool
		kill    <-chan time.Time
	)
	for {
		select {
		case sig := <-s.sigs:
			_ = syscall.Kill(-pgid, sig.(syscall.Signal))
		case <-lost:
			lost, wasLost = nil, true
			fmt.Fprintf(s.stderr, "dlock: lock %q lost: stopping the command (SIGTERM, SIGKILL after %v)\n", s.name, s.cfg.grace)
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			kill = time.After(s.cfg.grace)
		case <-kill:
			kill = nil
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		case <-exited:
			if wasLost {
				return exitLost
			}
			return exitStatus(cmd.ProcessState)
		}
	}
}

// release gives the lock up, saying why if it could not.
func (s *session) release(lk held) {
	err := lk.Release(context.Background())
	if err != nil && !isClosed(lk.Lost()) {
		fmt.Fprintf(s.stderr, "dlock: releasing lock %q: %v\n", s.name, err)
	} else if s.cfg.verbose {
		fmt.Fprintf(s.stderr, "dlock: released lock %q\n", s.name)
	}
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
func (s *session) status(acquire acquireFunc) int {
	lk, err := acquire(context.Background(), s.name, true)
	if err != nil {
		code := acquireErr(err, s.name, io.Discard)
		if code == exitNotAcquired {
			fmt.Printf("held\n")
		} else {
			acquireErr(err, s.name, s.stderr)
		}
		return code
	}
	if err := lk.Release(context.Background()); err != nil {
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitUnavailable
	}
	fmt.Printf("free\n")
	return 0
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newSession starts catching the forwarded signals; stop with close.
func newSession(cfg *config, name string, stderr io.Writer) *session {
	s := &session{cfg: cfg, name: name, stderr: stderr, sigs: make(chan os.Signal, 8)}
	signal.Notify(s.sigs, forwarded...)
	return s
}

func (s *session) close() { signal.Stop(s.sigs) }
