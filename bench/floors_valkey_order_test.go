package bench

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestValkeyFairFloorOrder checks floor-defaults-fair's promises across
// lockers: waiters take a released lock in arrival order, and a waiter
// that stops leaves the queue (the next one is not blocked by it).
func TestValkeyFairFloorOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lk [4]locker
	for i := range lk {
		lk[i] = openValkeyFairFloor(t, "")
	}
	name := "order-" + runID
	h, err := lk[0].lock(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	// Waiter 1 stops before the release; 2 and 3 arrive in that order.
	ctx1, stop1 := context.WithCancel(ctx)
	got := make(chan int, 3)
	var wg sync.WaitGroup
	defer wg.Wait()
	start := func(i int, c context.Context) {
		wg.Go(func() {
			w, err := lk[i].lock(c, name)
			if err != nil {
				got <- -i
				return
			}
			got <- i
			time.Sleep(20 * time.Millisecond)
			if err := w.Release(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	start(1, ctx1)
	time.Sleep(50 * time.Millisecond)
	start(2, ctx)
	time.Sleep(50 * time.Millisecond)
	start(3, ctx)
	time.Sleep(50 * time.Millisecond)
	stop1()
	if g := <-got; g != -1 {
		t.Fatalf("waiter 1 (cancelled) reported %d, want -1", g)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{2, 3} {
		if g := <-got; g != want {
			t.Fatalf("got waiter %d, want %d (arrival order)", g, want)
		}
	}
}
