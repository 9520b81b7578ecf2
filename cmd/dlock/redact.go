//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"io"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// The one place where secrets are kept out of dlock's messages: every
// message dlock writes goes through a redactor holding the secrets of the
// backend string (the password of its URL's user information, and the
// values of password parameters in its query or key=value form, raw and
// decoded), so that neither dlock's own messages nor a library's error
// that quotes the connection string can print them.

// passwordParam matches password parameters of a URL query or of a pgx
// key=value string, with the value raw, quoted or not.
var passwordParam = regexp.MustCompile(`(?i)(?:^|[?&\s])(?:password|sslpassword|pass|requirepass)\s*=\s*('(?:[^'\\]|\\.)*'|[^&\s]*)`)

// secretsOf returns the secrets in a backend string, longest first.
func secretsOf(raw string) []string {
	set := map[string]bool{}
	add := func(s string) {
		if s == "" || s == "xxxxx" {
			return
		}
		set[s] = true
		if u, err := url.PathUnescape(s); err == nil {
			set[u] = true
		}
		if u, err := url.QueryUnescape(s); err == nil {
			set[u] = true
		}
		set[url.PathEscape(s)] = true
		set[url.QueryEscape(s)] = true
		set[url.UserPassword("", s).String()[1:]] = true
	}
	if _, rest, ok := strings.Cut(raw, "://"); ok {
		authority := rest
		if i := strings.IndexAny(authority, "?#"); i >= 0 {
			authority = authority[:i]
		}
		if at := strings.LastIndex(authority, "@"); at >= 0 {
			if _, pass, ok := strings.Cut(authority[:at], ":"); ok {
				add(pass)
			}
		}
	}
	for _, m := range passwordParam.FindAllStringSubmatch(raw, -1) {
		v := m[1]
		add(v)
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			inner := v[1 : len(v)-1]
			add(inner)
			add(strings.NewReplacer(`\'`, `'`, `\\`, `\`).Replace(inner))
		}
	}
	delete(set, "")
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redact replaces the secrets of the backend string raw in msg.
func redact(msg, raw string) string {
	for _, s := range secretsOf(raw) {
		msg = strings.ReplaceAll(msg, s, "xxxxx")
	}
	return msg
}

// redactURL is the backend string raw as dlock shows it: without secrets.
func redactURL(raw string) string { return redact(raw, raw) }

// redactor is an io.Writer that writes to w with secrets replaced. Each
// Write is one whole message.
type redactor struct {
	mu      sync.Mutex
	w       io.Writer
	secrets []string
}

func (r *redactor) setSecrets(raw string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secrets = secretsOf(raw)
}

func (r *redactor) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := string(p)
	for _, sec := range r.secrets {
		s = strings.ReplaceAll(s, sec, "xxxxx")
	}
	if _, err := io.WriteString(r.w, s); err != nil {
		return 0, err
	}
	return len(p), nil
}
