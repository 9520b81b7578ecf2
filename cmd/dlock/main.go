// Command dlock runs a command while holding a distributed lock: flock(1)
// for the network.
//
// Usage:
//
//	dlock run [flags] NAME [--] COMMAND [ARGS...]
//	dlock status [flags] NAME
//	dlock help
//
// Run takes the lock NAME, runs COMMAND while holding it, releases it when
// COMMAND ends (however it ends) and exits with COMMAND's exit status, or
// 128+N when it died of signal N. Status tells whether NAME is held: it
// takes the lock for an instant, without waiting, and gives it back (every
// backend can tell this way; on a fencing backend it uses up a token).
//
// The lock NAME is the reader-writer lock NAME of the backend: exclusive
// (the write side) by default, shared with -shared, so that exclusive and
// shared holders exclude each other as flock -x and flock -s do. RedLock
// has no reader-writer lock: there NAME is its mutex and -shared is refused.
// With -semaphore N, NAME is the semaphore NAME.
//
// The backend is a URL, given with -backend or in $DLOCK_BACKEND:
//
//	file:///path/to/dir         lock files in a directory (the default is a
//	                            per-user directory: $XDG_RUNTIME_DIR/dlock, or
//	                            dlock-UID in the temporary directory)
//	postgres://user@host/db     PostgreSQL advisory locks (any URL pgx takes;
//	postgresql://...            also key=value connection strings after pg:)
//	valkey://host:port          Valkey or Redis: one node, or a cluster or
//	redis://host:port           sentinel deployment reached through it;
//	valkey://h1:p1,h2:p2        several seeds of one deployment
//	redlock://h1:p1,h2:p2,h3:p3 RedLock over independent Valkey/Redis nodes
//
// Flags of run and status:
//
//	-backend URL     the backend (default $DLOCK_BACKEND, else the file default)
//	-wait DURATION   wait at most this long for the lock (default: forever)
//	-try             do not wait: fail at once if the lock is held (like flock -n)
//	-shared          take the read side of a reader-writer lock
//	-semaphore N     take one of N tickets of a semaphore
//	-fencing-env     pass the lock's fencing token to COMMAND as $DLOCK_FENCING_TOKEN
//	-grace DURATION  after a lost lock, how long COMMAND has between SIGTERM
//	                 and SIGKILL (default 10s)
//	-verbose         say what dlock does on stderr, even when it is not a terminal
//
// While dlock waits longer than a second it says so on stderr, when stderr
// is a terminal or with -verbose. Signals sent to dlock (INT, TERM, HUP,
// QUIT, USR1, USR2) are passed on to COMMAND's process group. If the lock
// is lost while COMMAND runs, dlock sends SIGTERM to COMMAND's process
// group, SIGKILL after the grace period, and exits with status 76.
//
// Exit status:
//
//	0-255  COMMAND's status (128+N when it died of signal N)
//	64     usage error (bad flags, bad backend URL)
//	69     backend unavailable or failing
//	75     lock not acquired: held elsewhere (-try), or -wait expired;
//	       for status: the lock is held
//	76     the lock was lost while COMMAND ran; COMMAND was stopped
//	126    COMMAND could not be run
//	127    COMMAND was not found
//	130, 143 ... dlock itself was interrupted while waiting (128+signal)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dlock-go/dlock"
)

// Exit statuses of dlock itself.
const (
	exitUsage       = 64
	exitUnavailable = 69
	exitNotAcquired = 75
	exitLost        = 76
	exitCannotRun   = 126
	exitNotFound    = 127
)

const usageText = `usage: dlock run [flags] NAME [--] COMMAND [ARGS...]
       dlock status [flags] NAME
       dlock help

Run runs COMMAND while holding the distributed lock NAME and exits with
COMMAND's exit status. NAME is exclusive (the write side of a reader-writer
lock) unless -shared or -semaphore N. Status tells whether NAME is held
(exit 0 if free, 75 if held) by taking it for an instant.

The backend is a URL (-backend, or $DLOCK_BACKEND):
  file:///path/to/dir          lock files in a directory (default: a per-user directory)
  postgres://user@host/db      PostgreSQL advisory locks
  valkey://host:port           Valkey or Redis (also redis://; h1:p1,h2:p2 for several seeds)
  redlock://h1:p1,h2:p2,h3:p3  RedLock over independent Valkey/Redis nodes

Flags:
`

const exitText = `
Exit status: COMMAND's (128+N if it died of signal N); 64 usage error;
69 backend unavailable; 75 lock not acquired (-try, -wait expired, or held
for status); 76 lock lost while COMMAND ran (COMMAND was stopped);
126 COMMAND not runnable; 127 COMMAND not found.
`

func main() {
	os.Exit(cli(os.Args[1:], os.Stderr))
}

// config is what the flags of run and status say.
type config struct {
	backend    string
	wait       time.Duration
	try        bool
	shared     bool
	semaphore  int
	fencingEnv bool
	grace      time.Duration
	verbose    bool
}

// cli runs dlock with args and returns its exit status.
func cli(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		fs, _ := flags(stderr)
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
		fmt.Fprint(stderr, exitText)
		return 0
	case "run", "status":
	default:
		fmt.Fprintf(stderr, "dlock: unknown command %q (want run, status or help)\n", cmd)
		return exitUsage
	}
	fs, cfg := flags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, exitText)
			return 0
		}
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 || rest[0] == "" {
		return usage(stderr, "missing lock NAME")
	}
	name, rest := rest[0], rest[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	switch {
	case cmd == "run" && len(rest) == 0:
		return usage(stderr, "missing COMMAND to run under the lock")
	case cmd == "status" && len(rest) > 0:
		return usage(stderr, "status takes only a lock NAME")
	case cfg.try && cfg.wait > 0:
		return usage(stderr, "-try and -wait exclude each other")
	case cfg.wait < 0:
		return usage(stderr, "-wait must not be negative")
	case cfg.shared && cfg.semaphore != 0:
		return usage(stderr, "-shared and -semaphore exclude each other")
	case cfg.semaphore < 0 || cfg.semaphore == 0 && isSet(fs, "semaphore"):
		return usage(stderr, "-semaphore must be at least 1")
	case cfg.grace <= 0:
		return usage(stderr, "-grace must be positive")
	}
	if cfg.backend == "" {
		cfg.backend = os.Getenv("DLOCK_BACKEND")
	}
	if cfg.backend == "" {
		cfg.backend = defaultBackend()
	}
	spec, err := parseBackend(cfg.backend)
	if err != nil {
		return usage(stderr, err.Error())
	}

	sess := newSession(cfg, name, stderr)
	defer sess.close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // connecting
	acquire, closeBackend, err := spec.open(ctx, cfg)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "dlock: %v\n", err)
		return exitUnavailable
	}
	defer closeBackend()
	if cmd == "status" {
		return sess.status(acquire)
	}
	lk, code := sess.acquire(acquire)
	if lk == nil {
		return code
	}
	return sess.run(lk, rest)
}

func flags(stderr io.Writer) (*flag.FlagSet, *config) {
	cfg := &config{}
	fs := flag.NewFlagSet("dlock", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.backend, "backend", "", "backend `URL` (default $DLOCK_BACKEND, else a per-user file directory)")
	fs.DurationVar(&cfg.wait, "wait", 0, "wait at most `DURATION` for the lock (default: forever)")
	fs.BoolVar(&cfg.try, "try", false, "do not wait: fail at once (exit 75) if the lock is held")
	fs.BoolVar(&cfg.shared, "shared", false, "take the read side of a reader-writer lock")
	fs.IntVar(&cfg.semaphore, "semaphore", 0, "take one of `N` tickets of a semaphore")
	fs.BoolVar(&cfg.fencingEnv, "fencing-env", false, "pass the fencing token to COMMAND as $DLOCK_FENCING_TOKEN")
	fs.DurationVar(&cfg.grace, "grace", 10*time.Second, "after a lost lock, `DURATION` between SIGTERM and SIGKILL to COMMAND")
	fs.BoolVar(&cfg.verbose, "verbose", false, "say what dlock does on stderr, even when it is not a terminal")
	return fs, cfg
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func usage(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "dlock: %s\nRun 'dlock help' for usage.\n", msg)
	return exitUsage
}

// defaultBackend is a per-user lock directory, so that dlock works with no
// server and no configuration.
func defaultBackend() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" && strings.HasPrefix(d, "/") {
		return "file://" + strings.TrimSuffix(d, "/") + "/dlock"
	}
	return fmt.Sprintf("file://%s/dlock-%d", strings.TrimSuffix(os.TempDir(), "/"), os.Getuid())
}

// acquireErr turns a failed acquisition into an exit status.
func acquireErr(err error, name string, stderr io.Writer) int {
	switch {
	case errors.Is(err, dlock.ErrNotAcquired):
		if errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(stderr, "dlock: lock %q: not acquired within the wait\n", name)
		} else {
			fmt.Fprintf(stderr, "dlock: lock %q is held elsewhere\n", name)
		}
		return exitNotAcquired
	case errors.Is(err, dlock.ErrInvalidName):
		fmt.Fprintf(stderr, "dlock: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "dlock: %v\n", err)
		return exitUnavailable
	}
}
