package loss

import (
	"context"
	"testing"
	"time"
)

// Functions registered before the loss run once it fires; those stopped
// first never run; those registered after it run at once.
func TestNotifier(t *testing.T) {
	var n Notifier
	ran := make(chan string, 3)
	context.AfterFunc(n.Context(false), func() { ran <- "before" })
	stop := context.AfterFunc(n.Context(false), func() { ran <- "stopped" })
	if !stop() {
		t.Fatal("stop before the loss did not keep f from running")
	}
	n.Fire()
	context.AfterFunc(n.Context(true), func() { ran <- "after" })
	got := map[string]bool{}
	for range 2 {
		select {
		case s := <-ran:
			got[s] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("functions did not run: %v", got)
		}
	}
	if !got["before"] || !got["after"] || got["stopped"] {
		t.Fatalf("ran %v", got)
	}
	var fresh Notifier
	select {
	case <-fresh.Context(true).Done():
	default:
		t.Fatal("a Notifier first used after the loss is not done")
	}
	fresh.Fire() // harmless twice
}
