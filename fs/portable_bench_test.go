//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows || (linux && dlock_portable)

package fs

import (
	"testing"
	"time"
)

// BenchmarkPortableWrite is one uncontended TryWLock and Release of an RW
// lock, whose writer tries u-NAME (see Upgradeable read locks): "plain", a
// name without u-NAME (one failed open), and "upgraded", a name whose
// u-NAME an upgradeable reader left (the sweep is kept away, so it stays):
//
//	go test -tags dlock_portable -run '^$' -bench PortableWrite -benchmem ./fs
func BenchmarkPortableWrite(b *testing.B) {
	for _, sub := range []string{"plain", "upgraded"} {
		b.Run(sub, func(b *testing.B) {
			be, err := New(b.TempDir(), WithLossInterval(time.Hour))
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			if sub == "upgraded" {
				u, ok, err := be.TryULock(bg(), "bench")
				if err != nil || !ok {
					b.Fatal(ok, err)
				}
				if err := u.Release(bg()); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				w, ok, err := be.TryWLock(bg(), "bench")
				if err != nil || !ok {
					b.Fatal(ok, err)
				}
				if err := w.Release(bg()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
