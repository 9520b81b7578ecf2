package fs

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"net/url"
	"strconv"
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

// slotted reports whether files of kind k carry a slot number (a
// semaphore's slot; a portable reader's holder record).
func slotted(k kind) bool { return k == kindSemSlot || k == kindRWHolder }

// decodeFile inverts fileName/slotName: it returns the kind, the escaped
// name and the slot (-1 unless slotted) of a file name, or ok false if no
// kind's layout fits.
func decodeFile(file string) (k kind, esc string, slot int, ok bool) {
	found := false
	for i, p := range kindPrefix {
		if strings.HasPrefix(file, p) {
			if found {
				return 0, "", 0, false // two kinds claim the file: ambiguous
			}
			k, esc, found = kind(i), file[len(p):], true
		}
	}
	if !found {
		return 0, "", 0, false
	}
	slot = -1
	if slotted(k) {
		i := strings.LastIndexByte(esc, slotSep)
		if i < 0 {
			return 0, "", 0, false
		}
		n, err := strconv.Atoi(esc[i+1:])
		if err != nil || n < 0 || strconv.Itoa(n) != esc[i+1:] {
			return 0, "", 0, false
		}
		esc, slot = esc[:i], n
	}
	return k, esc, slot, esc != ""
}

// fileOf is the file of the triple (k, name, slot); slot counts only for
// slotted kinds.
func fileOf(k kind, name string, slot int) string {
	f := fileName(k, name)
	if slotted(k) {
		f = slotName(f, slot)
	}
	return f
}

// FuzzFileNames checks the file names of every kind, semaphore slots
// included: each is one safe path element; distinct (kind, name, slot)
// triples get distinct files; each file decodes to exactly its triple (for
// hashed names: its kind, slot, readable prefix and hash); slotKey finds the
// slot prefix of slot files and nothing in other files.
func FuzzFileNames(f *testing.F) {
	long := strings.Repeat("%", 300)
	for _, s := range []struct {
		k1 uint8
		a  string
		i  int
		k2 uint8
		b  string
		j  int
	}{
		{uint8(kindSemSlot), "a", 1, uint8(kindSemSlot), "a", 10},
		{uint8(kindSemSlot), "a+1", 0, uint8(kindSemSlot), "a", 1},
		{uint8(kindSemSlot), "a", 11, uint8(kindSemSlot), "a+1", 1},
		{uint8(kindSemSlot), "x", 0, uint8(kindSemCounter), "x", 0},
		{uint8(kindSemSlot), "c-x+0", 0, uint8(kindSemCounter), "x+0", 0},
		{uint8(kindRW), "g-x", 0, uint8(kindRWGate), "x", 0},
		{uint8(kindRW), "c-x", 0, uint8(kindRWCounter), "x", 0},
		{uint8(kindMutex), "..", 0, uint8(kindMutex), ".", 0},
		{uint8(kindSemSlot), long, math.MaxInt, uint8(kindSemSlot), long + "x", math.MaxInt},
		{uint8(kindSemCounter), strings.Repeat("é", 100), 0, uint8(kindSemSlot), strings.Repeat("é", 100), -1},
		{uint8(kindMutex), "a~b", 0, uint8(kindMutex), "a%7Eb", 0},
		{uint8(kindMutex), strings.Repeat("a", 199) + "\x00", 0, uint8(kindMutex), strings.Repeat("a", 200), 0},
		{7, "x", 0, 255, "y", 3},
	} {
		f.Add(s.k1, s.a, s.i, s.k2, s.b, s.j)
	}
	norm := func(k uint8, slot int) (kind, int) {
		kk := kind(int(k) % len(kindPrefix))
		if !slotted(kk) {
			return kk, -1
		}
		if slot < 0 {
			slot = -(slot + 1) // covers 0..MaxInt
		}
		return kk, slot
	}
	check := func(t *testing.T, k kind, name string, slot int) string {
		file := fileOf(k, name, slot)
		checkFileName(t, file)
		dk, esc, dslot, ok := decodeFile(file)
		if !ok || dk != k || dslot != slot {
			t.Fatalf("file %q of (%d, %q, %d) decodes to (%d, %q, %d, %v)", file, k, name, slot, dk, esc, dslot, ok)
		}
		if esc != encode(name) {
			t.Fatalf("file %q: escaped part %q, want %q", file, esc, encode(name))
		}
		if h := strings.IndexByte(esc, hashSep); h >= 0 {
			sum := sha256.Sum256([]byte(name))
			if esc[h+1:] != hex.EncodeToString(sum[:]) {
				t.Fatalf("hashed file %q of %q: bad hash", file, name)
			}
			if p, err := url.PathUnescape(esc[:h]); err != nil || !strings.HasPrefix(name, p) {
				t.Fatalf("hashed file %q: readable part does not decode to a prefix of %q (%q, %v)", file, name, p, err)
			}
		} else if d, ok := decode(esc); !ok || d != name {
			t.Fatalf("file %q decodes to %q (%v), want %q", file, d, ok, name)
		}
		wantKey := ""
		if k == kindSemSlot {
			wantKey = fileName(kindSemSlot, name)
		}
		if got := slotKey(file); got != wantKey {
			t.Fatalf("slotKey(%q) = %q, want %q", file, got, wantKey)
		}
		return file
	}
	f.Fuzz(func(t *testing.T, k1 uint8, a string, i int, k2 uint8, b string, j int) {
		if a == "" || b == "" {
			return
		}
		ka, i := norm(k1, i)
		kb, j := norm(k2, j)
		fa, fb := check(t, ka, a, i), check(t, kb, b, j)
		if (ka != kb || a != b || i != j) && fa == fb {
			t.Fatalf("(%d, %q, %d) and (%d, %q, %d) share the file %q", ka, a, i, kb, b, j, fa)
		}
	})
}
