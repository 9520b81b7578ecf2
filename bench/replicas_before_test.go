//go:build dlock_before

package bench

import (
	"testing"
	"time"

	"github.com/dlock-go/dlock/valkey"
)

// withReplicas skips: the library at DLOCK_BENCH_BEFORE may predate
// valkey.WithReplicas (bench/run measures only dlock's own rows there).
func withReplicas(tb testing.TB, _ int, _ time.Duration) valkey.Option {
	tb.Skip("valkey.WithReplicas is not in the library before")
	return nil
}
