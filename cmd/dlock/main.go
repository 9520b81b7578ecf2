//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

// Command dlock runs a command while holding a distributed lock: flock(1)
// for the network.
//
// Usage:
//
//	dlock run [flags] NAME [--] COMMAND [ARGS...]
//	dlock run [flags] NAME -c STRING
//	dlock status [flags] NAME
//	dlock help [backends]
//	dlock version
//
// Run takes the lock NAME, runs COMMAND while holding it, releases it when
// COMMAND ends (however it ends) and exits with COMMAND's exit status, or
// 128+N when it died of signal N. Status tells whether NAME is held and by
// whom, from the holder records of the backend, without taking the lock;
// over a backend that records none (RedLock) it takes the lock for an
// instant, without waiting, and gives it back.
//
// The full reference is what "dlock help" and "dlock help backends" print
// (helpText and backendsText below); the README's CLI section says the same.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
)

// Exit statuses of dlock itself.
const (
	exitUsage       = 64
	exitUnavailable = 69
	exitNotAcquired = 75 // the default; -E changes it
	exitLost        = 76
	exitCannotRun   = 126
	exitNotFound    = 127
)

const usageText = `usage: dlock run [flags] NAME [--] COMMAND [ARGS...]
       dlock run [flags] NAME -c STRING
       dlock status [flags] NAME
       dlock help [backends]
       dlock version
`

const helpText = usageText + `
Run runs COMMAND while holding the distributed lock NAME and exits with
COMMAND's exit status. NAME is exclusive (the write side of a reader-writer
lock) unless -shared or -semaphore N. Status tells whether NAME is held
(exit 0 if free, 75 if held) and by whom: one line per holder (pid, host,
process start, since when, the -owner text it ran with), or with -json one
JSON object, read without taking the lock; held means a holder is in the
way of the lock the flags name. Over a backend that records no holders
(RedLock), status takes the lock for an instant instead.

The backend is a URL (-backend, or $DLOCK_BACKEND); "dlock help backends"
lists the forms and their parameters:
  file:///path/to/dir          lock files in a directory (default: a per-user directory)
  postgres://user@host/db      PostgreSQL advisory locks (also pg:host=h dbname=d ...)
  valkey://host:port           Valkey or Redis (also redis://, valkeys://, unix:///sock)
  redlock://h1:p1,h2:p2,h3:p3  RedLock over independent Valkey/Redis nodes
A password in -backend is visible to every local user in the process list
(/proc/PID/cmdline); in $DLOCK_BACKEND it is not. dlock never prints it, and
COMMAND does not inherit $DLOCK_BACKEND.

Flags (before NAME):
`

const afterFlagsText = `
What dies with dlock: COMMAND runs in a process group of its own, led by a
small supervisor (dlock itself) that dlock watches through a pipe. When
dlock ends in any way — also SIGKILL — the supervisor kills COMMAND's whole
group (children and grandchildren that stayed in it) with SIGKILL before
anyone else can take the lock; when COMMAND ends, what it left running in
its group is killed before the lock is released. On every backend the lock
thus lives at least as long as any process of COMMAND's group. A process
that leaves the group (setsid, a daemon) is not covered. When stdin is the
terminal and dlock runs in the foreground, COMMAND's group becomes the
terminal's foreground group, so it can read the terminal and gets ^C; ^Z
stops COMMAND and dlock's job, and fg continues both.

Signals sent to dlock (INT, TERM, HUP, QUIT, USR1, USR2) are passed on to
COMMAND's group; INT, TERM and HUP also end a wait for the lock.

Lost lock: if the lock is lost while COMMAND runs, dlock sends SIGTERM to
COMMAND's group, SIGKILL after -grace, and exits 76. A loss that dlock only
learns when it releases the lock (COMMAND ended first) is exit 76 too,
whatever COMMAND's status. SIGTERM races with COMMAND's own writes: a holder
that was paused (stopped, swapped, partitioned) past its lease can still
write after another holder got the lock. Only a store that checks a fencing
token is safe: with -fencing-env, COMMAND gets $DLOCK_FENCING_TOKEN, which
strictly increases per NAME; the store keeps the highest token it has seen
and refuses writes with a lower one, in the same statement as the write.
The idiom, for a store that is a PostgreSQL row (id, n, token):

  dlock run -fencing-env job -- sh -c 'psql -c "UPDATE counter SET n = n + 1,
    token = $DLOCK_FENCING_TOKEN WHERE id = 1 AND token <= $DLOCK_FENCING_TOKEN" | grep -qx "UPDATE 1" || exit 76'

Every backend gives fencing tokens with -fencing-env (PostgreSQL: dlock
turns on the backend's fencing table, dlock_fencing, or the table named by
the URL parameter dlock_fencing).

Exit status:
  0-255  COMMAND's status (128+N if it died of signal N)
  64     usage or configuration error: bad flags, bad backend URL, a
         primitive the backend lacks (RedLock: -shared, -semaphore), a lock
         file refused (symbolic link, not a regular file), refused credentials
  69     backend unavailable or failing (-try, status; a wait keeps trying)
  75     lock not acquired: held elsewhere (-try), or the -wait ended (the
         message names the last server error, if any); -E changes it;
         for status: the lock is held
  76     the lock was lost while COMMAND ran (COMMAND was stopped, or had
         ended and dlock learned of the loss at release)
  126    COMMAND could not be run
  127    COMMAND was not found
  128+N  dlock itself was stopped by signal N while waiting (130 for INT)
`

const backendsText = `Backends (-backend URL or $DLOCK_BACKEND). dlock's own parameters start
with dlock_; every other parameter is the client library's own.

file:///path/to/dir
  Lock files in a directory (created 0700 if missing). No parameters.
  Default: $XDG_RUNTIME_DIR/dlock, else dlock-UID in the temporary directory.

postgres://[user[:password]@]host[:port][,host2...]/db[?param=value&...]
postgresql://...
pg:key=value key=value ...   (libpq's key=value form: host=h port=5432 dbname=d)
  Parsed by pgx: every libpq/pgx parameter (sslmode, sslrootcert,
  connect_timeout, target_session_attrs, application_name, pool_max_conns
  ...) works; $PGPASSWORD, $PGHOST ... and ~/.pgpass apply. dlock sets
  connect_timeout=5 unless given, and application_name to "dlock PID START
  HOST", which status reads to name a holder (give your own and status
  names holders by the holder table only).
  dlock_fencing=on|TABLE   fencing tokens from the table dlock_fencing (on) or
                           TABLE (created if missing; the role needs to
                           create it once, and to insert and update it);
                           -fencing-env turns it on with dlock_fencing.
  dlock_holders=on|TABLE   record holders (with the -owner text and since
                           when) in the table dlock_holders (on) or TABLE,
                           written in the lock's own statement; status then
                           shows them. Without it status shows the pid,
                           start and host of each holder from pg_locks.

valkey://[user[:password]@]host[:port][,host2:port...][/db][?param=value&...]
redis://... valkeys://... rediss://... (TLS)   unix:///path/to/valkey.sock[?db=N]
  Parsed by valkey-go (ParseURL): one node, or seeds of a cluster; several
  hosts are seeds of one deployment. valkey-go's parameters: db, dial_timeout
  (default here 5s), write_timeout, master_set (a Sentinel group: the hosts are
  sentinels), client_name, protocol=2, skip_verify (TLS), addr (more seeds),
  client_cache=0, max_retries=0.
  dlock_lease=DURATION     how long a lock outlives a holder that stopped
                           extending it (crashed, SIGKILLed, partitioned):
                           default 30s, at least 10ms; the lease is extended
                           every third of it. 5 means 5s.

redlock://[user[:password]@]h1:p1,h2:p2,h3:p3[/db][?param=value&...]
  RedLock over independent nodes (3 or 5), the same credentials on each. The
  parameters of valkey:// except addr and master_set, and dlock_lease. Mutex
  only: -shared and -semaphore are refused. dlock starts when it reaches
  enough nodes that a majority of them is a majority of all (2 of 3, 4 of 5).
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == superviseArg {
		os.Exit(supervise(os.Args[2:]))
	}
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
	conflict   int
	command    string
	owner      string // run: recorded as the holder's owner text
	json       bool   // status: print JSON
	stderr     io.Writer
}

// cli runs dlock with args and returns its exit status.
func cli(args []string, stderr io.Writer) int {
	red := &redactor{w: stderr}
	stderr = red
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText+"Run 'dlock help' for more.\n")
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		if len(args) > 0 && args[0] == "backends" {
			fmt.Fprint(stderr, backendsText)
			return 0
		}
		fs, _ := flags(stderr)
		fmt.Fprint(stderr, helpText)
		fs.PrintDefaults()
		fmt.Fprint(stderr, afterFlagsText)
		return 0
	case "version", "-V", "--version":
		fmt.Println("dlock " + version())
		return 0
	case "run", "status":
	default:
		fmt.Fprintf(stderr, "dlock: unknown command %q (want run, status, help or version)\n", cmd)
		return exitUsage
	}
	fs, cfg := flags(stderr)
	cfg.stderr = stderr
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, afterFlagsText)
			return 0
		}
		return exitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 || rest[0] == "" {
		return usage(stderr, "missing lock NAME")
	}
	name, rest := rest[0], rest[1:]
	switch {
	case len(rest) == 2 && rest[0] == "-c" && cfg.command == "":
		// flock's form: NAME -c STRING.
		cfg.command, rest = rest[1], nil
	case len(rest) > 0 && rest[0] == "--":
		rest = rest[1:]
	case len(rest) > 0 && strings.HasPrefix(rest[0], "-"):
		return usage(stderr, fmt.Sprintf("flag %s after the lock NAME: flags go before NAME (dlock %s [flags] NAME [--] COMMAND); to run a command whose name starts with '-', put -- before it", rest[0], cmd))
	}
	if cfg.command != "" {
		if len(rest) > 0 {
			return usage(stderr, "-c STRING is the command: no COMMAND after NAME too")
		}
		rest = []string{"/bin/sh", "-c", cfg.command}
	}
	switch {
	case cmd == "run" && len(rest) == 0:
		return usage(stderr, "missing COMMAND to run under the lock")
	case cmd == "status" && len(rest) > 0:
		return usage(stderr, "status takes only a lock NAME")
	case cmd == "status" && isSet(fs, "owner"):
		return usage(stderr, "-owner is for run: status takes no lock")
	case cmd == "run" && cfg.json:
		return usage(stderr, "-json is for status")
	case len(cfg.owner) > dlock.MaxOwner:
		return usage(stderr, fmt.Sprintf("-owner text of %d bytes: at most %d", len(cfg.owner), dlock.MaxOwner))
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
	case cfg.conflict < 0 || cfg.conflict > 255:
		return usage(stderr, "-E must be an exit status from 0 to 255")
	}
	if cfg.backend == "" {
		cfg.backend = os.Getenv("DLOCK_BACKEND")
	}
	if cfg.backend == "" {
		cfg.backend = defaultBackend()
	}
	red.setSecrets(cfg.backend)
	spec, err := parseBackend(cfg.backend)
	if err != nil {
		return usage(stderr, err.Error())
	}
	if err := spec.check(cfg); err != nil {
		return usage(stderr, err.Error())
	}
	sess := newSession(cfg, name, stderr)
	defer sess.close()
	if cmd == "status" {
		return sess.status(spec)
	}
	return sess.runLocked(spec, rest)
}

// version is the module version from the build information, with the VCS
// revision when the binary was built from a checkout.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev != "" && (v == "(devel)" || strings.Contains(v, "+dirty") || !strings.Contains(v, rev[:min(12, len(rev))])) {
		v += " " + rev[:min(12, len(rev))] + modified
	}
	return v + " " + bi.GoVersion
}

// waitValue is -wait: a Go duration, or plain seconds as flock(1) takes them.
type waitValue struct{ d *time.Duration }

func (w waitValue) String() string {
	if w.d == nil || *w.d == 0 {
		return ""
	}
	return w.d.String()
}

func (w waitValue) Set(s string) error {
	d, err := parseSeconds(s)
	if err != nil {
		return err
	}
	*w.d = d
	return nil
}

// parseSeconds parses a Go duration (1m30s) or a number of seconds (5, 0.5).
func parseSeconds(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || f > float64(1<<62)/float64(time.Second) {
			return 0, fmt.Errorf("%q: out of range", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want seconds (5, 0.5) or a duration (1m30s)", s)
	}
	return d, nil
}

func flags(stderr io.Writer) (*flag.FlagSet, *config) {
	cfg := &config{}
	fs := flag.NewFlagSet("dlock", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, helpText)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.backend, "backend", "", "backend `URL` (default $DLOCK_BACKEND, else a per-user file directory); see 'dlock help backends'")
	fs.Var(waitValue{&cfg.wait}, "wait", "wait at most `DURATION` for the lock, retrying through server errors (5 = 5s; default: forever)")
	fs.BoolVar(&cfg.try, "try", false, "do not wait: fail at once (exit 75) if the lock is held (flock -n)")
	fs.IntVar(&cfg.conflict, "E", exitNotAcquired, "exit `CODE` when the lock is not acquired (-try, -wait ended; flock -E)")
	fs.StringVar(&cfg.command, "c", "", "run `STRING` with /bin/sh -c (also after NAME, as flock -c)")
	fs.BoolVar(&cfg.shared, "shared", false, "take the read side of a reader-writer lock")
	fs.IntVar(&cfg.semaphore, "semaphore", 0, "take one of `N` tickets of a semaphore")
	fs.BoolVar(&cfg.fencingEnv, "fencing-env", false, "pass the lock's fencing token to COMMAND as $DLOCK_FENCING_TOKEN (every backend)")
	fs.DurationVar(&cfg.grace, "grace", 10*time.Second, "after a lost lock, `DURATION` between SIGTERM and SIGKILL to COMMAND's group")
	fs.BoolVar(&cfg.verbose, "verbose", false, "say what dlock does on stderr, even when it is not a terminal")
	fs.StringVar(&cfg.owner, "owner", "", "run: record `TEXT` as the holder's description, shown by status (readable by anyone who can read the backend)")
	fs.BoolVar(&cfg.json, "json", false, "status: print the answer and the holders as one JSON object")
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

// isConfigErr says whether err is the user's to fix: retrying cannot heal
// it (exit 64).
func isConfigErr(err error) bool {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, errUsage), errors.Is(err, dlock.ErrInvalidName), errors.Is(err, dlock.ErrInvalidLimit),
		backend.IsPermanent(err), errors.Is(err, syscall.ELOOP), isPermanentConnErr(err):
		return true
	case errors.As(err, &pgErr):
		// Authentication (28), no such database (3D), no privilege (42501).
		return strings.HasPrefix(pgErr.Code, "28") || strings.HasPrefix(pgErr.Code, "3D") || pgErr.Code == "42501"
	case strings.Contains(err.Error(), "not a regular file"):
		return true
	}
	return false
}

// acquireErr turns a failed acquisition into an exit status. lastErr is
// the last server error a wait rode out, if any.
func (s *session) acquireErr(err, lastErr error) int {
	switch {
	case errors.Is(err, dlock.ErrNotAcquired) && !(s.cfg.try && errors.Is(err, context.DeadlineExceeded)):
		if errors.Is(err, context.DeadlineExceeded) {
			if lastErr != nil {
				fmt.Fprintf(s.stderr, "dlock: lock %q: not acquired within the wait; last error: %v\n", s.name, lastErr)
			} else {
				fmt.Fprintf(s.stderr, "dlock: lock %q: not acquired within the wait (%v)\n", s.name, err)
			}
		} else {
			fmt.Fprintf(s.stderr, "dlock: lock %q is held elsewhere\n", s.name)
		}
		return s.cfg.conflict
	case isConfigErr(err):
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitUsage
	case s.cfg.try && errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(s.stderr, "dlock: %s: no answer within %v: %v\n", s.serverNames(), s.connectTimeout, err)
		return exitUnavailable
	case !s.cfg.try && errors.Is(err, context.DeadlineExceeded):
		// Connecting took the whole wait.
		fmt.Fprintf(s.stderr, "dlock: lock %q: not acquired within the wait: %v\n", s.name, err)
		return s.cfg.conflict
	default:
		fmt.Fprintf(s.stderr, "dlock: %v\n", err)
		return exitUnavailable
	}
}
