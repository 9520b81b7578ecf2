package bench

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

// allLocker is a locker that can take several names at once.
type allLocker interface {
	lockAll(ctx context.Context, names []string) (held, error)
}

func (d dlockLocker[L]) lockAll(ctx context.Context, names []string) (held, error) {
	set, err := d.g.AcquireAll(ctx, names)
	if err != nil {
		return nil, err
	}
	return set, nil
}

func (r redislockLocker) lockAll(ctx context.Context, names []string) (held, error) {
	l, err := r.c.ObtainMulti(ctx, names, leaseTTL, r.opt)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// heldSeq is locks taken one after another, released in reverse order.
type heldSeq []held

func (s heldSeq) Release(ctx context.Context) error {
	var first error
	for _, h := range slices.Backward(s) {
		if err := h.Release(ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// lockSeq takes names one after another with lk, as a user without a
// composite lock would (in sorted order, so that two such users cannot
// deadlock).
func lockSeq(ctx context.Context, lk locker, names []string) (held, error) {
	s := make(heldSeq, 0, len(names))
	for _, n := range names {
		h, err := lk.lock(ctx, n)
		if err != nil {
			_ = s.Release(ctx)
			return nil, err
		}
		s = append(s, h)
	}
	return s, nil
}

// compositeSizes are the set sizes BenchmarkComposite measures.
var compositeSizes = []int{2, 8, 32}

// BenchmarkComposite measures taking and releasing a set of free names at
// once: lib-allN takes the N names with the library's composite lock
// (dlock's AcquireAll, redislock's ObtainMulti), lib-seqN with N single
// acquisitions one after another. Reported: ns/op (the mean) and p50-ns,
// and allocations.
func BenchmarkComposite(b *testing.B) {
	for _, l := range libs {
		if l.name != "dlock" && l.name != "redislock" {
			continue
		}
		for _, n := range compositeSizes {
			for _, mode := range []string{"all", "seq"} {
				b.Run(fmt.Sprintf("%s/%s-%s%d", l.backend, l.name, mode, n), func(b *testing.B) {
					lk := l.open(b, b.TempDir())
					take := func(ctx context.Context, names []string) (held, error) { return lockSeq(ctx, lk, names) }
					if mode == "all" {
						al, ok := lk.(allLocker)
						if !ok {
							b.Skip("no composite lock")
						}
						take = al.lockAll
					}
					names := make([]string, n)
					for i := range names {
						names[i] = lockName(b, fmt.Sprint(i))
					}
					slices.Sort(names)
					ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
					defer cancel()
					for range 3 { // warm up: connections, scripts, lock files
						h, err := take(ctx, names)
						if err != nil {
							b.Fatal(err)
						}
						if err := h.Release(ctx); err != nil {
							b.Fatal(err)
						}
					}
					takeRelease(b, func() (held, error) { return take(ctx, names) })
				})
			}
		}
	}
}
