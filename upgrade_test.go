package dlock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

// Upgrade's misuse is a clear error: a lock of another kind, a released
// one, a backend without upgradeable read locks.
func TestUpgradeMisuse(t *testing.T) {
	ctx := context.Background()
	mem := dlocktest.NewMemory()
	rw := dlock.NewRWMutex(mem)
	r, err := rw.Read().TryAcquire(ctx, "cfg")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Upgrade(ctx); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Upgrade of a read lock: %v, want errors.ErrUnsupported", err)
	}
	_ = r.Release(ctx)
	u, err := rw.Upgradeable().TryAcquire(ctx, "cfg")
	if err != nil {
		t.Fatal(err)
	}
	_ = u.Release(ctx)
	if err := u.Upgrade(ctx); !errors.Is(err, dlock.ErrNotHeld) {
		t.Fatalf("Upgrade after Release: %v, want ErrNotHeld", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	u, _ = rw.Upgradeable().TryAcquire(ctx, "cfg")
	if err := u.Upgrade(cancelled); !errors.Is(err, dlock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Upgrade with a cancelled ctx: %v", err)
	}
	_ = u.Release(ctx)
	if _, err := dlock.NewRWMutex(pollingRWOnly{mem}).Upgradeable().TryAcquire(ctx, "cfg"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Upgradeable over a backend without it: %v, want errors.ErrUnsupported", err)
	}
}

// pollingRWOnly is an RW backend with no upgradeable read lock.
type pollingRWOnly struct{ m *dlocktest.Memory }

func (p pollingRWOnly) TryRLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryRLock(ctx, name)
}

func (p pollingRWOnly) TryWLock(ctx context.Context, name string) (*dlocktest.MemoryLease, bool, error) {
	return p.m.TryWLock(ctx, name)
}

// An upgradeable read lock reads, decides, and writes only when it must,
// without letting go in between: no other writer can slip in.
func ExampleRWMutex_Upgradeable() {
	ctx := context.Background()
	rw := dlock.NewRWMutex(dlocktest.NewMemory()) // pg.New, valkey.New or fs.New in production
	cache := map[string]string{}

	lk, err := rw.Upgradeable().Acquire(ctx, "cache:report")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer lk.Release(ctx)
	if _, fresh := cache["report"]; !fresh { // readers may read beside us until here
		if err := lk.Upgrade(ctx); err != nil { // waits for the readers to leave
			fmt.Println(err)
			return
		}
		cache["report"] = "rebuilt" // alone now
	}
	fmt.Println(cache["report"])
	// Output: rebuilt
}
