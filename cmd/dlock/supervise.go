//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// No command outlives its lock: COMMAND does not run as dlock's child but
// as the child of a supervisor, dlock itself started again with
// superviseArg, which leads a process group of its own:
//
//	dlock ── supervisor (pgid = its pid) ── COMMAND ── COMMAND's children
//
// dlock holds the write end of a pipe (the life line) whose read end only
// the supervisor has. When dlock ends, however it ends (SIGKILL too), the
// kernel closes the write end, the supervisor's read returns, and it kills
// the whole group, itself included, with SIGKILL. This is portable (no
// Linux Pdeathsig, which would also fire when the thread that started the
// child exits) and covers grandchildren, which Pdeathsig on COMMAND would
// not. When COMMAND ends, the supervisor writes its status on a second
// pipe and kills what COMMAND left in the group before dlock releases the
// lock.

// superviseArg is the hidden first argument that makes dlock a supervisor.
const superviseArg = "__dlock_supervise"

// Descriptors of the supervisor, after stdin, stdout and stderr.
const (
	lifeFD   = 3 // read end of the life line: EOF when dlock is gone
	statusFD = 4 // write end of the status pipe: COMMAND's exit status
)

// supervise is the supervisor: args are "fg" or "bg", then "--", the path
// of COMMAND and COMMAND's argv.
func supervise(args []string) int {
	if len(args) < 4 || args[1] != "--" {
		fmt.Fprintln(os.Stderr, "dlock: the supervisor is started by dlock run")
		return exitUsage
	}
	fg, path, argv := args[0] == "fg", args[2], args[3:]
	// Only as dlock starts it: leader of a new group (the group it kills
	// is then COMMAND's, never a caller's), with two pipes.
	if unix.Getpgrp() != os.Getpid() || !isPipe(lifeFD) || !isPipe(statusFD) {
		fmt.Fprintln(os.Stderr, "dlock: the supervisor is started by dlock run")
		return exitUsage
	}
	status := os.NewFile(statusFD, "status")
	// Signals for COMMAND reach this process too (dlock sends them to the
	// group; the terminal sends ^C to it): the supervisor lives on until
	// COMMAND ends. Signals ignored when dlock started stay ignored, for
	// COMMAND as well (nohup).
	sigs := make(chan os.Signal, 16)
	for _, sig := range append(forwarded, syscall.SIGPIPE) {
		if !signal.Ignored(sig) {
			signal.Notify(sigs, sig)
		}
	}
	go func() {
		for range sigs {
		}
	}()
	// A blocking read on a thread of its own: the kernel wakes this thread
	// directly when dlock is gone (no hop through the runtime's poller).
	_ = unix.SetNonblock(lifeFD, false)
	go func() {
		runtime.LockOSThread()
		var b [1]byte
		for {
			if _, err := unix.Read(lifeFD, b[:]); err != unix.EINTR {
				break
			}
		}
		_ = syscall.Kill(0, syscall.SIGKILL)
	}()
	if fg {
		// Take the terminal for COMMAND's group, as a shell does for a
		// foreground job (SIGTTOU would stop a background group doing it).
		signal.Ignore(syscall.SIGTTOU)
		_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, unix.Getpgrp())
		signal.Reset(syscall.SIGTTOU)
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	code := 0
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "dlock: %v\n", err)
		code = exitCannotRun
		if errors.Is(err, os.ErrNotExist) {
			code = exitNotFound
		}
	} else {
		_ = cmd.Wait()
		code = exitStatus(cmd.ProcessState)
	}
	fmt.Fprintf(status, "%d\n", code)
	status.Close()
	// What COMMAND left in the group dies with it, and so does this
	// supervisor: dlock reads the status from the pipe.
	_ = syscall.Kill(0, syscall.SIGKILL)
	return code
}

func isPipe(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO
}

// child is a COMMAND running under a supervisor.
type child struct {
	pid    int // the supervisor's pid, also the group's id
	life   *os.File
	status *os.File
	fg     bool
}

// startSupervised starts path (argv) under a supervisor, with env. With fg,
// COMMAND's group becomes the terminal's foreground group.
func startSupervised(path string, argv, env []string, fg bool) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding dlock's own executable: %w", err)
	}
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	statR, statW, err := os.Pipe()
	if err != nil {
		lifeR.Close()
		lifeW.Close()
		return nil, err
	}
	mode := "bg"
	if fg {
		mode = "fg"
	}
	args := append([]string{exe, superviseArg, mode, "--", path}, argv...)
	p, err := os.StartProcess(exe, args, &os.ProcAttr{
		Env:   env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, lifeR, statW},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	lifeR.Close()
	statW.Close()
	if err != nil {
		lifeW.Close()
		statR.Close()
		return nil, err
	}
	c := &child{pid: p.Pid, life: lifeW, status: statR, fg: fg}
	_ = p.Release() // waited for with wait4 (stops too), not os.Process.Wait
	if c.pid <= 1 {
		return nil, fmt.Errorf("supervisor started with pid %d", c.pid)
	}
	return c, nil
}

// signal sends sig to COMMAND's whole group.
func (c *child) signal(sig syscall.Signal) {
	if c.pid > 1 {
		_ = syscall.Kill(-c.pid, sig)
	}
}

// wait waits for the supervisor to end and returns COMMAND's status. While
// it waits, a stop of the foreground group (^Z) is passed on to dlock's own
// job, so the shell sees it stopped, and undone when dlock is continued.
// Afterwards no process of COMMAND's group remains.
func (c *child) wait() int {
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(c.pid, &ws, syscall.WUNTRACED, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			break
		}
		if ws.Stopped() {
			if c.fg {
				c.stopWithCommand(ws.StopSignal())
			}
			continue
		}
		break
	}
	// The supervisor is gone. Make sure its group is too (it normally
	// killed it itself; not if it was killed alone).
	c.signal(syscall.SIGKILL)
	if c.fg {
		takeTerminal(unix.Getpgrp())
	}
	line, _ := bufio.NewReader(c.status).ReadString('\n')
	c.status.Close()
	c.life.Close() // held open (and reachable) until the group is gone
	if code, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
		return code
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// stopWithCommand stops dlock's own job after COMMAND's group stopped (^Z),
// giving the terminal back first, and on continuation gives the terminal to
// COMMAND's group again (if dlock is in the foreground) and continues it.
func (c *child) stopWithCommand(sig syscall.Signal) {
	own := unix.Getpgrp()
	takeTerminal(own)
	if sig != syscall.SIGTSTP && sig != syscall.SIGTTIN && sig != syscall.SIGTTOU {
		sig = syscall.SIGSTOP
	}
	// Stop dlock's job, and go on only once it was continued: the stop is
	// not synchronous with kill, so wait for the SIGCONT. A stop signal to
	// an orphaned process group is discarded: then no SIGCONT comes, and
	// dlock goes on after a moment.
	cont := make(chan os.Signal, 1)
	signal.Notify(cont, syscall.SIGCONT)
	_ = syscall.Kill(0, sig)
	select {
	case <-cont:
	case <-time.After(500 * time.Millisecond):
	}
	signal.Stop(cont)
	if pg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP); err == nil && pg == own {
		takeTerminal(c.pid)
	}
	c.signal(syscall.SIGCONT)
}

// takeTerminal makes pgid the foreground group of the terminal on stdin.
func takeTerminal(pgid int) {
	signal.Ignore(syscall.SIGTTOU)
	_ = unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, pgid)
	signal.Reset(syscall.SIGTTOU)
}

// inForeground says whether stdin is a terminal whose foreground group is
// dlock's.
func inForeground() bool {
	if !isTerminalFD(0) {
		return false
	}
	pg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	return err == nil && pg == unix.Getpgrp()
}
