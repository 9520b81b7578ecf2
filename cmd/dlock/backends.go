//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/fs"
	"github.com/dlock-go/dlock/pg"
	"github.com/dlock-go/dlock/valkey"
)

// defaultConnectTimeout bounds one attempt to connect to a server when the
// URL does not say otherwise (pgx's connect_timeout, valkey's dial_timeout).
const defaultConnectTimeout = 5 * time.Second

// backendSpec is a parsed backend URL. The URLs are parsed by the libraries
// that own them (pgx for PostgreSQL, valkey-go for Valkey); dlock only takes
// out its own parameters, which all start with "dlock_".
type backendSpec struct {
	kind    string // "file", "postgres", "valkey", "redlock"
	dir     string // file
	pg      *pgxpool.Config
	fencing string // postgres: fencing table ("" = off unless -fencing-env)
	holders string // postgres: holder table ("" = off: status gets no owner text or since)
	valkey  []valkeygo.ClientOption
	lease   time.Duration // valkey, redlock: 0 = the library's default
	hosts   []string      // servers, host:port, for messages
}

// errUsage marks errors that are the user's to fix (exit 64).
var errUsage = errors.New("usage")

type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() []error {
	return []error{u.err, errUsage}
}

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// parseBackend parses a backend URL (see the package doc), saying exactly
// what is wrong with a bad one. Its errors never contain the password:
// they name the URL with it replaced (redactURL).
func parseBackend(raw string) (backendSpec, error) {
	shown := redactURL(raw)
	if rest, ok := strings.CutPrefix(raw, "pg:"); ok && !strings.HasPrefix(rest, "//") {
		return parsePostgres(rest, shown)
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	scheme = strings.ToLower(scheme)
	if !ok {
		// Not shown: what is secret in a string of no known form is unknown.
		return backendSpec{}, errors.New("backend: not a URL (not shown, it may hold a password): want a URL such as file:///path, postgres://host/db, pg:host=h dbname=d, valkey://host:port or redlock://h1,h2,h3")
	}
	switch scheme {
	case "file":
		u, err := url.Parse(raw)
		if err != nil {
			return backendSpec{}, fmt.Errorf("backend %q: %s", shown, redact(unwrapURLError(err), raw))
		}
		if u.Host != "" && u.Host != "localhost" {
			return backendSpec{}, fmt.Errorf("backend %q: a file URL names a local directory (file:///path), not host %q", shown, u.Host)
		}
		if u.User != nil {
			return backendSpec{}, fmt.Errorf("backend %q: a file URL takes no user or password", shown)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return backendSpec{}, fmt.Errorf("backend %q: want an absolute directory path (file:///path/to/dir)", shown)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return backendSpec{}, fmt.Errorf("backend %q: a file URL takes no query or fragment", shown)
		}
		return backendSpec{kind: "file", dir: u.Path}, nil
	case "postgres", "postgresql":
		return parsePostgres(raw, shown)
	case "valkey", "redis", "valkeys", "rediss", "unix":
		return parseValkey(scheme, rest, shown)
	case "redlock":
		return parseRedLock(rest, shown)
	}
	return backendSpec{}, fmt.Errorf("backend: unknown scheme %q (want file, postgres, pg:, valkey, redis, unix or redlock)", redact(scheme, raw))
}

// parsePostgres parses a pgx connection string: a URL or key=value pairs.
func parsePostgres(conn, shown string) (backendSpec, error) {
	pc, err := pgxpool.ParseConfig(conn)
	if err != nil {
		return backendSpec{}, fmt.Errorf("backend %q: %s", shown, redact(err.Error(), conn))
	}
	s := backendSpec{kind: "postgres", pg: pc}
	// pgx keeps parameters it does not know as server settings: dlock's own
	// are taken out here, before they could reach the server.
	for k, v := range pc.ConnConfig.RuntimeParams {
		if !strings.HasPrefix(k, "dlock_") {
			continue
		}
		delete(pc.ConnConfig.RuntimeParams, k)
		switch k {
		case "dlock_fencing":
			s.fencing = tableParam(v, pg.DefaultFencingTable)
		case "dlock_holders":
			s.holders = tableParam(v, pg.DefaultHolderTable)
		default:
			return backendSpec{}, fmt.Errorf("backend %q: unknown parameter %s (PostgreSQL takes dlock_fencing and dlock_holders)", shown, k)
		}
	}
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		// Names this process (pid, start, host) to status's pg_locks
		// reading, in the form pg reads.
		pc.ConnConfig.RuntimeParams["application_name"] = pg.ApplicationName()
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	seen := map[string]bool{}
	addHost := func(host string, port uint16) {
		if hp := net.JoinHostPort(host, strconv.Itoa(int(port))); !seen[hp] {
			seen[hp] = true
			s.hosts = append(s.hosts, hp)
		}
	}
	addHost(pc.ConnConfig.Host, pc.ConnConfig.Port)
	for _, f := range pc.ConnConfig.Fallbacks {
		addHost(f.Host, f.Port)
	}
	return s, nil
}

// tableParam reads a dlock_ parameter that turns on a table: off (or
// empty), on (the default table def), or a table's name.
func tableParam(v, def string) string {
	switch strings.ToLower(v) {
	case "", "off", "false", "0":
		return ""
	case "on", "true", "1":
		return def
	}
	return v
}

// dlockParams takes dlock's own parameters (dlock_*) out of a query.
func dlockParams(q url.Values, allowed ...string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range q {
		if !strings.HasPrefix(k, "dlock_") {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			return nil, fmt.Errorf("unknown parameter %s (this backend takes %s)", k, strings.Join(allowed, ", "))
		}
		out[k] = v[len(v)-1]
		q.Del(k)
	}
	return out, nil
}

// splitQuery splits rest (after "scheme://") into its parts, with its query
// parsed.
func splitQuery(rest string) (hostsEtc string, q url.Values, err error) {
	if strings.Contains(rest, "#") {
		return "", nil, errors.New("no fragment is accepted")
	}
	hostsEtc, rawQuery, _ := strings.Cut(rest, "?")
	q, err = url.ParseQuery(rawQuery)
	if err != nil {
		return "", nil, fmt.Errorf("query: %w", err)
	}
	return hostsEtc, q, nil
}

// valkeyURL gives one valkey-go URL: scheme://userinfo@host/db?query.
func valkeyURL(scheme, userinfo, host, path string, q url.Values) string {
	s := scheme + "://"
	if userinfo != "" {
		s += userinfo + "@"
	}
	s += host + path
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// parseValkey parses [user[:password]@]host[:port][,host:port...][/db][?query]
// with valkey-go's ParseURL (several hosts become its addr parameters), or
// unix:///path/to/socket.
func parseValkey(scheme, rest, shown string) (backendSpec, error) {
	bad := func(err error) (backendSpec, error) {
		// The secrets are those of the whole URL: rest alone has no "://"
		// to find its user information by.
		return backendSpec{}, fmt.Errorf("backend %q: %s", shown, redact(unwrapURLError(err), scheme+"://"+rest))
	}
	hostsEtc, q, err := splitQuery(rest)
	if err != nil {
		return bad(err)
	}
	own, err := dlockParams(q, "dlock_lease")
	if err != nil {
		return bad(err)
	}
	s := backendSpec{kind: "valkey"}
	if err := s.setLease(own); err != nil {
		return bad(err)
	}
	var raw string
	if scheme == "unix" {
		raw = valkeyURL(scheme, "", "", hostsEtc, q)
	} else {
		userinfo, hostPath := "", hostsEtc
		if at := strings.LastIndex(hostsEtc, "@"); at >= 0 {
			userinfo, hostPath = hostsEtc[:at], hostsEtc[at+1:]
		}
		hosts, path := hostPath, ""
		if i := strings.Index(hostPath, "/"); i >= 0 {
			hosts, path = hostPath[:i], hostPath[i:]
		}
		list := strings.Split(hosts, ",")
		for _, h := range list {
			if err := checkHost(h); err != nil {
				return bad(err)
			}
		}
		for _, h := range list[1:] {
			q.Add("addr", h)
		}
		raw = valkeyURL(scheme, userinfo, list[0], path, q)
	}
	opt, err := valkeygo.ParseURL(raw)
	if err != nil {
		return bad(err)
	}
	if scheme == "unix" && (len(opt.InitAddress) == 0 || opt.InitAddress[0] == "") {
		return bad(errors.New("want the socket's path: unix:///path/to/valkey.sock"))
	}
	if opt.Dialer.Timeout == 0 {
		opt.Dialer.Timeout = defaultConnectTimeout
	}
	s.valkey = []valkeygo.ClientOption{opt}
	s.hosts = opt.InitAddress
	return s, nil
}

// parseRedLock parses [user[:password]@]h1:p1,h2:p2,h3:p3[/db][?query]: one
// client per node, each with the same credentials and query.
func parseRedLock(rest, shown string) (backendSpec, error) {
	bad := func(err error) (backendSpec, error) {
		return backendSpec{}, fmt.Errorf("backend %q: %s", shown, redact(unwrapURLError(err), "redlock://"+rest))
	}
	hostsEtc, q, err := splitQuery(rest)
	if err != nil {
		return bad(err)
	}
	own, err := dlockParams(q, "dlock_lease")
	if err != nil {
		return bad(err)
	}
	if q.Has("addr") || q.Has("master_set") {
		return bad(errors.New("RedLock takes its nodes as h1:p1,h2:p2,h3:p3, not addr= or master_set="))
	}
	s := backendSpec{kind: "redlock"}
	if err := s.setLease(own); err != nil {
		return bad(err)
	}
	userinfo, hostPath := "", hostsEtc
	if at := strings.LastIndex(hostsEtc, "@"); at >= 0 {
		userinfo, hostPath = hostsEtc[:at], hostsEtc[at+1:]
	}
	hosts, path := hostPath, ""
	if i := strings.Index(hostPath, "/"); i >= 0 {
		hosts, path = hostPath[:i], hostPath[i:]
	}
	for _, h := range strings.Split(hosts, ",") {
		if err := checkHost(h); err != nil {
			return bad(err)
		}
		opt, err := valkeygo.ParseURL(valkeyURL("redis", userinfo, h, path, q))
		if err != nil {
			return bad(err)
		}
		if opt.Dialer.Timeout == 0 {
			opt.Dialer.Timeout = defaultConnectTimeout
		}
		s.valkey = append(s.valkey, opt)
		s.hosts = append(s.hosts, opt.InitAddress...)
	}
	if len(s.valkey) < 2 {
		return backendSpec{}, fmt.Errorf("backend %q: RedLock needs several independent nodes (3 or 5): redlock://h1:p1,h2:p2,h3:p3", shown)
	}
	return s, nil
}

func (s *backendSpec) setLease(own map[string]string) error {
	v, ok := own["dlock_lease"]
	if !ok {
		return nil
	}
	d, err := parseSeconds(v)
	if err != nil || d < 10*time.Millisecond {
		return fmt.Errorf("dlock_lease %q: want a duration of at least 10ms (such as 5s, or 5 for seconds)", v)
	}
	s.lease = d
	return nil
}

// checkHost checks one host[:port] of a valkey URL.
func checkHost(h string) error {
	if h == "" {
		return errors.New("no host: want host:port")
	}
	addr := h
	if _, _, err := net.SplitHostPort(h); err != nil && strings.Contains(err.Error(), "missing port") {
		addr = h + ":6379"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("host %q: %w", h, err)
	}
	if host == "" {
		return fmt.Errorf("host %q: empty host name", h)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("host %q: port %q is not a number from 1 to 65535", h, port)
	}
	return nil
}

// unwrapURLError drops the URL that net/url puts in its errors (with the
// password in it).
func unwrapURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}

// check says, before connecting, whether the backend can do what cfg asks.
func (s backendSpec) check(cfg *config) error {
	if s.kind == "redlock" {
		switch {
		case cfg.shared:
			return usagef("RedLock offers no reader-writer lock (-shared): use valkey:// or postgres://")
		case cfg.semaphore > 0:
			return usagef("RedLock offers no semaphore (-semaphore): use valkey:// or postgres://")
		}
	}
	if s.lease != 0 && s.kind != "valkey" && s.kind != "redlock" {
		return usagef("dlock_lease is a Valkey parameter")
	}
	return nil
}

// open connects to the backend and returns how to take the lock that cfg
// asks for, and how to close the backend afterwards. Connecting is bounded
// by ctx; with retry, an attempt that fails is repeated (with backoff) until
// ctx ends, and the last error is returned.
func (s backendSpec) open(ctx context.Context, cfg *config, retry bool, note func(error)) (dlock.Locker, func(), error) {
	switch s.kind {
	case "file":
		b, err := fs.New(s.dir)
		if err != nil {
			return nil, nil, err
		}
		// fs marks a refused lock file (a symbolic link, not a regular
		// file) backend.Permanent: a wait ends on it at once (exit 64).
		acq, err := acquirerFor[*fs.Lease](b, cfg)
		return acq, func() { b.Close() }, err
	case "postgres":
		var opts []pg.Option
		switch {
		case s.fencing != "":
			opts = append(opts, pg.WithFencing(s.fencing))
		case cfg.fencingEnv:
			opts = append(opts, pg.WithFencing(""))
		}
		if s.holders != "" {
			opts = append(opts, pg.WithHolderTable(s.holders))
		}
		// The pool connects when the lock is first tried, bounded by the
		// acquisition's ctx and by connect_timeout for each attempt.
		pool, err := pgxpool.NewWithConfig(ctx, s.pg)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres %s: %w", strings.Join(s.hosts, ","), err)
		}
		// Before connecting: a bad option (--fencing table name) is
		// reported at once, not after a wait for the server.
		b, err := pg.New(pool, opts...)
		if err != nil {
			pool.Close()
			return nil, nil, err
		}
		// Connect now, so that a server that is down or silent is named
		// (and, with retry, ridden out) before the lock is tried.
		if err := retrying(ctx, retry, note, func() error {
			if err := pool.Ping(ctx); err != nil {
				return fmt.Errorf("postgres %s: %w", strings.Join(s.hosts, ","), err)
			}
			return nil
		}); err != nil {
			b.Close()
			pool.Close()
			return nil, nil, err
		}
		acq, err := acquirerFor[*pg.Lease](b, cfg)
		return acq, func() { b.Close(); pool.Close() }, err
	case "valkey":
		client, err := connect(ctx, s.valkey[0], retry, note)
		if err != nil {
			return nil, nil, err
		}
		b, err := valkey.New(client, s.valkeyOpts()...)
		if err != nil {
			client.Close()
			return nil, nil, err
		}
		acq, err := acquirerFor[*valkey.Lease](b, cfg)
		return acq, func() { b.Close(); client.Close() }, err
	case "redlock":
		clients, err := connectRedLock(ctx, s.valkey, retry, note)
		if err != nil {
			return nil, nil, err
		}
		closeAll := func() {
			for _, c := range clients {
				c.Close()
			}
		}
		b, err := valkey.NewRedLock(clients, s.valkeyOpts()...)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		acq, err := acquirerFor[*valkey.Lease](b, cfg)
		return acq, func() { b.Close(); closeAll() }, err
	}
	return nil, nil, fmt.Errorf("unknown backend kind %q", s.kind)
}

func (s backendSpec) valkeyOpts() []valkey.Option {
	if s.lease == 0 {
		return nil
	}
	// The defaults (extension every third of the lease, 1% drift) scale
	// with it.
	return []valkey.Option{valkey.WithLease(s.lease)}
}

// connectOnce creates a valkey-go client (which dials at once), bounded by
// ctx: a server that accepts connections and never answers does not hold
// dlock past ctx. The error names the server.
func connectOnce(ctx context.Context, opt valkeygo.ClientOption) (valkeygo.Client, error) {
	type result struct {
		c   valkeygo.Client
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := valkeygo.NewClient(opt)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("valkey %s: %w", strings.Join(opt.InitAddress, ","), r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("valkey %s: no answer: %w", strings.Join(opt.InitAddress, ","), context.Cause(ctx))
	}
}

// newBackoff paces retries of connecting and of failed acquisitions.
func newBackoff(ctx context.Context) backoff.BackOff {
	// As options: NewExponentialBackOff starts its first interval from
	// InitialInterval as it is when it returns (500 ms by default).
	b := backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond),
		backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(0))
	return backoff.WithContext(b, ctx)
}

// retrying runs attempt, and with retry runs it again with backoff after
// an error that may heal, until it succeeds or ctx ends; it returns the
// last error. An attempt that ctx's end cut short says only that ctx
// ended: the error of the attempt before it (connection refused, say) is
// returned instead, as the last one the server gave.
func retrying(ctx context.Context, retry bool, note func(error), attempt func() error) error {
	bo := newBackoff(ctx)
	var prev error
	for {
		err := attempt()
		if err != nil && prev != nil && ctx.Err() != nil &&
			(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			return prev
		}
		if err == nil || !retry || ctx.Err() != nil || isConfigErr(err) {
			return err
		}
		prev = err
		note(err)
		d := bo.NextBackOff()
		if d == backoff.Stop {
			return err
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return err
		}
	}
}

// connect creates a client, with retry until ctx ends.
func connect(ctx context.Context, opt valkeygo.ClientOption, retry bool, note func(error)) (valkeygo.Client, error) {
	var c valkeygo.Client
	err := retrying(ctx, retry, note, func() (err error) {
		c, err = connectOnce(ctx, opt)
		return err
	})
	return c, err
}

// connectRedLock creates one client per node. Nodes that are down are what
// RedLock tolerates, but the quorum is a majority of the clients it is
// given: so dlock goes on without a node only when a majority of the
// clients it has is still a majority of all nodes (3 nodes: 2 suffice; 5
// nodes: 4 are needed). Until then it keeps trying (with retry) until ctx
// ends.
func connectRedLock(ctx context.Context, opts []valkeygo.ClientOption, retry bool, note func(error)) ([]valkeygo.Client, error) {
	clients := make([]valkeygo.Client, len(opts))
	closeAll := func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}
	var n int
	err := retrying(ctx, retry, note, func() error {
		// The missing nodes, at once.
		errs := make([]error, len(opts))
		var wg sync.WaitGroup
		for i, o := range opts {
			if clients[i] == nil {
				wg.Add(1)
				go func() {
					defer wg.Done()
					clients[i], errs[i] = connectOnce(ctx, o)
				}()
			}
		}
		wg.Wait()
		n = 0
		var lastErr error
		for i := range opts {
			if clients[i] != nil {
				n++
			} else if isPermanentConnErr(errs[i]) {
				return errs[i]
			} else {
				lastErr = errs[i]
			}
		}
		if n == len(opts) || n/2 >= len(opts)/2 {
			return nil
		}
		return fmt.Errorf("redlock: %d of %d nodes reachable, too few for a majority of all nodes: %w", n, len(opts), lastErr)
	})
	if err != nil {
		closeAll()
		return nil, err
	}
	var got []valkeygo.Client
	for _, c := range clients {
		if c != nil {
			got = append(got, c)
		}
	}
	return got, nil
}

// isPermanentConnErr says whether a connection error cannot heal by
// retrying (authentication, a refused configuration).
func isPermanentConnErr(err error) bool {
	if backend.IsPermanent(err) {
		return true
	}
	var ve *valkeygo.ValkeyError
	if errors.As(err, &ve) {
		msg := ve.Error()
		return strings.HasPrefix(msg, "WRONGPASS") || strings.HasPrefix(msg, "NOAUTH") || strings.HasPrefix(msg, "NOPERM")
	}
	return false
}

// acquirerFor picks the primitive cfg asks for from b. Exclusive locks are
// the write side of the reader-writer lock where b has one, so that they
// exclude -shared holders as flock -x excludes flock -s; a backend without
// reader-writer locks (RedLock) uses its mutex.
func acquirerFor[L backend.Lease](b any, cfg *config) (dlock.Locker, error) {
	var (
		g    *dlock.Guard[L]
		opts []dlock.Option
	)
	if cfg.owner != "" {
		opts = append(opts, dlock.WithOwner(cfg.owner))
	}
	if cfg.verbose {
		opts = append(opts, dlock.WithObserver(verboseObserver{cfg.stderr}))
	}
	rw, hasRW := b.(backend.RWLocker[L])
	switch {
	case cfg.semaphore > 0:
		sem, ok := b.(backend.Semaphore[L])
		if !ok {
			return nil, usagef("this backend offers no semaphore")
		}
		g = dlock.NewSemaphore(sem, cfg.semaphore, opts...)
	case cfg.shared:
		if !hasRW {
			return nil, usagef("this backend offers no reader-writer lock (-shared)")
		}
		g = dlock.NewRWMutex(rw, opts...).Read()
	case hasRW:
		g = dlock.NewRWMutex(rw, opts...).Write()
	default:
		mu, ok := b.(backend.Locker[L])
		if !ok {
			return nil, usagef("this backend offers no exclusive lock")
		}
		g = dlock.NewMutex(mu, opts...)
	}
	return g, nil
}

// connectTimeout bounds one attempt to connect, as the URL says (or the
// default).
func (s backendSpec) connectTimeout() time.Duration {
	d := time.Duration(0)
	if s.pg != nil {
		d = s.pg.ConnConfig.ConnectTimeout
	}
	for _, o := range s.valkey {
		d = max(d, o.Dialer.Timeout)
	}
	if d == 0 {
		d = defaultConnectTimeout
	}
	return d
}
