//go:build !dlock_before

package bench

import (
	"testing"
	"time"

	"github.com/dlock-go/dlock/valkey"
)

// withReplicas is valkey.WithReplicas; the library before it (bench/run's
// DLOCK_BENCH_BEFORE, built with the dlock_before tag) has none.
func withReplicas(_ testing.TB, n int, timeout time.Duration) valkey.Option {
	return valkey.WithReplicas(n, timeout)
}
