package pg_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock/dlocktest"
	"github.com/dlock-go/dlock/pg"
)

func harness(url string, opts ...pg.Option) dlocktest.Harness[*pg.Lease] {
	return dlocktest.Harness[*pg.Lease]{
		// A pool of two connections: a try never waits for a connection
		// and a wait never waits for one its own backend holds, however
		// many acquisitions run at once on one node (issue 10).
		New: func(t testing.TB, _ string) any {
			pool := newPool(t, url, 2)
			// Both connections made now: a waiter reaches the server's
			// queue in the order the ordering subtests start waiters
			// (100ms apart), not after a connection setup of its own,
			// which can take longer on a loaded machine under -race.
			warm(t, pool, 2)
			return newOn(t, pool, opts...)
		},
		Lose: func(t testing.TB, l *pg.Lease) {
			terminate(t, url, l.PID())
		},
		LossWithin: 3 * time.Second,
	}
}

// testHolders is the holder table of the fencing run: there the suite's
// Holders subtests check every field, owner text and Since included. The
// plain run has no holder table: its pools name their sessions with
// pg.ApplicationName(), which gives host, pid and process start from
// pg_locks (Harness.HoldersWithoutOwner).
const testHolders = "dlock_test_holders"

func TestConformance(t *testing.T) {
	sep := "?"
	if strings.Contains(testURL(t), "?") {
		sep = "&"
	}
	h := harness(testURL(t) + sep + "application_name=" + url.PathEscape(pg.ApplicationName()))
	h.HoldersWithoutOwner = true
	dlocktest.Run(t, h)
}

func TestConformanceFencing(t *testing.T) {
	h := harness(testURL(t), pg.WithFencing("dlock_test_fencing"), pg.WithHolderTable(testHolders))
	h.Fencing = true
	dlocktest.Run(t, h)
}
