package fs

import (
	"net/url"
	"strings"
	"testing"
)

func TestEncodeExamples(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"nightly-report", "nightly-report"},
		{"Case_Kept.v2", "Case_Kept.v2"},
		{".hidden", "%2Ehidden"},
		{"..", "%2E."},
		{".", "%2E"},
		{"a/b", "a%2Fb"},
		{"../etc/passwd", "%2E.%2Fetc%2Fpasswd"},
		{"100%", "100%25"},
		{"x\x00y", "x%00y"},
		{"é", "%C3%A9"},
		{"a+b~c", "a%2Bb%7Ec"},
	} {
		if got := encode(c.in); got != c.want {
			t.Errorf("encode(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	long := strings.Repeat("x", 300)
	got := encode(long)
	if !strings.HasPrefix(got, strings.Repeat("x", hashedPrefix)+"~") || len(got) != hashedPrefix+1+64 {
		t.Errorf("encode(300 x) = %q: want a readable prefix, '~' and a SHA-256", got)
	}
	// A cut never splits an escape.
	got = encode(strings.Repeat("/", 100))
	if i := strings.IndexByte(got, '~'); i%3 != 0 {
		t.Errorf("encode(100 /) = %q: the prefix splits an escape", got)
	}
}

// decode inverts encode for names that were not hashed.
func decode(e string) (string, bool) {
	if strings.ContainsRune(e, hashSep) {
		return "", false
	}
	s, err := url.PathUnescape(e)
	return s, err == nil
}

// checkFileName asserts that f is a safe single path element.
func checkFileName(t *testing.T, f string) {
	t.Helper()
	if f == "" || f == "." || f == ".." || len(f) > 255 || strings.ContainsAny(f, "/\x00") {
		t.Fatalf("unsafe file name %q (%d bytes)", f, len(f))
	}
}

func FuzzName(f *testing.F) {
	for _, s := range [][2]string{
		{"a", "A"},
		{"lock", "lock\x00"},
		{"..", "."},
		{"../x", "..%2Fx"},
		{"%2F", "/"},
		{".a", "%2Ea"},
		{strings.Repeat("a", 200), strings.Repeat("a", 201)},
		{strings.Repeat("/", 66), strings.Repeat("/", 67)},
		{strings.Repeat("é", 150), strings.Repeat("é", 151)},
		{"s+1", "s"},
		{"x~y", "x%7Ey"},
		{"\xff\xfe", "\xfe\xff"},
		{strings.Repeat("m", 10_000) + "a", strings.Repeat("m", 10_000) + "b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if a == "" || b == "" {
			return
		}
		for k := range kindPrefix {
			fa, fb := fileName(kind(k), a), fileName(kind(k), b)
			if kind(k) == kindSemSlot {
				fa, fb = slotName(fa, 12345), slotName(fb, 0)
				if slotKey(fa) != fileName(kindSemSlot, a) {
					t.Fatalf("slotKey(%q) = %q", fa, slotKey(fa))
				}
			}
			checkFileName(t, fa)
			checkFileName(t, fb)
			if a != b && fa == fb {
				t.Fatalf("names %q and %q share the file %q", a, b, fa)
			}
			for k2 := range kindPrefix {
				if k2 != k && fileName(kind(k2), a) == fileName(kind(k), b) {
					t.Fatalf("kinds %d and %d share the file %q", k, k2, fa)
				}
			}
		}
		if d, ok := decode(encode(a)); ok && d != a {
			t.Fatalf("encode(%q) = %q decodes to %q", a, encode(a), d)
		}
	})
}
