package dlocktest

import (
	"os"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// Harness plugs a backend into the conformance suite. Only New is required.
type Harness[L backend.Lease] struct {
	// New returns a fresh, independent client of the backend under test (a
	// "node"): its own connections or handles, as another process would
	// have. The value must implement at least one of backend.Locker[L],
	// backend.RWLocker[L] and backend.Semaphore[L]; the suite runs the
	// subtests of each one it implements, and uses the optional waits and
	// fencing it finds.
	//
	// space is a directory made for this run of the suite and shared with
	// the suite's helper processes. A file-system backend keeps its locks
	// there; a networked backend may ignore it or derive a key prefix from
	// filepath.Base(space) so that runs do not meet. New registers the
	// node's cleanup with t.Cleanup.
	New func(t testing.TB, space string) any

	// Lose, if set, makes the holder of lease lose its lock from outside the
	// way the backend's world can: kill its connection, delete its key,
	// remove its lock file. The suite then expects lease.Lost() to close
	// within LossWithin, and Do's ctx to be cancelled with cause
	// dlock.ErrLockLost.
	Lose func(t testing.TB, lease L)

	// LossWithin bounds how long after Lose the lease reports its loss.
	// Zero means 5 seconds.
	LossWithin time.Duration

	// FreedWithin bounds how long after a holder process is killed its locks
	// are free again: about zero for file and connection-bound locks, the
	// lease time for leases. The suite adds a second of slack.
	FreedWithin time.Duration

	// Fencing requires every lease to carry a fencing token
	// (backend.Fencer with a non-zero Token).
	Fencing bool

	// InProcess marks a backend whose locks live inside one process (such
	// as Memory); the subtests across processes are skipped.
	InProcess bool

	// Unordered marks a backend whose waits do not promise first come,
	// first served across clients and processes (such as RedLock, whose
	// nodes may see waiters in different orders): the suite then skips the
	// arrival-order subtests (FIFO, RWMutex/Order) and checks only that no
	// client starves (NoStarvation). By default the suite checks both.
	Unordered bool

	// HoldersWithoutOwner marks a backend whose holder records (see
	// backend.LockDescriber) carry no owner text and no Since, in the
	// configuration under test (PostgreSQL without a holder table): the
	// Holders subtests then check host, process id and Shared only.
	HoldersWithoutOwner bool
}

// RequireEnv returns the value of the environment variable key, which names
// a server a backend test needs. When it is unset the test is skipped, or,
// when DLOCK_REQUIRE_SERVERS=1 (as in CI), it fails: a green run then always
// means every backend was exercised.
func RequireEnv(t testing.TB, key string) string {
	t.Helper()
	v := os.Getenv(key)
	if v != "" {
		return v
	}
	if os.Getenv("DLOCK_REQUIRE_SERVERS") == "1" {
		t.Fatalf("%s is not set and DLOCK_REQUIRE_SERVERS=1: this backend's server must be available", key)
	}
	t.Skipf("%s is not set: skipping (set it, or run the repository's test script)", key)
	return ""
}
