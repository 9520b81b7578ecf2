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

// Reports is a service that runs its job under a lock. Its constructor
// takes a dlock.Locker, which names no backend: production passes a Guard
// over pg, valkey or fs, and its tests pass one over dlocktest.Memory.
type Reports struct{ lock dlock.Locker }

func NewReports(lock dlock.Locker) *Reports { return &Reports{lock: lock} }

// Nightly builds the nightly report, unless another instance is at it.
func (r *Reports) Nightly(ctx context.Context) error {
	return r.lock.TryDo(ctx, "nightly-report", func(ctx context.Context) error {
		fmt.Println("building the report")
		return nil
	})
}

// Lead keeps leadership until it is lost or ctx ends; the lock it holds is
// a dlock.Handle, whatever the backend.
func (r *Reports) Lead(ctx context.Context) (dlock.Handle, error) {
	return r.lock.Hold(ctx, "reports-leader")
}

// A service takes a dlock.Locker; in its unit tests, a Mutex over the
// in-process Memory backend stands in for the real one (here with
// production's pg.New(pool) in mind).
func ExampleLocker() {
	svc := NewReports(dlock.NewMutex(dlocktest.NewMemory()))
	ctx := context.Background()
	fmt.Println("err:", svc.Nightly(ctx))

	h, err := svc.Lead(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("leading:", h.Name(), h.Err() == nil)
	_ = h.Release(ctx)
	fmt.Println("after release:", errors.Is(h.Err(), dlock.ErrNotHeld))
	// Output:
	// building the report
	// err: <nil>
	// leading: reports-leader true
	// after release: true
}

// DoAll takes several names at once, all or none, in one canonical order,
// so that callers whose sets overlap never deadlock.
func ExampleGuard_DoAll() {
	mu := dlock.NewMutex(dlocktest.NewMemory())
	ctx := context.Background()
	err := mu.DoAll(ctx, []string{"account:42", "account:7"}, func(ctx context.Context) error {
		fmt.Println("moving money between two accounts, both locked")
		return nil
	})
	fmt.Println("err:", err)
	// Output:
	// moving money between two accounts, both locked
	// err: <nil>
}
