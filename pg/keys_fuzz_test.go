package pg

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/dlock-go/dlock"
)

// FuzzKeys checks the name-to-key mapping and the key spelling
// (go test -run '^$' -fuzz FuzzKeys ./pg/):
//
//   - nothing panics, whatever the bytes;
//   - parseKey(k.String()) == k for every key of both spaces;
//   - parseKey accepts exactly the canonical spelling: anything it accepts
//     prints back as itself, anything else is refused with an error
//     matching dlock.ErrInvalidName, and the usual non-canonical variants
//     of a canonical key ("+1", "01", " 1", "1, 2", "-0") are refused;
//   - the mutex, RW, semaphore-slot and semaphore-fencing keys of one name
//     are distinct (a sanity check: the 64-bit hash can collide across
//     names, as documented, so injectivity across names is not asserted).
func FuzzKeys(f *testing.F) {
	f.Add("", int64(0), int32(0), int32(0), "0")
	f.Add("a", int64(42), int32(1), int32(2), "1,2")
	f.Add("nightly-report", int64(-7), int32(-1), int32(7), "-7")
	f.Add("\x00{}../", int64(math.MinInt64), int32(math.MinInt32), int32(math.MaxInt32), "-9223372036854775808")
	f.Add(strings.Repeat("x", 10_000), int64(math.MaxInt64), int32(math.MaxInt32), int32(math.MinInt32), "9223372036854775808")
	f.Add("\xff\xfe", int64(1), int32(0), int32(-0), "+1")
	f.Add("Name", int64(10), int32(3000), int32(1), "01")
	f.Add("name", int64(-1), int32(1), int32(2), "1, 2")
	f.Add("ü", int64(7), int32(0), int32(0), " 1")
	f.Add("x", int64(0), int32(0), int32(0), "-0")
	f.Add("y", int64(5), int32(1), int32(2), "1,2,3")
	f.Add("z", int64(5), int32(1), int32(2), "3000000000,1")
	f.Add("w", int64(5), int32(1), int32(2), "1,")
	f.Add("v", int64(5), int32(1), int32(2), ",")
	f.Add("u", int64(5), int32(1), int32(2), "0x10")
	f.Add("t", int64(5), int32(1), int32(2), "1_000")
	f.Fuzz(func(t *testing.T, name string, v int64, a, b int32, s string) {
		// Named keys of one name: mutex, RW, fencing row, slots 0..3.
		keys := map[Key]string{}
		add := func(k Key, what string) {
			if k.pair {
				t.Fatalf("%s key of %q is in the pair space", what, name)
			}
			if prev, dup := keys[k]; dup {
				t.Fatalf("%s and %s of %q share key %v", prev, what, name, k)
			}
			keys[k] = what
		}
		add(MutexKey(name), "mutex")
		add(RWKey(name), "rw")
		add(semKey(name), "semaphore fencing row")
		for i := range 4 {
			add(semSlotKey(name, i), "semaphore slot "+strconv.Itoa(i))
		}
		if MutexKey(name) != MutexKey(strings.Clone(name)) {
			t.Fatal("MutexKey is not a function of the name")
		}
		for k := range keys {
			roundTrip(t, k)
		}

		// Numeric keys of both spaces.
		ik, pk := Int64Key(v), PairKey(a, b)
		if got, ok := ik.Int64(); !ok || got != v {
			t.Fatalf("Int64Key(%d).Int64() = %d, %v", v, got, ok)
		}
		if x, y, ok := pk.Pair(); !ok || x != a || y != b {
			t.Fatalf("PairKey(%d, %d).Pair() = %d, %d, %v", a, b, x, y, ok)
		}
		if _, ok := ik.Int64(); !ok {
			t.Fatal("Int64Key not in the bigint space")
		}
		if _, _, ok := ik.Pair(); ok {
			t.Fatal("Int64Key in the pair space")
		}
		if _, ok := pk.Int64(); ok {
			t.Fatal("PairKey in the bigint space")
		}
		if ik == pk {
			t.Fatalf("Int64Key(%d) == PairKey(%d, %d): the spaces must differ", v, a, b)
		}
		roundTrip(t, ik)
		roundTrip(t, pk)
		for _, k := range []Key{ik, pk} {
			c := k.String()
			for _, bad := range nonCanonical(c) {
				if got, err := parseKey(bad); err == nil {
					t.Fatalf("parseKey(%q) = %v, want ErrInvalidName (canonical: %q)", bad, got, c)
				} else if !errors.Is(err, dlock.ErrInvalidName) {
					t.Fatalf("parseKey(%q): %v, want ErrInvalidName", bad, err)
				}
			}
		}

		// Arbitrary spellings: accepted only when canonical.
		k, err := parseKey(s)
		switch {
		case err == nil && k.String() != s:
			t.Fatalf("parseKey(%q) accepted a non-canonical spelling of %q", s, k.String())
		case err == nil:
			roundTrip(t, k)
		case !errors.Is(err, dlock.ErrInvalidName):
			t.Fatalf("parseKey(%q): %v, want ErrInvalidName", s, err)
		case k != Key{}:
			t.Fatalf("parseKey(%q) failed but returned %v", s, k)
		}
		if _, err := keyReq(s, exclusive); (err == nil) != (parseKeyErr(s) == nil) {
			t.Fatalf("keyReq(%q) and parseKey disagree: %v", s, err)
		}
		_ = shortName(name)
		_ = shortName(s)
	})
}

// parseKeyErr returns parseKey's error alone.
func parseKeyErr(s string) error { _, err := parseKey(s); return err }

func roundTrip(t *testing.T, k Key) {
	t.Helper()
	s := k.String()
	back, err := parseKey(s)
	if err != nil || back != k {
		t.Fatalf("parseKey(%q) = %v, %v; want %v", s, back, err, k)
	}
}

// nonCanonical returns spellings of the canonical key c that denote the
// same numbers but are not c.
func nonCanonical(c string) []string {
	out := []string{"+" + c, " " + c, c + " ", c + "\x00", "0" + c, c + ",", "," + c}
	if a, b, ok := strings.Cut(c, ","); ok {
		out = append(out, a+", "+b, a+" ,"+b, withPlusOrZero(a)+","+b, a+","+withPlusOrZero(b))
	} else {
		out = append(out, withPlusOrZero(c), c+".0")
	}
	if c == "0" {
		out = append(out, "-0", "00")
	}
	return out
}

// withPlusOrZero returns a number spelled with a leading zero after its
// sign ("-07", "07").
func withPlusOrZero(n string) string {
	if rest, ok := strings.CutPrefix(n, "-"); ok {
		return "-0" + rest
	}
	return "0" + n
}
