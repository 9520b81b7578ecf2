//go:build linux && !dlock_portable

package fs

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestCounterFormat(t *testing.T) {
	for _, v := range []uint64{0, 1, 42, 1<<63 + 5, math.MaxUint64 - 1, math.MaxUint64} {
		b := formatCounter(nil, v)
		if want := fmt.Sprintf("%020d\n", v); string(b) != want {
			t.Fatalf("formatCounter(%d) = %q, want %q", v, b, want)
		}
		if got, ok := parseCounter(b); !ok || got != v {
			t.Fatalf("parseCounter(%q) = %d, %v", b, got, ok)
		}
	}
	for _, bad := range []string{"", "1\n", "0000000000000000000001", "00000000000000000001x", "0000000000000000000a\n",
		"18446744073709551616\n", "99999999999999999999\n", "+0000000000000000001\n"} {
		if v, ok := parseCounter([]byte(bad)); ok {
			t.Fatalf("parseCounter(%q) = %d, want a refusal", bad, v)
		}
	}
}

// TestConcurrentReaderTokens: readers holding one name together, from many
// backends (open file descriptions) at once, take distinct tokens from the
// counter in the shared lock file, and a later writer a larger one.
func TestConcurrentReaderTokens(t *testing.T) {
	dir := t.TempDir()
	// A counter ahead of the wall clock: every token is then the stored
	// value plus one, and readers that did not take turns would repeat one.
	ahead := uint64(time.Now().Add(24 * time.Hour).UnixNano())
	if err := os.WriteFile(filepath.Join(dir, fileName(kindRW, "r")), formatCounter(nil, ahead), 0o600); err != nil {
		t.Fatal(err)
	}
	const n, rounds = 8, 50
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var top uint64
	var wg sync.WaitGroup
	for range n {
		b := newBackend(t, dir)
		wg.Go(func() {
			for range rounds {
				l, err := b.RLock(bg(), "r")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[l.Token()] {
					t.Errorf("token %d handed out twice", l.Token())
				}
				seen[l.Token()] = true
				top = max(top, l.Token())
				mu.Unlock()
				if err := l.Release(bg()); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	w := mustTry(t)(newBackend(t, dir).TryWLock(bg(), "r"))
	defer mustRelease(t, w)
	if len(seen) != n*rounds || w.Token() != ahead+n*rounds+1 {
		t.Fatalf("%d distinct reader tokens (want %d), writer %d after max %d", len(seen), n*rounds, w.Token(), top)
	}
	raw, err := os.ReadFile(w.Path())
	if want := formatCounter(nil, w.Token()); err != nil || len(raw) < counterLen || string(raw[:counterLen]) != string(want) {
		t.Fatalf("counter in %s: %q, %v; want %q", w.Path(), raw, err, want)
	}
}
