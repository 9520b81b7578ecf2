// Package pace paces the attempts of a wait: the one jittered, capped
// exponential backoff (github.com/cenkalti/backoff) that the dlock engine
// and every backend's native wait use between two attempts.
package pace

import (
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Pacer gives the pause before each next attempt: it starts at min,
// doubles after each pause up to max, and is jittered by ±50% so that
// waiters do not move in step. The zero Pacer is not usable; make one with
// New. A Pacer is not safe for concurrent use: each wait has its own.
type Pacer struct {
	b *backoff.ExponentialBackOff
}

// New returns a Pacer from min to max. A min below a microsecond is raised
// to one, a max below min to min.
func New(min, max time.Duration) Pacer {
	min = max2(min, time.Microsecond)
	max = max2(max, min)
	return Pacer{b: backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(min),
		backoff.WithMaxInterval(max),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMultiplier(2),
		backoff.WithMaxElapsedTime(0),
	)}
}

// Next returns the pause before the next attempt, and lengthens the one
// after it.
func (p Pacer) Next() time.Duration { return p.b.NextBackOff() }

// Reset makes the next pause the shortest again: after a notification that
// the lock may be free, say, when a failed attempt should soon be retried.
func (p Pacer) Reset() { p.b.Reset() }

func max2(a, b time.Duration) time.Duration {
	if a < b {
		return b
	}
	return a
}
