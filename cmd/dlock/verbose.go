//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dlock-go/dlock"
)

// verboseObserver says on stderr, for -verbose, what the library's
// Observer events tell: a lock acquired (how long it took, how many
// attempts, how many server errors were ridden out), released (after how
// long), lost. It is the same source the library's slog logging and the
// OpenTelemetry adapter use. What dlock decides on an event (exit 76 on a
// loss, say) it reports itself, verbose or not.
type verboseObserver struct{ w io.Writer }

func (o verboseObserver) AcquireStart(ctx context.Context, e dlock.AcquireEvent) context.Context {
	return ctx
}

func (o verboseObserver) AcquireEnd(ctx context.Context, e dlock.AcquireEvent, err error) context.Context {
	if err != nil {
		return ctx // dlock's own message says why, verbose or not
	}
	var b strings.Builder
	fmt.Fprintf(&b, "dlock: acquired lock %q (%s) after %v, %s", e.Name, e.Kind, e.Wait.Round(time.Millisecond), plural(e.Attempts, "attempt"))
	if e.Retried > 0 {
		fmt.Fprintf(&b, ", %s ridden out", plural(e.Retried, "server error"))
	}
	fmt.Fprintln(o.w, b.String())
	return ctx
}

func (o verboseObserver) Released(ctx context.Context, e dlock.HoldEvent, err error) {
	if err == nil {
		fmt.Fprintf(o.w, "dlock: released lock %q after holding it %v\n", e.Name, e.Held.Round(time.Millisecond))
	}
}

func (o verboseObserver) Lost(ctx context.Context, e dlock.HoldEvent) {
	when := "while held"
	if e.AtRelease {
		when = "(found out at release)"
	}
	fmt.Fprintf(o.w, "dlock: lost lock %q %s after %v\n", e.Name, when, e.Held.Round(time.Millisecond))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
