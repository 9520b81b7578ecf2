package dlock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/dlocktest"
)

// Do runs a function under a lock. The in-process Memory backend stands in
// here for fs.New(dir), pg.New(pool) or valkey.New(client).
func Example() {
	mu := dlock.NewMutex(dlocktest.NewMemory())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // the wait's timeout
	defer cancel()
	err := mu.Do(ctx, "nightly-report", func(ctx context.Context) error {
		fmt.Println("building the report, alone")
		return nil
	})
	fmt.Println("err:", err)
	// Output:
	// building the report, alone
	// err: <nil>
}

// TryDo gives up at once when the lock is held elsewhere.
func ExampleGuard_TryDo() {
	mem := dlocktest.NewMemory()
	mu := dlock.NewMutex(mem)
	ctx := context.Background()
	_ = mu.Do(ctx, "migration", func(ctx context.Context) error {
		err := mu.TryDo(ctx, "migration", func(context.Context) error { return nil })
		fmt.Println("second try:", errors.Is(err, dlock.ErrNotAcquired))
		return nil
	})
	// Output:
	// second try: true
}

// Acquire returns a held lock, for code that holds it across calls, such as
// a leader that works until it loses the lock.
func ExampleGuard_Acquire() {
	mu := dlock.NewMutex(dlocktest.NewMemory())
	ctx := context.Background()
	lk, err := mu.Acquire(ctx, "leader")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer lk.Release(ctx)
	token, _ := lk.Token()
	fmt.Println("leading with fencing token", token)
	select {
	case <-lk.Lost():
		fmt.Println("lost the lock: stop leading")
	default:
		fmt.Println("still the leader")
	}
	// Output:
	// leading with fencing token 1
	// still the leader
}

// Readers share a name; a writer has it alone.
func ExampleNewRWMutex() {
	rw := dlock.NewRWMutex(dlocktest.NewMemory())
	ctx := context.Background()
	r1, _ := rw.Read().Acquire(ctx, "config")
	r2, _ := rw.Read().Acquire(ctx, "config")
	_, err := rw.Write().TryAcquire(ctx, "config")
	fmt.Println("writer while reading:", errors.Is(err, dlock.ErrNotAcquired))
	r1.Release(ctx)
	r2.Release(ctx)
	err = rw.Write().Do(ctx, "config", func(context.Context) error { return nil })
	fmt.Println("writer alone:", err)
	// Output:
	// writer while reading: true
	// writer alone: <nil>
}

// A semaphore lets a limited number of holders in at once.
func ExampleNewSemaphore() {
	sem := dlock.NewSemaphore(dlocktest.NewMemory(), 2)
	ctx := context.Background()
	a, _ := sem.Acquire(ctx, "encoder")
	b, _ := sem.Acquire(ctx, "encoder")
	_, err := sem.TryAcquire(ctx, "encoder")
	fmt.Println("third holder:", errors.Is(err, dlock.ErrNotAcquired))
	a.Release(ctx)
	b.Release(ctx)
	// Output:
	// third holder: true
}
