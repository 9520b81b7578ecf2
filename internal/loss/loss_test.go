package loss

import (
	"sync"
	"testing"
	"time"
)

// Functions registered before the loss run once it fires; those stopped
// first never run; those registered after it, or on a lease already done,
// run at once; stop after the start says false.
func TestNotifier(t *testing.T) {
	var mu sync.Mutex
	var n Notifier
	ran := make(chan string, 8)
	add := func(s string, done bool) func() bool {
		mu.Lock()
		defer mu.Unlock()
		return n.Add(func() { ran <- s }, done, &mu)
	}
	add("first", false)
	stopped := add("stopped", false)
	add("third", false)
	stoppedFirst := add("stopped too", false)
	if !stopped() || !stoppedFirst() {
		t.Fatal("stop before the loss did not keep f from running")
	}
	if stopped() {
		t.Fatal("a second stop said true")
	}
	mu.Lock()
	n.Fire()
	n.Fire() // harmless twice
	mu.Unlock()
	afterFire := add("after", false)
	add("done", true)
	got := map[string]bool{}
	for range 4 {
		select {
		case s := <-ran:
			got[s] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("functions did not run: %v", got)
		}
	}
	if !got["first"] || !got["third"] || !got["after"] || !got["done"] || got["stopped"] || got["stopped too"] {
		t.Fatalf("ran %v", got)
	}
	if afterFire() {
		t.Fatal("stop of a started function said true")
	}
}

// Stops and a Fire racing each other: every function runs exactly when
// its stop says false.
func TestNotifierRace(t *testing.T) {
	for range 100 {
		var mu sync.Mutex
		var n Notifier
		var runs [8]chan struct{}
		stops := make([]func() bool, len(runs))
		for i := range runs {
			runs[i] = make(chan struct{})
			mu.Lock()
			stops[i] = n.Add(func() { close(runs[i]) }, false, &mu)
			mu.Unlock()
		}
		var wg sync.WaitGroup
		results := make([]bool, len(runs))
		for i := range stops {
			wg.Go(func() { results[i] = stops[i]() })
		}
		mu.Lock()
		n.Fire()
		mu.Unlock()
		wg.Wait()
		for i, kept := range results {
			if kept {
				select {
				case <-runs[i]:
					t.Fatalf("function %d ran after its stop said it would not", i)
				default:
				}
				continue
			}
			select {
			case <-runs[i]:
			case <-time.After(5 * time.Second):
				t.Fatalf("function %d: stop said it had started, but it never ran", i)
			}
		}
	}
}
