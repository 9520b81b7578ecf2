package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/fs"
	"github.com/dlock-go/dlock/pg"
	"github.com/dlock-go/dlock/valkey"
)

// backendSpec is a parsed backend URL.
type backendSpec struct {
	kind     string   // "file", "postgres", "valkey", "redlock"
	dir      string   // file
	url      string   // postgres: the connection string as given
	addrs    []string // valkey, redlock: host:port
	username string
	password string
	db       int
	tls      bool
}

// parseBackend parses a backend URL (see the package doc), saying exactly
// what is wrong with a bad one.
func parseBackend(raw string) (backendSpec, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	scheme = strings.ToLower(scheme)
	if !ok {
		return backendSpec{}, fmt.Errorf("backend %q: want a URL such as file:///path, postgres://host/db, valkey://host:port or redlock://h1,h2,h3", raw)
	}
	switch scheme {
	case "file":
		u, err := url.Parse(raw)
		if err != nil {
			return backendSpec{}, fmt.Errorf("backend %q: %w", raw, err)
		}
		if u.Host != "" && u.Host != "localhost" {
			return backendSpec{}, fmt.Errorf("backend %q: a file URL names a local directory (file:///path), not host %q", raw, u.Host)
		}
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return backendSpec{}, fmt.Errorf("backend %q: want an absolute directory path (file:///path/to/dir)", raw)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return backendSpec{}, fmt.Errorf("backend %q: a file URL takes no query or fragment", raw)
		}
		return backendSpec{kind: "file", dir: u.Path}, nil
	case "postgres", "postgresql":
		if _, err := pgxpool.ParseConfig(raw); err != nil {
			return backendSpec{}, fmt.Errorf("backend %q: %w", redact(raw), err)
		}
		return backendSpec{kind: "postgres", url: raw}, nil
	case "valkey", "redis", "valkeys", "rediss", "redlock":
		s := backendSpec{kind: "valkey", tls: scheme == "valkeys" || scheme == "rediss"}
		if scheme == "redlock" {
			s.kind = "redlock"
		}
		if err := s.parseNodes(rest); err != nil {
			return backendSpec{}, fmt.Errorf("backend %q: %w", redact(raw), err)
		}
		if s.kind == "redlock" && len(s.addrs) < 2 {
			return backendSpec{}, fmt.Errorf("backend %q: RedLock needs several independent nodes (3 or 5): redlock://h1:p1,h2:p2,h3:p3", raw)
		}
		return s, nil
	}
	return backendSpec{}, fmt.Errorf("backend %q: unknown scheme %q (want file, postgres, valkey, redis or redlock)", redact(raw), scheme)
}

// parseNodes parses [user[:password]@]host:port[,host:port...][/db].
func (s *backendSpec) parseNodes(rest string) error {
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		return errors.New("no query or fragment is accepted")
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		user, pass, _ := strings.Cut(rest[:at], ":")
		var err error
		if s.username, err = url.PathUnescape(user); err != nil {
			return fmt.Errorf("user name: %w", err)
		}
		if s.password, err = url.PathUnescape(pass); err != nil {
			return fmt.Errorf("password: %w", err)
		}
		rest = rest[at+1:]
	}
	hosts, db, hasDB := strings.Cut(rest, "/")
	if hasDB && db != "" {
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return fmt.Errorf("database %q: want a number", db)
		}
		s.db = n
	}
	if hosts == "" {
		return errors.New("no host: want host:port")
	}
	for _, h := range strings.Split(hosts, ",") {
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
		s.addrs = append(s.addrs, net.JoinHostPort(host, port))
	}
	return nil
}

// redact hides a URL's password in messages.
func redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
		return scheme + "://" + user + ":xxxxx@" + rest[at+1:]
	}
	return raw
}

// held is a held lock of any backend.
type held interface {
	Release(ctx context.Context) error
	Lost() <-chan struct{}
	Token() (uint64, bool)
}

// acquireFunc takes the lock name, once (try) or waiting until ctx is done.
type acquireFunc func(ctx context.Context, name string, try bool) (held, error)

// open connects to the backend and returns how to take the lock that cfg
// asks for, and how to close the backend afterwards.
func (s backendSpec) open(ctx context.Context, cfg *config) (acquireFunc, func(), error) {
	switch s.kind {
	case "file":
		b, err := fs.New(s.dir)
		if err != nil {
			return nil, nil, err
		}
		acq, err := acquirerFor[*fs.Lease](b, cfg)
		return acq, func() { b.Close() }, err
	case "postgres":
		pc, err := pgxpool.ParseConfig(s.url)
		if err != nil {
			return nil, nil, err
		}
		if pc.ConnConfig.RuntimeParams == nil {
			pc.ConnConfig.RuntimeParams = map[string]string{}
		}
		if pc.ConnConfig.RuntimeParams["application_name"] == "" {
			pc.ConnConfig.RuntimeParams["application_name"] = "dlock"
		}
		pool, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			return nil, nil, fmt.Errorf("postgres: %w", err)
		}
		if err := pool.Ping(ctx); err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("postgres: %w", err)
		}
		b := pg.New(pool)
		acq, err := acquirerFor[*pg.Lease](b, cfg)
		return acq, func() { b.Close(); pool.Close() }, err
	case "valkey":
		client, err := valkeygo.NewClient(s.clientOption(s.addrs))
		if err != nil {
			return nil, nil, fmt.Errorf("valkey: %w", err)
		}
		b, err := valkey.New(client)
		if err != nil {
			client.Close()
			return nil, nil, err
		}
		acq, err := acquirerFor[*valkey.Lease](b, cfg)
		return acq, func() { b.Close(); client.Close() }, err
	case "redlock":
		var clients []valkeygo.Client
		closeAll := func() {
			for _, c := range clients {
				c.Close()
			}
		}
		for _, a := range s.addrs {
			c, err := valkeygo.NewClient(s.clientOption([]string{a}))
			if err != nil {
				// A node down is what RedLock tolerates: go on with the rest
				// and let the majority rule decide.
				continue
			}
			clients = append(clients, c)
		}
		if len(clients) <= len(s.addrs)/2 {
			closeAll()
			return nil, nil, fmt.Errorf("redlock: only %d of %d nodes reachable, a majority is needed", len(clients), len(s.addrs))
		}
		b, err := valkey.NewRedLock(clients)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		acq, err := acquirerFor[*valkey.Lease](b, cfg)
		return acq, func() { b.Close(); closeAll() }, err
	}
	return nil, nil, fmt.Errorf("unknown backend kind %q", s.kind)
}

func (s backendSpec) clientOption(addrs []string) valkeygo.ClientOption {
	o := valkeygo.ClientOption{
		InitAddress: addrs,
		Username:    s.username,
		Password:    s.password,
		SelectDB:    s.db,
	}
	if s.tls {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o
}

// acquirerFor picks the primitive cfg asks for from b. Exclusive locks are
// the write side of the reader-writer lock where b has one, so that they
// exclude -shared holders as flock -x excludes flock -s; a backend without
// reader-writer locks (RedLock) uses its mutex.
func acquirerFor[L backend.Lease](b any, cfg *config) (acquireFunc, error) {
	var g *dlock.Guard[L]
	rw, hasRW := b.(backend.RWLocker[L])
	switch {
	case cfg.semaphore > 0:
		sem, ok := b.(backend.Semaphore[L])
		if !ok {
			return nil, errors.New("this backend offers no semaphore")
		}
		g = dlock.NewSemaphore(sem, cfg.semaphore)
	case cfg.shared:
		if !hasRW {
			return nil, errors.New("this backend offers no reader-writer lock (-shared)")
		}
		g = dlock.NewRWMutex(rw).Read()
	case hasRW:
		g = dlock.NewRWMutex(rw).Write()
	default:
		mu, ok := b.(backend.Locker[L])
		if !ok {
			return nil, errors.New("this backend offers no exclusive lock")
		}
		g = dlock.NewMutex(mu)
	}
	return func(ctx context.Context, name string, try bool) (held, error) {
		var (
			lk  *dlock.Lock[L]
			err error
		)
		if try {
			lk, err = g.TryAcquire(ctx, name)
		} else {
			lk, err = g.Acquire(ctx, name)
		}
		if err != nil {
			return nil, err
		}
		return lk, nil
	}, nil
}
