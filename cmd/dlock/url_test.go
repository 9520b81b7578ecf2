package main

import (
	"net"
	"strings"
	"testing"
)

func TestParseBackend(t *testing.T) {
	good := map[string]backendSpec{
		"file:///var/lock/app":                      {kind: "file", dir: "/var/lock/app"},
		"file://localhost/tmp/x":                    {kind: "file", dir: "/tmp/x"},
		"valkey://127.0.0.1:6379":                   {kind: "valkey", addrs: []string{"127.0.0.1:6379"}},
		"redis://h":                                 {kind: "valkey", addrs: []string{"h:6379"}},
		"rediss://u:p%40ss@h:1/2":                   {kind: "valkey", addrs: []string{"h:1"}, username: "u", password: "p@ss", db: 2, tls: true},
		"valkey://a:1,b:2,[::1]:3":                  {kind: "valkey", addrs: []string{"a:1", "b:2", "[::1]:3"}},
		"redlock://a:1,b:2,c:3":                     {kind: "redlock", addrs: []string{"a:1", "b:2", "c:3"}},
		"postgres://u@localhost:5432/db":            {kind: "postgres", url: "postgres://u@localhost:5432/db"},
		"postgresql://localhost/db?sslmode=disable": {kind: "postgres", url: "postgresql://localhost/db?sslmode=disable"},
	}
	for raw, want := range good {
		got, err := parseBackend(raw)
		if err != nil {
			t.Errorf("%s: %v", raw, err)
			continue
		}
		if got.kind != want.kind || got.dir != want.dir || got.url != want.url || strings.Join(got.addrs, ",") != strings.Join(want.addrs, ",") ||
			got.username != want.username || got.password != want.password || got.db != want.db || got.tls != want.tls {
			t.Errorf("%s: got %+v, want %+v", raw, got, want)
		}
	}
	bad := map[string]string{
		"":                       "want a URL",
		"/var/lock":              "want a URL",
		"ftp://x":                "unknown scheme",
		"file://host/x":          "names a local directory",
		"file:///x?y=1":          "no query",
		"valkey://":              "no host",
		"valkey://h:0":           "port",
		"valkey://h:99999":       "port",
		"valkey://h:1?x=1":       "no query",
		"valkey://h:1/db":        "database",
		"redlock://a:1":          "several independent nodes",
		"redis://u:secret@:1":    "empty host",
		"postgres://h:notaport/": "",
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

// FuzzParseBackend: any string gives a backend or an error, never a panic,
// and a backend it gives is well-formed.
func FuzzParseBackend(f *testing.F) {
	for _, s := range []string{"file:///tmp/x", "valkey://a:1,b:2", "redlock://a,b,c", "redis://u:p@h:1/3",
		"postgres://u:p@h/db?sslmode=disable", "file://", "valkey://@", "valkey://[::1]:1", "redis://%zz@h", "x://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		s, err := parseBackend(raw)
		if err != nil {
			return
		}
		switch s.kind {
		case "file":
			if !strings.HasPrefix(s.dir, "/") {
				t.Fatalf("%q: relative dir %q", raw, s.dir)
			}
		case "valkey", "redlock":
			if len(s.addrs) == 0 {
				t.Fatalf("%q: no addresses", raw)
			}
			for _, a := range s.addrs {
				if h, _, err := net.SplitHostPort(a); err != nil || h == "" {
					t.Fatalf("%q: bad address %q", raw, a)
				}
			}
		case "postgres":
		default:
			t.Fatalf("%q: kind %q", raw, s.kind)
		}
	})
}
