//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// parsed is what a test checks of a backendSpec.
type parsed struct {
	kind, dir     string
	hosts         string // comma-separated
	user, pass    string
	db            int
	tls           bool
	fencing       string
	holders       string
	lease         time.Duration
	master, cname string
	unixSocket    bool
}

func summary(s backendSpec) parsed {
	p := parsed{kind: s.kind, dir: s.dir, hosts: strings.Join(s.hosts, ","), fencing: s.fencing, holders: s.holders, lease: s.lease}
	if s.pg != nil {
		p.user, p.pass = s.pg.ConnConfig.User, s.pg.ConnConfig.Password
	}
	if len(s.valkey) > 0 {
		o := s.valkey[0]
		p.user, p.pass, p.db, p.tls = o.Username, o.Password, o.SelectDB, o.TLSConfig != nil
		p.master, p.cname, p.unixSocket = o.Sentinel.MasterSet, o.ClientName, o.DialCtxFn != nil
	}
	return p
}

func TestParseBackend(t *testing.T) {
	good := map[string]parsed{
		"file:///var/lock/app":                           {kind: "file", dir: "/var/lock/app"},
		"file://localhost/tmp/x":                         {kind: "file", dir: "/tmp/x"},
		"valkey://127.0.0.1:6379":                        {kind: "valkey", hosts: "127.0.0.1:6379"},
		"redis://h":                                      {kind: "valkey", hosts: "h:6379"},
		"rediss://u:p%40ss@h:1/2":                        {kind: "valkey", hosts: "h:1", user: "u", pass: "p@ss", db: 2, tls: true},
		"valkey://a:1,b:2,[::1]:3":                       {kind: "valkey", hosts: "a:1,b:2,[::1]:3"},
		"valkey://s1:26379,s2:26379?master_set=mymain":   {kind: "valkey", hosts: "s1:26379,s2:26379", master: "mymain"},
		"valkey://h:1?client_name=app&dial_timeout=1s":   {kind: "valkey", hosts: "h:1", cname: "app"},
		"valkey://h:1?dlock_lease=2s":                    {kind: "valkey", hosts: "h:1", lease: 2 * time.Second},
		"valkey://h:1?dlock_lease=5":                     {kind: "valkey", hosts: "h:1", lease: 5 * time.Second},
		"unix:///run/valkey.sock?db=3":                   {kind: "valkey", hosts: "/run/valkey.sock", db: 3, unixSocket: true},
		"redlock://a:1,b:2,c:3":                          {kind: "redlock", hosts: "a:1,b:2,c:3"},
		"redlock://:pw@a:1,b:2,c:3/4?dlock_lease=1500ms": {kind: "redlock", hosts: "a:1,b:2,c:3", pass: "pw", db: 4, lease: 1500 * time.Millisecond},
		"postgres://u@localhost:5432/db":                 {kind: "postgres", hosts: "localhost:5432", user: "u"},
		"postgresql://localhost/db?sslmode=disable":      {kind: "postgres", hosts: "localhost:5432"},
		"postgres://u:pw@h/db?dlock_fencing=on":          {kind: "postgres", hosts: "h:5432", user: "u", pass: "pw", fencing: "dlock_fencing"},
		"postgres://h/db?dlock_fencing=app.fence":        {kind: "postgres", hosts: "h:5432", fencing: "app.fence"},
		"pg:host=h port=6 user=u password=pw dbname=d":   {kind: "postgres", hosts: "h:6", user: "u", pass: "pw"},
		"pg:host=h dlock_fencing=t":                      {kind: "postgres", hosts: "h:5432", fencing: "t"},
		"postgres://h/db?dlock_holders=on":               {kind: "postgres", hosts: "h:5432", holders: "dlock_holders"},
		"pg:host=h dlock_holders=app.who":                {kind: "postgres", hosts: "h:5432", holders: "app.who"},
	}
	for raw, want := range good {
		got, err := parseBackend(raw)
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		s := summary(got)
		if want.user == "" && got.pg != nil {
			s.user = "" // pgx's default: the OS user
		}
		if s != want {
			t.Errorf("%s: got %+v, want %+v", raw, s, want)
		}
		if got.pg != nil {
			for k := range got.pg.ConnConfig.RuntimeParams {
				if strings.HasPrefix(k, "dlock_") {
					t.Errorf("%s: %s would reach the server", raw, k)
				}
			}
			if app := got.pg.ConnConfig.RuntimeParams["application_name"]; !strings.HasPrefix(app, "dlock ") {
				t.Errorf("%s: application_name %q, want pg.ApplicationName()'s", raw, app)
			}
		}
	}
	bad := map[string]string{
		"":                                 "want a URL",
		"/var/lock":                        "want a URL",
		"ftp://x":                          "unknown scheme",
		"file://host/x":                    "names a local directory",
		"file:///x?y=1":                    "no query",
		"file://u:secret@/x":               "no user",
		"valkey://":                        "no host",
		"valkey://h:0":                     "port",
		"valkey://h:99999":                 "port",
		"valkey://h:1/db":                  "database",
		"valkey://h:1?dlock_leese=1s":      "unknown parameter dlock_leese",
		"valkey://h:1?dlock_lease=1ms":     "at least 10ms",
		"redlock://a:1":                    "several independent nodes",
		"redlock://a,b,c?master_set=m":     "RedLock takes its nodes",
		"redis://u:secret@:1":              "empty host",
		"redis://u:secret@h:x":             "port",
		"postgres://h:notaport/":           "",
		"postgres://h/d?dlock_fence=on":    "unknown parameter dlock_fence",
		"pg:host=h port=x password=secret": "",
	}
	for raw, want := range bad {
		_, err := parseBackend(raw)
		if err == nil {
			t.Errorf("%q: accepted", raw)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not say %q", raw, err, want)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: error %q shows the password", raw, err)
		}
	}
}

func TestRedact(t *testing.T) {
	for raw, secret := range map[string]string{
		"redlock://:pw0rd@h:1":                           "pw0rd",
		"redis://u:p%40ss@h:1":                           "p@ss",
		"postgres://u:hunter2@h/db?sslmode=disable":      "hunter2",
		"postgres://u@h/db?password=hunter3":             "hunter3",
		"pg:host=h password=hunter4 dbname=d":            "hunter4",
		"pg:host=h password='hun ter5' dbname=d":         "hun ter5",
		"file://u:hunter6@localhost/x":                   "hunter6",
		"valkeys://user:s3cr%2Ft@h:1,h2:2?client_name=x": "s3cr/t",
	} {
		if got := redactURL(raw); strings.Contains(got, secret) || !strings.Contains(got, "xxxxx") {
			t.Errorf("%s: shown as %s", raw, got)
		}
		msg := "failed to connect with " + secret + " and " + raw
		if got := redact(msg, raw); strings.Contains(got, secret) {
			t.Errorf("%s: %q redacted to %q", raw, msg, got)
		}
	}
}

// ownWords reports that sec shows in err, the error of raw, only as part
// of dlock's own wording ("redi" in "redis"): the error of raw with every
// letter and digit of sec changed holds sec as often.
func ownWords(raw, sec string, err error) bool {
	alt := []byte(sec)
	for i, c := range alt {
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			alt[i] = 'q'
			if c == 'q' {
				alt[i] = 'z'
			}
		case c >= '0' && c <= '9':
			alt[i] = '7'
			if c == '7' {
				alt[i] = '3'
			}
		}
	}
	if string(alt) == sec {
		return false
	}
	_, err2 := parseBackend(strings.ReplaceAll(raw, sec, string(alt)))
	return err2 != nil && strings.Count(err2.Error(), sec) >= strings.Count(err.Error(), sec)
}

// FuzzParseBackend: any string gives a backend or an error, never a panic;
// a backend it gives is well-formed, and an error never shows a password.
func FuzzParseBackend(f *testing.F) {
	for _, s := range []string{"file:///tmp/x", "valkey://a:1,b:2", "redlock://a,b,c", "redis://u:p@h:1/3",
		"postgres://u:p@h/db?sslmode=disable", "file://", "valkey://@", "valkey://[::1]:1", "redis://%zz@h", "x://",
		"pg:host=h password=p", "unix:///s", "valkey://h?dlock_lease=1s",
		// Found by the fuzzer (CI): what looks like a password in the path,
		// echoed by valkey-go's error; and the same shape for RedLock.
		"redis:///0:0000@0", "redlock://h1:1,h2:1,h3:1/0:0000@0",
		// Found by the fuzzer (CI): a "password" that dlock's own words hold.
		"://:redi@"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := parseBackend(raw)
		if err != nil {
			for _, sec := range secretsOf(raw) {
				if len(sec) >= 4 && strings.Contains(err.Error(), sec) && !ownWords(raw, sec, err) {
					t.Fatalf("%q: error %q shows secret %q", raw, err, sec)
				}
			}
			return
		}
		switch s.kind {
		case "file":
			if !strings.HasPrefix(s.dir, "/") {
				t.Fatalf("%q: relative dir %q", raw, s.dir)
			}
		case "valkey", "redlock":
			if len(s.hosts) == 0 || len(s.valkey) == 0 {
				t.Fatalf("%q: no addresses", raw)
			}
			if s.valkey[0].DialCtxFn == nil {
				for _, a := range s.hosts {
					if h, _, err := net.SplitHostPort(a); err != nil || h == "" {
						t.Fatalf("%q: bad address %q", raw, a)
					}
				}
			}
		case "postgres":
			if s.pg == nil {
				t.Fatalf("%q: no config", raw)
			}
		default:
			t.Fatalf("%q: kind %q", raw, s.kind)
		}
	})
}
