package valkey

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"
	"testing"
)

// FuzzKeys checks the key encoding on arbitrary names: keyBase never
// panics; every key starts with the prefix and holds exactly one hash tag,
// {enc(name)}, with no brace inside, right after the prefix; names of at
// most maxPlainName bytes are escaped (and decode back to the name, so
// distinct names get distinct keys), longer ones are hashed (their key
// carries the name's SHA-256 and has a bounded length). The fuzzer feeds
// pairs of names to check injectivity across both forms directly.
//
//	go test -run '^$' -fuzz FuzzKeys ./valkey
func FuzzKeys(f *testing.F) {
	for _, s := range []struct{ a, b string }{
		{"a", "A"}, {"{", "}"}, {"%7B", "{"}, {"~", "%7E"}, {"a:b", "a%3Ab"}, {"\x00", " "},
		{"é", "\xc3"}, {"{a}b", "a}{b"}, {"../x", "..%2Fx"},
		{strings.Repeat("x", maxPlainName), strings.Repeat("x", maxPlainName+1)},
		{strings.Repeat("{", maxPlainName+50), strings.Repeat("}", maxPlainName+50)},
		{strings.Repeat("x", longNameHead) + "~", strings.Repeat("x", 5000)},
	} {
		f.Add(s.a, s.b)
	}
	const prefix = "dlock:"
	f.Fuzz(func(t *testing.T, a, b string) {
		ka, oka := checkKey(t, prefix, a)
		kb, okb := checkKey(t, prefix, b)
		if !oka || !okb || a == b {
			return
		}
		if ka == kb {
			t.Fatalf("names %q and %q share the key base %q", a, b, ka)
		}
	})
}

// checkKey checks keyBase(prefix, name) and returns it; ok is false for
// the empty name (which must be refused).
func checkKey(t *testing.T, prefix, name string) (string, bool) {
	t.Helper()
	k, err := keyBase(prefix, name)
	if name == "" {
		if err == nil {
			t.Fatalf("empty name accepted: %q", k)
		}
		return "", false
	}
	if err != nil {
		t.Fatalf("keyBase(%q): %v", name, err)
	}
	if !strings.HasPrefix(k, prefix+"{") || !strings.HasSuffix(k, "}:") {
		t.Fatalf("key base %q of %q: not prefix + {tag} + ':'", k, name)
	}
	tag := k[len(prefix)+1 : len(k)-2]
	if strings.ContainsAny(tag, "{}") || strings.Count(k, "{") != 1 || strings.Count(k, "}") != 1 {
		t.Fatalf("key base %q of %q: not exactly one hash tag", k, name)
	}
	// lockStrings, which Backend uses, cuts the same base, keys and channel
	// from one string.
	for _, kd := range []kind{kindMutex, kindRead, kindWrite, kindSem} {
		var buf [5]string // as newRequestFor passes it
		base, keys, ch, err := lockStrings(buf[:], prefix, name, kd)
		wantKeys, wantCh := lockKeys(k, kd)
		if err != nil || base != k || !slices.Equal(keys, wantKeys) || ch != wantCh {
			t.Fatalf("lockStrings(%q, %q, %v) = %q %q %q, %v; want %q %q %q", prefix, name, kd, base, keys, ch, err, k, wantKeys, wantCh)
		}
	}
	// Every key of the lock (base + suffix) keeps the one tag.
	for _, key := range append(append(mutexKeys(k), rwKeys(k)...), semKeys(k)...) {
		if strings.ContainsAny(key[len(k):], "{}") {
			t.Fatalf("key %q has braces after its tag", key)
		}
	}
	if len(name) <= maxPlainName {
		if strings.Contains(tag, "~") {
			t.Fatalf("short name %q has a hashed tag %q", name, tag)
		}
		if got, ok := unescape(tag); !ok || got != name {
			t.Fatalf("tag %q of %q decodes to %q (%v)", tag, name, got, ok)
		}
		return k, true
	}
	sum := sha256.Sum256([]byte(name))
	want := "~" + hex.EncodeToString(sum[:])
	head, ok := unescape(strings.TrimSuffix(tag, want))
	if !strings.HasSuffix(tag, want) || !ok || head != name[:longNameHead] {
		t.Fatalf("long name (%d bytes): tag %q is not escaped head + '~' + SHA-256", len(name), tag)
	}
	if len(tag) > 3*longNameHead+1+2*sha256.Size {
		t.Fatalf("long name (%d bytes): tag of %d bytes", len(name), len(tag))
	}
	return k, true
}

// unescape inverts escapeTo; ok is false for text escapeTo cannot produce.
func unescape(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if c <= 0x20 || c >= 0x7f || c == '{' || c == '}' || c == '~' {
				return "", false
			}
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		v, err := hex.DecodeString(s[i+1 : i+3])
		if err != nil || strings.ToUpper(s[i+1:i+3]) != s[i+1:i+3] {
			return "", false
		}
		if c := v[0]; c > 0x20 && c < 0x7f && c != '{' && c != '}' && c != '%' && c != '~' {
			return "", false // escapeTo writes such a byte as itself
		}
		b.WriteByte(v[0])
		i += 2
	}
	return b.String(), true
}
